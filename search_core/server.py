"""HTTP serving: FastAPI around the Gradio UI, health endpoints, auth, share link, shutdown.

Why a FastAPI parent app instead of ``demo.launch()``: load balancers and container platforms
need plain endpoints that answer without a browser session. ``/ping`` (liveness) answers as soon
as the process listens, before any model is loaded, so a slow warm-up never gets the task killed;
``/healthz`` (readiness) answers 200 only once the pipeline says it can serve a search, so the
load balancer sends no user to a replica that is still loading.

``app.py`` calls :func:`main` with its ``build_demo`` function; tests and other ASGI servers can
use :func:`create_app` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

# Gradio reads this at import time; set it before anything imports gradio so that no usage
# statistics are sent from a server that may sit in a private network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Mount

from search_core import budget
from search_core.config import REPO_ROOT, Settings
from search_core.errors import ConfigError, SearchError
from search_core.forwarded import ForwardedClient
from search_core.ratelimit import LoginLimiter
from search_core.tempstore import TempSweeper
from search_core.uploads import UploadPathGuard, upload_folder
from search_core.webauth import AuthWall, LoginGuard, gradio_session_user

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

BuildDemo = Callable[[], "gr.Blocks"]
Auth = list[tuple[str, str]]

#: Seconds uvicorn waits for open requests (and Gradio's event streams) after SIGTERM before it
#: cancels them. ECS sends SIGKILL ``stopTimeout`` seconds after SIGTERM (30 s by default, 60 s
#: in deploy/ecs-fargate.yaml), so this plus JOB_STOP_TIMEOUT must stay well below that.
GRACEFUL_TIMEOUT_S = 5
#: Seconds a running indexing job gets to reach a clean point (end of the current batch).
JOB_STOP_TIMEOUT_S = 20.0
#: Upper bound on waiting users; beyond it Gradio answers "queue full" at once, which beats a
#: request that silently waits longer than the load balancer's idle timeout.
QUEUE_MAX_SIZE = 64

SHARE_NEEDS_AUTH = (
    "Refusing to create a public share link without authentication: anyone with the link "
    "could use this app. Set SEARCH_AUTH=user:password or SEARCH_AUTH_FILE=/path/to/file "
    "(lines of user:password). Share links need internet access and expire after 72 hours."
)


# --------------------------------------------------------------------------- configuration


def _parse_credential(line: str, origin: str) -> tuple[str, str]:
    user, sep, password = line.partition(":")  # passwords may contain ':'
    if not sep or not user.strip() or not password:
        raise ConfigError(f"{origin} must look like user:password")
    return user.strip(), password


def load_auth(env: Mapping[str, str] | None = None) -> Auth | None:
    """Credentials from ``SEARCH_AUTH`` ("user:password") and/or ``SEARCH_AUTH_FILE`` (one
    "user:password" per line, ``#`` comments allowed); ``None`` when neither is set.

    A file keeps the password out of the process environment, which ``docker inspect`` and the
    ECS console show; in ECS it is better still to inject SEARCH_AUTH from Secrets Manager.
    """
    creds: Auth = []
    inline = Settings.read("auth", env)
    if inline:
        creds.append(_parse_credential(inline, "SEARCH_AUTH"))
    path = Settings.read("auth_file", env)
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"SEARCH_AUTH_FILE {path} cannot be read: {exc.strerror}") from exc
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and not line.startswith("#"):
                creds.append(_parse_credential(line, f"SEARCH_AUTH_FILE line {number}"))
        if not creds:
            raise ConfigError(f"SEARCH_AUTH_FILE {path} holds no user:password line")
    return creds or None


def default_concurrency() -> int:
    """Concurrent runs per Gradio event. ONNX Runtime already spreads one inference over every
    core, so running more searches at once than there are cores only adds latency and memory;
    one per core (at least 1, at most 4) keeps a 1-vCPU Fargate task responsive while a second
    user waits in the queue instead of thrashing. ``GRADIO_DEFAULT_CONCURRENCY_LIMIT`` wins."""
    limit: int = Settings.read("concurrency_limit")
    if limit:
        return max(1, limit)
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------- pipeline access


def _pipeline() -> Any:
    """The one cached pipeline (imported lazily: the factory pulls in model code)."""
    from search_core.factory import get_pipeline

    return get_pipeline()


def _describe(exc: Exception) -> str:
    """A SearchError's message is written for people; anything else is a bug: show its type."""
    return str(exc) if isinstance(exc, SearchError) else repr(exc)


class _WarmUp:
    """Loads the models in a background thread so the port opens (and /ping answers) at once."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="warm-up", daemon=True)
            self._thread.start()

    def join(self, timeout: float) -> None:
        """Waits for a load still in progress: interpreter shutdown while ONNX Runtime is
        building a session in a daemon thread aborts the process (SIGABRT instead of exit 0)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            _pipeline().warm_up()
            log.info("models loaded; ready")
        except Exception as exc:  # reported through /healthz, never fatal
            self.error = _describe(exc)
            log.exception("warm-up failed")


def stop_jobs(timeout: float = JOB_STOP_TIMEOUT_S) -> None:
    """Asks background indexing jobs to stop at a clean point and waits for them."""
    try:
        _pipeline().jobs.shutdown(timeout=timeout)
    except Exception:  # shutting down must not fail on a broken pipeline
        log.exception("stopping background jobs failed")


# --------------------------------------------------------------------------- the ASGI app


def create_app(
    build_demo: BuildDemo,
    *,
    settings: Settings | None = None,
    auth: Auth | None = None,
    root_path: str | None = None,
    warm_up: bool = True,
    share: bool = False,
) -> FastAPI:
    """FastAPI app with ``/ping``, ``/healthz`` and the Gradio UI mounted at ``/``, behind the
    auth wall and the upload guard (:func:`secure`).

    ``auth`` defaults to :func:`load_auth` and ``root_path`` to ``SEARCH_ROOT_PATH``.
    ``share``: the app is served through a public share link (:func:`open_share_link`); Gradio
    then tells search engines not to index it and loads its front-end from its CDN.
    Health endpoints stay outside the auth wall on purpose: load balancers cannot log in.
    """
    import gradio as gr

    settings = settings or Settings.from_env()
    auth = load_auth() if auth is None else auth
    if root_path is None:
        root_path = settings.root_path
    warm = _WarmUp()

    @contextlib.asynccontextmanager
    async def lifespan(parent: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            warm.start()
        sweeper = getattr(parent.state, "temp_sweeper", None)
        if sweeper is not None:
            sweeper.start()
        yield
        if sweeper is not None:
            sweeper.stop()
        # Runs after uvicorn stopped accepting and drained requests (SIGTERM or Ctrl+C).
        stop_jobs()
        warm.join(JOB_STOP_TIMEOUT_S)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping", include_in_schema=False)
    def ping() -> dict[str, str]:
        """Liveness: the process serves HTTP. Loads nothing."""
        return {"status": "ok"}

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """Readiness: model loaded, index reachable, backend named (sync: runs in a worker
        thread, so a slow OpenSearch probe never blocks the event loop)."""
        try:
            body: dict[str, Any] = dict(_pipeline().health())
        except Exception as exc:  # a broken pipeline is "not ready", not a 500
            body = {"ready": False, "error": _describe(exc)}
        if warm.error:
            body["ready"] = False
            body["warmup_error"] = warm.error
        return JSONResponse(body, status_code=200 if body.get("ready") else 503)

    from search_core.api import create_api  # REST API: /api/search, /api/docs, ...

    app.mount("/api", create_api(auth=auth, settings=settings))
    demo = build_demo()
    demo.queue(default_concurrency_limit=default_concurrency(), max_size=QUEUE_MAX_SIZE)
    if demo.delete_cache is None:  # Gradio ages its own cache files out; the sweeper caps size
        demo.delete_cache = DELETE_CACHE
    guard = login_guard(auth, settings)
    # Mounted last: a mount at "/" matches every path, so the routes above must come first.
    mounted: FastAPI = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=guard.login if guard else None,
        root_path=root_path or None,
        max_file_size=settings.max_upload_bytes,
        show_error=True,
        ssr_mode=False,  # SSR needs a Node server next to Python; the image has none
    )
    secure(mounted, demo, settings, guard)
    demo.share = share
    return mounted


DELETE_CACHE = (600, 3600)  # Gradio's delete_cache: every 10 min, files older than 1 h


def login_guard(auth: Auth | None, settings: Settings) -> LoginGuard | None:
    """The credential check with the failed-login limiter in front (None when auth is off)."""
    if not auth:
        return None
    limiter = LoginLimiter(max_failures=settings.login_max_failures,
                           lockout_s=settings.login_lockout_s)
    return LoginGuard(auth, limiter)


def secure(app: FastAPI, demo: gr.Blocks, settings: Settings, guard: LoginGuard | None) -> None:
    """Locks the mounted app down (see :mod:`search_core.uploads` and :mod:`search_core.webauth`).

    - ``has_launched``: ``mount_gradio_app`` never sets it, and Gradio skips its own check that
      inputs name files in its upload folder when it is unset (``processing_utils._check_allowed``).
    - :class:`UploadPathGuard` refuses server paths in file inputs before Gradio reads them.
    - :class:`AuthWall` (outermost) refuses every route but health checks and the login page
      without a session when auth is on; routes added to ``app`` later (``/api/*``) included.
    - The decode budget and the temp-folder cap are sized from the settings.
    """
    demo.has_launched = True
    demo.allowed_paths = []
    demo.blocked_paths = [str(settings.data_dir), str(REPO_ROOT / ".git")]
    budget.configure(settings.max_decodes)
    sweeper = TempSweeper(upload_folder(), settings.temp_max_bytes,
                          protect=lambda: _kept_files(demo))
    app.state.temp_sweeper = sweeper
    app.state.auth_on = guard is not None
    gradio_app = next((route.app for route in app.routes
                       if isinstance(route, Mount) and route.path in ("", "/")), None)
    app.add_middleware(SweepAfterUpload, sweeper=sweeper)
    app.add_middleware(UploadPathGuard)
    app.add_middleware(AuthWall, guard=guard, session_user=gradio_session_user(gradio_app))
    log.info("decode budget %d at once; temp folder %s capped at %.0f MB", budget.size(),
             sweeper.folder, settings.temp_max_bytes / 2**20)
    if settings.temp_max_bytes < 4 * settings.max_upload_bytes:
        # the least recently used files go first, but uploads still waiting for their
        # analysis count too: a cap below a few uploads makes users upload again
        log.warning("SEARCH_TEMP_MAX_MB (%.0f) is below 4 x SEARCH_MAX_UPLOAD_MB (%.0f): "
                    "concurrent uploads may be deleted before they are analysed",
                    settings.temp_max_bytes / 2**20, settings.max_upload_bytes / 2**20)


def _kept_files(demo: gr.Blocks) -> set[str]:
    """Files Gradio must keep (example images, default values)."""
    kept: set[str] = set()
    for block in demo.blocks.values():
        kept.update(getattr(block, "keep_in_cache", ()) or ())
    return kept


class SweepAfterUpload:
    """ASGI middleware: an upload's answer is sent only after the temp-folder cap is enforced
    again (in a worker thread; a few ms for a capped folder), so a burst of uploads never
    outgrows it between two periodic sweeps."""

    def __init__(self, app: Any, *, sweeper: TempSweeper) -> None:
        self.app = app
        self.sweeper = sweeper

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith("/upload"):
            await self.app(scope, receive, send)
            return
        import anyio.to_thread

        async def send_after_sweep(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                await anyio.to_thread.run_sync(self.sweeper.sweep, True)
            await send(message)

        await self.app(scope, receive, send_after_sweep)


# --------------------------------------------------------------------------- process entry


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal (exit 143), which ECS and supervisors log as a crash. A requested stop that shut down
    cleanly is a success: exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(sig).name)
        super().handle_exit(sig, frame)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Visual search web app")
    parser.add_argument(
        "--host",
        default=Settings.read("host"),
        help="interface to listen on (env HOST; the container sets 0.0.0.0)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=Settings.read("port"),
        help="port (env PORT; 7860 locally, 8080 in the container)",
    )
    parser.add_argument(
        "--share",
        action=argparse.BooleanOptionalAction,
        default=Settings.read("share"),
        help="public *.gradio.live link (env GRADIO_SHARE; needs auth and internet; 72 h)",
    )
    return parser.parse_args(argv)


def open_share_link(host: str, port: int) -> str | None:
    """Points Gradio's share tunnel (``*.gradio.live``) at the server on ``host:port``; the
    public URL, or None when it cannot be made (logged; the local server keeps running).

    Why not ``demo.launch(share=True)``: that serves the Blocks from Gradio's own app, without
    the auth wall, the upload guard, the temp-folder sweep and the health routes of
    :func:`create_app`. The tunnel only forwards to a local port, so it is pointed at the very
    app every other mode serves: a share link gets exactly the same protections.
    """
    import secrets

    from gradio import networking

    local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    address = Settings.read("share_server_address") or None  # a self-hosted frp server
    try:
        url = networking.setup_tunnel(
            local_host=local,
            local_port=port,
            share_token=secrets.token_urlsafe(32),
            share_server_address=address,
            share_server_tls_certificate=Settings.read("share_server_tls_certificate") or None,
        )
    except Exception as exc:  # no internet, frpc not downloadable: keep serving locally
        reason = (str(exc) or type(exc).__name__).splitlines()[0][:300]
        log.error("no share link (%s); the app is served at http://%s:%d only", reason, local,
                  port)
        return None
    # as Gradio does: the public side of its own share servers is https
    url = ("http://" if address else "https://") + url.split("://", 1)[-1]
    log.info("public share link (expires after 72 hours; login required): %s", url)
    return url


def close_share_links() -> None:
    """Stops the tunnel processes :func:`open_share_link` started."""
    try:
        from gradio.tunneling import CURRENT_TUNNELS
    except ImportError:
        return
    for tunnel in list(CURRENT_TUNNELS):
        with contextlib.suppress(Exception):
            tunnel.kill()  # type: ignore[no-untyped-call]  # unannotated in gradio.tunneling


def _share_when_started(server: uvicorn.Server, host: str, port: int) -> threading.Thread:
    """Opens the share link once the server listens (the tunnel checks the port)."""

    def run() -> None:
        import time

        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started and not server.should_exit:
            open_share_link(host, port)

    thread = threading.Thread(target=run, name="share-link", daemon=True)
    thread.start()
    return thread


def main(build_demo: BuildDemo, argv: list[str] | None = None) -> int:
    """Entry point of ``python app.py``; returns the process exit code."""
    try:
        log_level = Settings.read("log_level") or "INFO"
        args = parse_args(argv)
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        auth = load_auth()
        if args.share and not auth:
            print(SHARE_NEEDS_AUTH, file=sys.stderr)
            return 2
        app = create_app(build_demo, auth=auth, share=args.share)
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=log_level.lower(),
        # Behind the ALB the client address and scheme come from X-Forwarded-*; which peers
        # may set them is uvicorn's FORWARDED_ALLOW_IPS (the image sets "*": only the load
        # balancer can reach the task). Read by ForwardedClient below, not uvicorn: uvicorn
        # takes the client-written end of the header with "*" (search_core.forwarded).
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
        # ALB idle timeout is 60 s by default; keep-alive must outlive it or the ALB reuses a
        # connection the server already closed and the user sees a 502.
        timeout_keep_alive=75,
    )
    log.info("listening on http://%s:%d (auth %s)", args.host, args.port, "on" if auth else "off")
    config.app = ForwardedClient(app, config.forwarded_allow_ips or "127.0.0.1")
    server = _Server(config)
    if args.share:
        _share_when_started(server, args.host, args.port)
    try:
        server.run()
    finally:
        if args.share:
            close_share_links()
    return 0
