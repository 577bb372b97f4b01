"""The web server, started exactly as the container's CMD starts it: ``python app.py`` with HOST
and PORT from the environment. Real models, the real sample catalogue, real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import GROCERY, REPO

from search_core.errors import ConfigError
from search_core.pipeline import SAMPLE_PENDING
from search_core.server import SHARE_NEEDS_AUTH, load_auth

# Byte-identical to samples/catalogue/Asparagus/Asparagus_002.jpg, which the app indexes on
# its first start: the top hit must be that very file with cosine similarity ~1.
QUERY = GROCERY / "train" / "Vegetables" / "Asparagus" / "Asparagus_002.jpg"
START_DEADLINE_S = 180.0  # a generous bound on waiting, never asserted as a duration

# Variables that would change the server's mode if they leaked in from the developer's shell.
_MODE_VARS = ("GRADIO_SHARE", "SEARCH_AUTH", "SEARCH_AUTH_FILE", "SEARCH_ROOT_PATH", "PORT", "HOST")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppProcess:
    """``python app.py`` in a subprocess with its own data dir and port."""

    def __init__(self, tmp: Path, args: tuple[str, ...] = (), **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if k not in _MODE_VARS}
        self.env = {
            **base,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "SEARCH_DATA_DIR": str(tmp / "data"),
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            **env,
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AppProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, path: str, status: int = 200) -> httpx.Response:
        """Polls ``path`` until it answers ``status``; fails with the server log otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                response = httpx.get(self.url + path, timeout=5)
                if response.status_code == status:
                    return response
                last = response.status_code
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.25)
        pytest.fail(f"{path} never answered {status} (last: {last!r}):\n{self.log()[-3000:]}")

    def terminate(self) -> int:
        """SIGTERM, as ECS and `docker stop` send it; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server ignored SIGTERM:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    app = AppProcess(tmp_path_factory.mktemp("server")).start()
    try:
        yield app
    finally:
        app.kill()


def _wait_indexed(client: object) -> str:
    """Waits for the first-start indexing job of the sample catalogue to finish."""
    deadline = time.monotonic() + START_DEADLINE_S
    progress = ""
    while time.monotonic() < deadline:
        progress = client.predict(api_name="/index_status")[0]  # type: ignore[attr-defined]
        if "finished" in progress or "failed" in progress:
            return progress
        time.sleep(1)
    pytest.fail(f"sample indexing did not finish: {progress}")


@contextlib.contextmanager
def indexed_app(folder: Path) -> Iterator[AppProcess]:
    """A started app whose first-start sample indexing has finished (the browser tests'
    starting point: a catalogue to search right away)."""
    server = AppProcess(folder).start()
    try:
        server.wait_for("/healthz", 200)
        from gradio_client import Client

        _wait_indexed(Client(server.url + "/", verbose=False))
        yield server
    finally:
        server.kill()


# --------------------------------------------------------------------------- live server


def test_ping_answers_without_models(server: AppProcess) -> None:
    response = server.wait_for("/ping")
    assert response.json() == {"status": "ok"}


def test_healthz_reports_readiness(server: AppProcess) -> None:
    body = server.wait_for("/healthz", 200).json()
    assert body["ready"] is True
    assert body["model_loaded"] is True
    assert body["index_reachable"] is True
    assert body["backend"] == "local"
    assert body["embedder"]
    assert isinstance(body["count"], int)


def test_search_through_gradio_client(server: AppProcess) -> None:
    if not QUERY.exists():
        pytest.skip(f"shared test data missing: {QUERY}")
    from gradio_client import Client, handle_file

    server.wait_for("/healthz", 200)
    client = Client(server.url + "/", verbose=False)
    assert "finished" in _wait_indexed(client)
    gallery, status = client.predict(
        handle_file(str(QUERY)), "whole", 5, "", 0, 0, 100, 100, api_name="/search"
    )
    assert len(gallery) == 5, status
    top = gallery[0]["caption"]
    assert top.split("\n")[1].endswith("Asparagus/Asparagus_002.jpg"), top
    assert top.startswith("Asparagus · 100 %"), top  # "name · score %\n…/folder/file\ntags…"
    assert Path(gallery[0]["image"]).is_file()


def test_files_outside_gradio_cache_are_not_served(server: AppProcess) -> None:
    """Only Gradio's own cache is served: not the models, not the index, not the code."""
    server.wait_for("/ping")
    for path in (REPO / "models" / "SHA256SUMS", REPO / "app.py"):
        response = httpx.get(f"{server.url}/gradio_api/file={path}", timeout=10)
        assert response.status_code == 403, path


# --------------------------------------------------------------------------- lifecycle


def test_sigterm_stops_a_running_index_job_and_exits_zero(tmp_path: Path) -> None:
    """ECS stops tasks with SIGTERM: the first-start indexing job (started before the port
    opens, so normally still running at /ping) must stop at a clean point and the process must
    exit 0, leaving a usable index."""
    app = AppProcess(tmp_path, SEARCH_BATCH_SIZE="4").start()
    try:
        app.wait_for("/ping")
        code = app.terminate()
    finally:
        app.kill()
    log = app.log()
    assert code == 0, log[-3000:]
    assert "Application shutdown complete" in log
    assert "Traceback" not in log, log[-3000:]
    # The index left behind opens and counts (nothing half-written).
    stats = subprocess.run(
        [sys.executable, "-m", "search_core", "stats"],
        cwd=REPO,
        env=app.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    # Stopping flushes the batch in hand, so every image seen so far landed exactly once and
    # the next run resumes from there (tests/test_crash_safety.py checks the resumption).
    count = json.loads(stats.stdout)["count"]
    assert 0 <= count <= 324, stats.stdout
    # The next start resumes the interrupted first-start indexing (the index is no longer
    # empty, but the sample is not complete) instead of keeping part of it forever.
    if count == 324:  # the job had finished before the signal: nothing to resume
        return
    assert (Path(app.env["SEARCH_DATA_DIR"]) / SAMPLE_PENDING).exists()
    from gradio_client import Client

    again = AppProcess(tmp_path).start()
    try:
        again.wait_for("/healthz", 200)
        _wait_indexed(Client(again.url + "/", verbose=False))
        resumed = httpx.get(f"{again.url}/api/stats", timeout=30).json()
    finally:
        again.kill()
    assert resumed["count"] == 324, resumed
    assert not (Path(app.env["SEARCH_DATA_DIR"]) / SAMPLE_PENDING).exists()


@pytest.mark.parametrize("how", [("--share",), ()], ids=["flag", "env"])
def test_share_without_auth_is_refused(tmp_path: Path, how: tuple[str, ...]) -> None:
    app = AppProcess(tmp_path, args=how, GRADIO_SHARE="" if how else "true").start()
    assert app.proc is not None
    code = app.proc.wait(timeout=120)
    assert code == 2
    assert SHARE_NEEDS_AUTH in app.log()
    assert "72 hours" in app.log()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [("PORT", "eighty", "PORT must be an integer, got 'eighty'"),
     ("LOG_LEVEL", "loud", "LOG_LEVEL must be DEBUG, INFO")],
)
def test_bad_serving_setting_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    """Read through config.py like every other setting: a clear line, not a traceback."""
    app = AppProcess(tmp_path, **{variable: value}).start()
    assert app.proc is not None
    assert app.proc.wait(timeout=120) == 2
    assert f"error: {message}" in app.log() and "Traceback" not in app.log()


def test_auth_required_when_configured(tmp_path: Path) -> None:
    from gradio_client import Client

    app = AppProcess(tmp_path, SEARCH_AUTH="alice:s3cret:with:colons").start()
    try:
        # Health endpoints stay open: load balancers cannot log in.
        app.wait_for("/ping")
        assert httpx.get(app.url + "/config", timeout=10).status_code == 401
        with pytest.raises(ValueError):
            Client(app.url + "/", verbose=False)
        with pytest.raises(ValueError):
            Client(app.url + "/", auth=("alice", "wrong"), verbose=False)
        client = Client(app.url + "/", auth=("alice", "s3cret:with:colons"), verbose=False)
        progress = client.predict(api_name="/index_status")[0]
        assert "index-progress-text" in progress
    finally:
        code = app.terminate()
    assert code == 0


def test_healthz_is_503_when_models_cannot_load(tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    app = AppProcess(tmp_path, SEARCH_MODELS_DIR=str(empty), SEARCH_SAMPLE_CATALOGUE="off").start()
    try:
        app.wait_for("/ping")
        body = app.wait_for("/healthz", 503).json()
        # Warm-up runs in the background; wait until it has failed and said why.
        deadline = time.monotonic() + START_DEADLINE_S
        while "warmup_error" not in body and time.monotonic() < deadline:
            time.sleep(0.25)
            body = httpx.get(app.url + "/healthz", timeout=5).json()
    finally:
        app.terminate()
    assert body["ready"] is False
    assert "missing" in body["warmup_error"]


# --------------------------------------------------------------------------- configuration


def test_load_auth_from_env_and_file(tmp_path: Path) -> None:
    assert load_auth({}) is None
    assert load_auth({"SEARCH_AUTH": "bob:pw:x"}) == [("bob", "pw:x")]
    creds = tmp_path / "auth.txt"
    creds.write_text("# team\nann:one\n\n  ben:two  \n")
    assert load_auth({"SEARCH_AUTH_FILE": str(creds)}) == [("ann", "one"), ("ben", "two")]
    both = load_auth({"SEARCH_AUTH": "bob:pw", "SEARCH_AUTH_FILE": str(creds)})
    assert both == [("bob", "pw"), ("ann", "one"), ("ben", "two")]


@pytest.mark.parametrize(
    "env",
    [
        {"SEARCH_AUTH": "no-colon"},
        {"SEARCH_AUTH": ":pw"},
        {"SEARCH_AUTH": "user:"},
        {"SEARCH_AUTH_FILE": "/nonexistent/auth.txt"},
    ],
)
def test_load_auth_rejects_malformed(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_auth(env)


def test_an_interrupted_sample_indexing_is_resumed_only_until_the_user_indexes_their_own(
    tmp_path: Path,
) -> None:
    """The resume must never pour the rest of the sample into a catalogue the user has since
    built: indexing anything else (CLI, Index tab) or a reset cancels it."""
    import shutil

    from search_core.config import Settings
    from search_core.factory import build_pipeline

    sample, own = tmp_path / "sample", tmp_path / "own"
    for folder, label in ((sample, "Banana"), (own, "Kiwi")):
        (folder / label).mkdir(parents=True)
        for photo in sorted((GROCERY / "train" / "Fruit" / label).rglob("*.jpg"))[:2]:
            shutil.copyfile(photo, folder / label / photo.name)
    settings = Settings(data_dir=tmp_path / "data", sample_catalogue=sample, detector="none",
                        folder_roots=(tmp_path,))
    pipeline = build_pipeline(settings)
    pending = settings.data_dir / SAMPLE_PENDING
    assert pipeline.bootstrap_sample() and pending.exists()
    job = pipeline.jobs.latest()
    assert job is not None and job.thread is not None
    job.thread.join(120)
    assert job.state == "finished" and not pending.exists() and pipeline.index.count() == 2
    assert not pipeline.bootstrap_sample()  # complete: nothing to resume
    pending.touch()  # as if that indexing had been interrupted
    pipeline.index_source(str(own))  # ... and the user then indexed their own catalogue
    assert not pending.exists() and not pipeline.bootstrap_sample()
