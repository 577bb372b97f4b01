"""Concurrent users against the real web app while it indexes: errors, latency, memory.

    python bench/load.py                 # 20 users for 60 s (~2 min with start-up)
    python bench/load.py --quick         # 20 users for 20 s
    python bench/load.py --users 8 --seconds 30 --concurrency 1

What it does: starts ``python app.py`` (exactly as the container does: HOST/PORT from the
environment) on a temporary SEARCH_DATA_DIR that the CLI has filled with the sample catalogue,
starts an indexing job of the grocery training set through the Index tab's API, then lets N
simulated users (one ``gradio_client.Client`` per thread) upload a photo, take the object the
app preselects and search with it, over and over, for a bounded time. A user's "search" is the
two calls the browser makes: ``/analyze`` then ``/search``.

An error is any exception, any "⚠️" status, or an empty gallery. The server's resident memory
is sampled from /proc every 0.25 s; VmHWM (the kernel's high-water mark) is reported too.
Queue concurrency is :func:`search_core.server.default_concurrency` (one search per core,
``GRADIO_DEFAULT_CONCURRENCY_LIMIT`` / ``--concurrency`` overrides): ONNX Runtime already uses
every core for one inference, so more concurrent runs only add memory and latency.
Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GROCERY, REPO, emit, image_files, machine, percentile, table

START_DEADLINE_S = 240.0
# Variables that would change the server's mode if they leaked in from the caller's shell.
_MODE_VARS = ("GRADIO_SHARE", "SEARCH_AUTH", "SEARCH_AUTH_FILE", "SEARCH_ROOT_PATH", "PORT",
              "HOST")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_detector() -> str:
    """The local detector once its module exists (it is being written in parallel)."""
    return "local" if (REPO / "search_core" / "models" / "detectors.py").exists() else "none"


def proc_status_kb(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/PID/status in KiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 600) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=dict(env),
                          capture_output=True, text=True, timeout=timeout)


class AppServer:
    """``python app.py`` in a subprocess with its own port, data dir and log file.

    ``env`` is added to a clean copy of os.environ (mode variables removed); by default the
    server gets HF offline/no telemetry, no sample bootstrap, and folder roots that include
    ``workdir`` so tests can index the files they generate there."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if k not in _MODE_VARS}
        self.env: dict[str, str] = {
            **base,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "SEARCH_DATA_DIR": str(self.workdir / "data"),
            "SEARCH_DETECTOR": default_detector(),
            "SEARCH_SAMPLE_CATALOGUE": "off",
            "SEARCH_FOLDER_ROOTS": f"{REPO},{REPO.parent / 'shared' / 'data'},{self.workdir}",
            "GRADIO_TEMP_DIR": str(self.workdir / "gradio"),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> AppServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py"], cwd=REPO, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> None:
        """Polls /healthz until it answers 200; raises with the server log otherwise."""
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {deadline_s:.0f} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def hwm_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_job(client: Any, deadline_s: float = 300.0) -> dict[str, Any]:
    """Polls the Index tab until the latest job is no longer running; returns the stats JSON
    together with the progress text and counts (as the UI shows them)."""
    deadline = time.monotonic() + deadline_s
    while True:
        progress, counts, failures, stats, _timer = client.predict(api_name="/index_status")
        if "running:" not in progress or time.monotonic() > deadline:
            return {"progress": progress, "counts": counts, "failures": failures,
                    "stats": json_output(stats)}
        time.sleep(0.5)


def json_output(value: Any) -> dict[str, Any]:
    """A gr.JSON output as the client returns it. The client takes any dict with a "path" key
    for a file and downloads it, so the stats dict may arrive as that file's local path."""
    import json

    if isinstance(value, dict):
        return value
    if isinstance(value, str) and Path(value).is_file() and value.endswith(".json"):
        return dict(json.loads(Path(value).read_text()))
    return {"raw": value}


@dataclass
class LoadResult:
    users: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_samples: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "seconds": round(self.seconds, 1),
            "searches": len(self.latencies),
            "errors": len(self.errors),
            "searches_per_s": round(len(self.latencies) / self.seconds, 2) if self.seconds else 0,
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 1),
            "p95_ms": round(percentile(self.latencies, 95) * 1000, 1),
            "max_ms": round(max(self.latencies, default=float("nan")) * 1000, 1),
            "peak_rss_mb": round(max(self.rss_samples, default=0.0), 1),
        }


def one_search(client: Any, query: Path) -> str:
    """Upload, take the preselected object, search: what a browser does. Returns "" when the
    answer is good, otherwise why not."""
    from gradio_client import handle_file

    _image, dropdown, status = client.predict(handle_file(str(query)), api_name="/analyze")
    if str(status).startswith("⚠️"):
        return f"analyze: {status}"
    choice = dropdown.get("value", "whole") if isinstance(dropdown, dict) else "whole"
    gallery, status = client.predict(handle_file(str(query)), choice, 8, "", 0, 0, 100, 100,
                                     api_name="/search")
    if str(status).startswith("⚠️"):
        return f"search: {status}"
    if not gallery:
        return f"search: empty gallery ({status})"
    return ""


def run_load(server: AppServer, queries: list[Path], *, users: int, seconds: float,
             seed: int = 0) -> LoadResult:
    """``users`` threads, each with its own client, searching until ``seconds`` have passed."""
    from gradio_client import Client

    result = LoadResult(users=users, seconds=seconds)
    lock = threading.Lock()
    stop = threading.Event()
    ready = threading.Barrier(users + 1)

    def user(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        try:
            client = Client(server.url, verbose=False)
        except Exception as exc:
            with lock:
                result.errors.append(f"user {number}: connect: {exc!r}")
            ready.wait()
            return
        ready.wait()
        while not stop.is_set():
            query = rng.choice(queries)
            started = time.perf_counter()
            try:
                problem = one_search(client, query)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            with lock:
                if problem:
                    result.errors.append(f"user {number}: {query.name}: {problem}")
                else:
                    result.latencies.append(elapsed)
        client.close()

    threads = [threading.Thread(target=user, args=(n,), daemon=True) for n in range(users)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        result.rss_samples.append(server.rss_mb())
        time.sleep(0.25)
    stop.set()
    for thread in threads:
        thread.join(120)
    result.seconds = time.monotonic() - started
    result.rss_samples.append(server.rss_mb())
    return result


def prepare_data_dir(workdir: Path, catalogue: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Fills the server's data dir with ``catalogue`` through the CLI before the server starts
    (so every search has something to find while the indexing job runs)."""
    import json

    done = run_cli(["index", str(catalogue)], env)
    if done.returncode != 0:
        raise RuntimeError(f"pre-indexing failed: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="20 s instead of 60 s")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="GRADIO_DEFAULT_CONCURRENCY_LIMIT for the server (default: "
                             "search_core.server.default_concurrency)")
    parser.add_argument("--onnx-threads", type=int, default=None,
                        help="SEARCH_ONNX_THREADS for the server (default: one per core)")
    parser.add_argument("--catalogue", type=Path, default=REPO / "samples" / "catalogue",
                        help="indexed (CLI) before the server starts")
    parser.add_argument("--ingest", type=Path, default=GROCERY / "train",
                        help="indexed through the Index tab while the users search")
    parser.add_argument("--queries", type=Path, default=GROCERY / "val")
    parser.add_argument("--no-ingest", action="store_true",
                        help="no indexing job during the run (the baseline)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    for folder in (args.catalogue, args.ingest, args.queries):
        if not folder.is_dir():
            print(f"error: folder not found: {folder}", file=sys.stderr)
            return 2

    from gradio_client import Client

    from search_core.server import default_concurrency

    workdir = Path(tempfile.mkdtemp(prefix="load-"))
    extra = {} if args.concurrency is None else {
        "GRADIO_DEFAULT_CONCURRENCY_LIMIT": str(args.concurrency)}
    if args.onnx_threads is not None:
        extra["SEARCH_ONNX_THREADS"] = str(args.onnx_threads)
    server = AppServer(workdir, **extra)
    old = os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT")
    os.environ.update(extra)
    concurrency = default_concurrency()
    if old is None:
        os.environ.pop("GRADIO_DEFAULT_CONCURRENCY_LIMIT", None)
    queries = image_files(args.queries)
    rng = random.Random(1)
    queries = rng.sample(queries, min(60, len(queries)))
    try:
        t0 = time.perf_counter()
        prepared = prepare_data_dir(workdir, args.catalogue, server.env)
        print(f"catalogue: {prepared['indexed']} images indexed by the CLI in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        server.start()
        admin = Client(server.url, verbose=False)
        rss_idle = server.rss_mb()
        if not args.no_ingest:
            admin.predict(str(args.ingest), False, api_name="/start_index")
        print(f"server ready (pid {server.pid}, {rss_idle:.0f} MB); indexing {args.ingest} and "
              f"{args.users} users searching for {seconds:.0f} s ...", file=sys.stderr)
        result = run_load(server, queries, users=args.users, seconds=seconds)
        job = admin.predict(api_name="/index_status")
        admin.predict(api_name="/stop_index")
        job_after = wait_job(admin, 60)
        summary = result.summary()
        hwm = server.hwm_mb()
        alive = server.alive()
        exit_code = server.stop()
    finally:
        if server.alive():
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(
        [[summary["users"], summary["seconds"], summary["searches"], summary["errors"],
          summary["p50_ms"], summary["p95_ms"], summary["peak_rss_mb"], round(hwm, 1)]],
        ["users", "s", "searches", "errors", "p50 ms", "p95 ms", "peak RSS MB", "VmHWM MB"],
    ))
    for error in result.errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    emit({
        "bench": "load",
        **summary,
        "vm_hwm_mb": round(hwm, 1),
        "rss_idle_mb": round(rss_idle, 1),
        "queue_concurrency": concurrency,
        "detector": server.env["SEARCH_DETECTOR"],
        "index_job_during_load": job[0].split("<progress")[0]
        .replace("<div id='index-progress-text'>", "").replace("</div>", ""),
        "index_count_after_stop": job_after["stats"].get("count"),
        "server_alive": alive,
        "server_exit": exit_code,
        "error_samples": result.errors[:5],
        "machine": machine(),
    })
    return 0 if not result.errors and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
