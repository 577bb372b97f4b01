"""The one place that builds boto3 clients and turns AWS failures into user-facing errors.

Why one place: every AWS backend must share the same retry policy (adaptive mode, so throttling
slows us down instead of failing a 10,000-image ingest), timeouts, connection-pool size (large
enough for the Titan thread pool, otherwise urllib3 discards connections and logs warnings) and
the standard credential chain (environment, profile, SSO, ECS/EC2 role -- never static keys in
code, which is how the original sample ended up with expired tokens).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from search_core.config import Settings
from search_core.errors import BackendError

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceQuotaExceededException",
    }
)
EXPIRED_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
)
BAD_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
    }
)
ACCESS_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied", "Forbidden"})

_session_lock = threading.Lock()


def max_attempts(settings: Settings) -> int:
    """``AWS_MAX_ATTEMPTS`` is the standard variable; an explicit Config would otherwise hide it,
    so it is a setting and passed on. Its default of 8 rides out a burst of Bedrock throttling
    without hiding a real outage for minutes."""
    return settings.aws_max_attempts


#: Services whose bulk traffic is already paced by our own bounded concurrency. For them the
#: default is ``standard`` retries: adaptive mode's client-side limiter cuts the send rate by
#: 30 % at every throttle, and with Bedrock's capacity throttling (which arrives at any rate)
#: the rate never recovers -- measured with bench/titan_ingest.py at 10 % throttling: adaptive
#: 1.3x the sequential loop, standard 10.2x, both with nothing lost or doubled.
PACED_SERVICES = frozenset({"bedrock-runtime"})


def retry_mode(settings: Settings, service: str = "") -> str:
    """``AWS_RETRY_MODE`` when set; otherwise ``standard`` for :data:`PACED_SERVICES` and
    ``adaptive`` (client-side rate limiting after throttling) for everything else."""
    if settings.aws_retry_mode:
        return settings.aws_retry_mode
    return "standard" if service in PACED_SERVICES else "adaptive"


def boto_config(settings: Settings, *, pool: int | None = None, service: str = "") -> Config:
    """Retries, timeouts and pool size shared by every client."""
    return Config(
        region_name=settings.aws_region,
        retries={
            "mode": retry_mode(settings, service),
            "total_max_attempts": max_attempts(settings),
        },
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=max(10, pool or settings.titan_max_concurrency + 2),
        user_agent_extra="visual-search",
    )


@functools.lru_cache(maxsize=8)
def _session_for(region: str) -> boto3.Session:
    return boto3.Session(region_name=region)


def session(settings: Settings) -> boto3.Session:
    """A boto3 session on the standard credential chain. Cached so that refreshable credentials
    (SSO, assumed roles, container roles) are fetched once and refreshed by botocore."""
    with _session_lock:
        return _session_for(settings.aws_region)


def client(service: str, settings: Settings, *, pool: int | None = None) -> Any:
    """A boto3 client for ``service``. ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` are
    honoured by botocore itself, which is how local stand-ins (moto server, benches) plug in."""
    with _session_lock:
        sess = _session_for(settings.aws_region)
        config = boto_config(settings, pool=pool, service=service)
        if service == "s3":  # presigned URLs with SigV4 (SigV2 is refused in newer regions)
            config = config.merge(Config(signature_version="s3v4"))
        # Session.client is not thread-safe; building under the lock keeps lazy init safe.
        return sess.client(service, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def translate_error(
    exc: BaseException, *, service: str, action: str, settings: Settings, resource: str = ""
) -> BackendError:
    """Maps a botocore failure to a :class:`BackendError` whose message says what to do.

    ``service`` is a human name ("Bedrock", "Rekognition", "S3"), ``action`` what we were doing,
    ``resource`` what it concerned (model id, bucket, ...).
    """
    region = settings.aws_region
    what = f"{service} {action}" + (f" ({resource})" if resource else "")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        if code in ACCESS_DENIED_CODES:
            if service == "Bedrock":
                return BackendError(
                    f"model access not enabled for {resource or settings.titan_model_id} in "
                    f"{region}: enable it in the Bedrock console (Model access), and allow "
                    f"bedrock:InvokeModel on it for this identity. AWS said: {message}"
                )
            return BackendError(
                f"{what} was denied in {region}: the current identity lacks permission "
                f"(see deploy/iam-policy.json). AWS said: {message}"
            )
        if code in EXPIRED_CODES:
            return BackendError(
                f"{what} failed: the AWS credentials have expired. Refresh them (aws sso login, "
                f"new session token) or run with a role; static keys are not refreshed."
            )
        if code in BAD_CREDENTIAL_CODES:
            return BackendError(
                f"{what} failed: AWS rejected the credentials ({code}). Check AWS_PROFILE / "
                f"AWS_ACCESS_KEY_ID and that the clock is correct."
            )
        if code in THROTTLING_CODES:
            return BackendError(
                f"{what} is throttled in {region} even after {max_attempts(settings)} attempts "
                "with adaptive backoff: lower TITAN_MAX_CONCURRENCY or ask for a higher quota."
            )
        if code == "ValidationException":
            return BackendError(f"{what} rejected the request as invalid: {message}")
        if code in {"ResourceNotFoundException", "NoSuchBucket", "NoSuchKey", "NotFound"}:
            return BackendError(f"{what}: not found in {region}: {message or code}")
        if code in {"InvalidImageFormatException", "ImageTooLargeException"}:
            return BackendError(f"{what}: the image was refused ({code}): {message}")
        if code in {"ModelNotReadyException", "ServiceUnavailableException", "InternalServerError",
                    "InternalServerException", "ModelTimeoutException"}:
            return BackendError(f"{what}: the service is unavailable right now ({code}); retry.")
        return BackendError(f"{what} failed ({code or 'error'}): {message or exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return BackendError(
            f"{what}: no AWS credentials found. Set AWS_PROFILE, AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY, or run with an instance/task role."
        )
    if isinstance(exc, NoRegionError):
        return BackendError(f"{what}: no AWS region configured; set AWS_REGION.")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return BackendError(
            f"{what}: cannot reach the {service} endpoint in {region} ({exc}). Check the network, "
            f"the region (is {service} offered there?) and any proxy settings."
        )
    if isinstance(exc, ReadTimeoutError):
        return BackendError(
            f"{what}: no answer within {READ_TIMEOUT_S:.0f} s from {service} in {region}; retry."
        )
    if isinstance(exc, BotoCoreError):
        return BackendError(f"{what} failed: {exc}")
    return BackendError(f"{what} failed: {exc}")


@contextmanager
def aws_errors(
    *, service: str, action: str, settings: Settings, resource: str = ""
) -> Iterator[None]:
    """``with aws_errors(...): client.call()`` -- re-raises botocore failures as BackendError."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate_error(
            exc, service=service, action=action, settings=settings, resource=resource
        ) from exc
