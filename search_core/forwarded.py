"""The client's address behind a load balancer, read so that the client cannot choose it.

Why not uvicorn's ``proxy_headers``: with ``FORWARDED_ALLOW_IPS=*`` (the container's setting:
only the load balancer reaches the task) uvicorn takes the LEFTMOST ``X-Forwarded-For`` entry,
which is whatever the client wrote there itself; the load balancer appends the address it saw
to the right. Rotating that header gave every failed login a fresh "client" and escaped the
per-client lock-out of :mod:`search_core.ratelimit` (the per-user one still held). Here a
trusted peer's header is read from the right: the last entry that is not itself a trusted
proxy, and with ``*`` the last entry (the one the load balancer added).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from search_core.uploads import ASGIApp, Receive, Scope, Send

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """``FORWARDED_ALLOW_IPS``: ``*``, or comma-separated addresses and CIDR blocks."""

    def __init__(self, spec: str | Iterable[str]) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        items = [item.strip() for item in items if item.strip()]
        self.everyone = "*" in items
        self.networks: list[_Network] = []
        self.literals: set[str] = set()  # e.g. "unix:" peers, names
        for item in items:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.literals.add(item)

    def __contains__(self, host: str) -> bool:
        if self.everyone or host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def client_from(peer: str, forwarded_for: str, trusted: TrustedProxies) -> str:
    """The client address for a request from ``peer`` carrying ``forwarded_for``."""
    if peer not in trusted or not forwarded_for.strip():
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if not hops:
        return peer
    if trusted.everyone:
        return _host(hops[-1])
    for hop in reversed(hops):
        if _host(hop) not in trusted:
            return _host(hop)
    return _host(hops[0])


def _host(hop: str) -> str:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80`` or ``::1`` -> the address."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


class ForwardedClient:
    """ASGI middleware replacing uvicorn's ``proxy_headers``: sets ``scope["client"]`` (see
    :func:`client_from`) and the scheme from ``X-Forwarded-Proto`` of a trusted peer."""

    def __init__(self, app: ASGIApp, trusted: str | Iterable[str]) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = (scope.get("client") or ("", 0))[0] or ""
            if peer in self.trusted:
                forwarded: list[str] = []
                proto = None
                for name, value in scope.get("headers") or []:
                    if name == b"x-forwarded-for":
                        forwarded.append(value.decode("latin-1"))
                    elif name == b"x-forwarded-proto":
                        proto = value.decode("latin-1").strip().lower()
                if proto in ("http", "https", "ws", "wss"):
                    if scope["type"] == "websocket":
                        proto = proto.replace("http", "ws")
                    scope["scheme"] = proto
                if forwarded:
                    scope["client"] = (client_from(peer, ", ".join(forwarded), self.trusted), 0)
        await self.app(scope, receive, send)
