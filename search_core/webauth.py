"""The auth wall of the web server: every route needs a login when auth is on, except the health
checks and what the login page itself loads; failed logins are slowed down and then refused.

Why a wall in front of Gradio instead of Gradio's own checks: Gradio guards the routes it thinks
of (``/config``, ``/gradio_api/info``) but answered ``/openapi.json``, ``/gradio_api/user`` and
others without a session, and a route added later (the REST API under ``/api``) would have to
remember to check. Here the default is "refused"; only :data:`PUBLIC` passes without a session.

Reuse from plain FastAPI routes: the wall wraps the whole ASGI app, so a route mounted on the
same app is covered without doing anything. It stores the user in ``request.state.user``;
:func:`require_user` is a FastAPI dependency returning it (401 when auth is on and nobody logged
in). API clients without a browser session may send HTTP Basic credentials, which go through the
same :class:`~search_core.ratelimit.LoginLimiter` as the login form.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import HTTPException, Request

from search_core.ratelimit import LoginLimiter
from search_core.uploads import ASGIApp, Receive, Scope, Send, json_reply

log = logging.getLogger(__name__)

#: Paths answered without a session: health checks, the login form and what it loads. Gradio
#: still checks its own session on ``/config`` and friends; the login page needs their 401.
PUBLIC_EXACT = frozenset({
    "/ping", "/healthz", "/", "/login", "/login/", "/config", "/gradio_api/config",
    "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/manifest.json", "/robots.txt",
    "/login_check", "/login_check/", "/gradio_api/login_check", "/gradio_api/login_check/",
    "/logout", "/gradio_api/logout",
})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/static/",
                   "/gradio_api/assets/")

_client: contextvars.ContextVar[str] = contextvars.ContextVar("client", default="?")


def _safe_name(user: str) -> str:
    """A user name fit for a log line (attacker-controlled: bounded and escaped)."""
    return repr(user[:64])


class LoginGuard:
    """Checks ``user:password`` pairs with the limiter in front (constant-time compare).

    :meth:`login` is an async ``(username, password) -> bool``: Gradio's ``auth=`` accepts it,
    so its login form goes through the same ledger. (Pass the bound method, not the instance:
    Gradio awaits only what ``inspect.iscoroutinefunction`` recognises.) A locked client or
    user gets HTTP 429 with ``Retry-After``; the password is never logged.
    """

    def __init__(self, credentials: list[tuple[str, str]], limiter: LoginLimiter) -> None:
        self.credentials: Mapping[str, str] = dict(credentials)
        self.limiter = limiter

    async def login(self, username: str, password: str) -> bool:
        import asyncio

        client = _client.get()
        keys = (f"client:{client}", f"user:{username[:128]}")
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            log.warning("login refused (locked for %.0f s): user %s from %s", wait,
                        _safe_name(username), client)
            raise HTTPException(429, detail=f"Too many failed logins: try again in {wait:.0f} s.",
                                headers={"Retry-After": str(max(1, round(wait)))})
        pause = self.limiter.delay(*keys)
        if pause:
            await asyncio.sleep(pause)
        if self.check(username, password):
            self.limiter.success(*keys)
            log.info("login: user %s from %s", _safe_name(username), client)
            return True
        locked = self.limiter.failure(*keys)
        log.warning("login failed: user %s from %s%s", _safe_name(username), client,
                    f"; locked for {locked:.0f} s" if locked else "")
        return False

    def check(self, username: str, password: str) -> bool:
        expected = self.credentials.get(username)
        # compare even for unknown users so that timing does not tell which names exist
        ok = hmac.compare_digest(password.encode(), (expected or "\x00" + password).encode())
        return ok and expected is not None


class AuthWall:
    """ASGI middleware. ``session_user(scope)`` names the user of a browser session (Gradio's
    cookie) or None; ``guard`` is None when auth is off (everything passes, the user is None)."""

    def __init__(self, app: ASGIApp, *, guard: LoginGuard | None,
                 session_user: Callable[[Scope], str | None]) -> None:
        self.app = app
        self.guard = guard
        self.session_user = session_user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        token = _client.set(client)
        try:
            user = await self._user(scope)
            scope.setdefault("state", {})["user"] = user
            if self.guard is not None and user is None and not is_public(scope):
                log.info("unauthenticated %s %s from %s", scope.get("method", "WS"),
                         scope.get("path"), client)
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await json_reply(send, 401, "Not authenticated: log in first.",
                             {"WWW-Authenticate": 'Basic realm="visual-search"'}
                             if scope.get("path", "").startswith("/api/") else None)
                return
            await self.app(scope, receive, send)
        finally:
            _client.reset(token)

    async def _user(self, scope: Scope) -> str | None:
        if self.guard is None:
            return None
        user = self.session_user(scope)
        if user is not None:
            return user
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        if header[:6].lower() == b"basic ":
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            try:
                if await self.guard.login(name, password):
                    return name
            except HTTPException:
                return None
        return None


def is_public(scope: Scope) -> bool:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)


def gradio_session_user(gradio_app: Any) -> Callable[[Scope], str | None]:
    """Reads Gradio's session cookie and token table (``App.tokens``, ``App.cookie_id``)."""

    def user(scope: Scope) -> str | None:
        cookies: dict[str, str] = {}
        for key, value in scope.get("headers") or []:
            if key == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    name, _, val = part.strip().partition("=")
                    cookies[name] = val
        cookie_id = getattr(gradio_app, "cookie_id", "")
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(
            f"access-token-unsecure-{cookie_id}")
        return getattr(gradio_app, "tokens", {}).get(token) if token else None

    return user


def current_user(request: Request) -> str | None:
    """FastAPI dependency: the logged-in user (None when auth is off)."""
    return getattr(request.state, "user", None)


def require_user(request: Request) -> str | None:
    """FastAPI dependency for routes that must never answer anonymously. The wall already
    refuses them; this is for routes mounted on an app without the wall (tests, embedding)."""
    user = current_user(request)
    if user is None and getattr(request.app.state, "auth_on", False):
        raise HTTPException(401, detail="Not authenticated")
    return user
