"""Building the opensearch-py client for an endpoint: which auth, which region, which retries.

Why a module of its own: auth is where deployments differ (SigV4 for Serverless ``aoss`` and
managed ``es`` domains, basic auth or none self-hosted) and it is tested on its own; the index
class only asks for a client. With ``RequestsAWSV4SignerAuth`` the connection class must be
``RequestsHttpConnection``; the signer asks the boto3 session's *refreshable* credentials for
frozen ones on every request, so role/SSO credentials renew themselves.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection

from search_core.aws.clients import session as aws_session
from search_core.config import Settings
from search_core.errors import BackendError, ConfigError

AUTH_MODES = ("auto", "sigv4-aoss", "sigv4-es", "basic", "none")
_REGION_RE = re.compile(r"\.([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d)\.(aoss|es)\.amazonaws\.com$")


def resolve_auth(settings: Settings) -> str:
    """The effective auth mode; ``auto`` decides from the endpoint's host name."""
    mode = settings.opensearch_auth
    if mode not in AUTH_MODES:
        raise ConfigError(f"OPENSEARCH_AUTH={mode!r} is not one of {', '.join(AUTH_MODES)}")
    if mode != "auto":
        return mode
    host = (urlparse(settings.opensearch_endpoint).hostname or "").lower()
    if host.endswith(".aoss.amazonaws.com"):
        return "sigv4-aoss"
    if host.endswith(".es.amazonaws.com") or host.endswith(".on.aws"):
        return "sigv4-es"
    return "basic" if settings.opensearch_username else "none"


def region_of(endpoint: str, default: str) -> str:
    """The region in an AWS OpenSearch host name (it must match the signature), else default."""
    match = _REGION_RE.search((urlparse(endpoint).hostname or "").lower())
    return match.group(1) if match else default


def build_client(
    settings: Settings, *, pool: int | None = None, resend: bool = True
) -> OpenSearch:
    """An opensearch-py client for ``settings.opensearch_endpoint`` with the right auth.

    ``resend=False``: the transport never sends a request twice (no retry after a timeout, a
    dropped connection or a 502/503/504), for writes that are not idempotent."""
    endpoint = settings.opensearch_endpoint.strip()
    if not endpoint:
        raise ConfigError("OPENSEARCH_ENDPOINT is not set")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    parsed = urlparse(endpoint)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ConfigError(f"OPENSEARCH_ENDPOINT is not an http(s) URL: {endpoint!r}")
    mode = resolve_auth(settings)
    auth: Any = None
    if mode.startswith("sigv4"):
        credentials = aws_session(settings).get_credentials()
        if credentials is None:
            raise BackendError(
                "OpenSearch with SigV4 needs AWS credentials: set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with a role"
            )
        service = "aoss" if mode == "sigv4-aoss" else "es"
        auth = RequestsAWSV4SignerAuth(
            credentials, region_of(endpoint, settings.aws_region), service
        )
    elif mode == "basic":
        if not settings.opensearch_username:
            raise ConfigError("OPENSEARCH_AUTH=basic needs OPENSEARCH_USERNAME and _PASSWORD")
        auth = (settings.opensearch_username, settings.opensearch_password)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return OpenSearch(
        hosts=[{"host": parsed.hostname, "port": port, "url_prefix": parsed.path.rstrip("/")}],
        http_auth=auth,
        use_ssl=parsed.scheme == "https",
        verify_certs=parsed.scheme == "https",
        ssl_show_warn=False,
        connection_class=RequestsHttpConnection,
        pool_maxsize=max(10, pool or settings.titan_max_concurrency + 2),
        timeout=30,
        max_retries=3 if resend else 0,
        retry_on_timeout=resend,
        retry_on_status=(502, 503, 504) if resend else (),
    )
