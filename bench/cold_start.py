"""Cold start: from process start to the first answered search.

    python bench/cold_start.py          # the app (3 starts) and the CLI (3 runs)
    python bench/cold_start.py --quick  # one of each (< 2 min)

App: `python app.py` on a free port with a data directory that already holds a small
catalogue; the clock runs from Popen until gradio_client's first /search returns results
(also reported: /ping answering, i.e. HTTP up, and /healthz ready, i.e. models loaded).
CLI: `python -m search_core search IMAGE` from start to exit. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import GROCERY, REPO, emit, machine, median, require_dir, table

QUERY = GROCERY / "val" / "Fruit" / "Banana"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SEARCH_DATA_DIR": str(data_dir), "SEARCH_SAMPLE_CATALOGUE": "off",
            "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **extra}


def prepare_catalogue(tmp: Path) -> Path:
    """A data dir holding 40 indexed grocery photos (not timed)."""
    catalogue = tmp / "catalogue"
    for name in ("Banana", "Lemon", "Arla-Standard-Milk", "Red-Bell-Pepper"):
        source = next((GROCERY / "train").glob(f"**/{name}"))
        (catalogue / name).mkdir(parents=True)
        for photo in sorted(source.glob("*.jpg"))[:10]:
            shutil.copy(photo, catalogue / name / photo.name)
    data_dir = tmp / "data"
    subprocess.run([sys.executable, "-m", "search_core", "index", str(catalogue)], cwd=REPO,
                   env=env_for(data_dir, SEARCH_FOLDER_ROOTS=str(tmp)), check=True,
                   capture_output=True)
    return data_dir


def app_cold_start(data_dir: Path, query: Path, tmp: Path) -> dict[str, float]:
    import httpx
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / f"app-{port}.log").open("wb")
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env_for(data_dir, HOST="127.0.0.1", PORT=str(port),
                                        GRADIO_TEMP_DIR=str(tmp / "gradio")))
    marks: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 180
        while "ready_s" not in marks:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the app did not start; see {log.name}")
            try:
                if "http_s" not in marks and httpx.get(url + "/ping", timeout=1).status_code == 200:
                    marks["http_s"] = time.perf_counter() - began
                if "http_s" in marks:
                    health = httpx.get(url + "/healthz", timeout=2)
                    if health.status_code == 200 and health.json().get("ready"):
                        marks["ready_s"] = time.perf_counter() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        client = Client(url + "/", verbose=False)
        # as the UI does it: analyse (detect, preselect an object), then search that choice
        _drawn, choice, _note = client.predict(handle_file(str(query)), api_name="/analyze")
        value = choice.get("value", "whole") if isinstance(choice, dict) else (choice or "whole")
        gallery, _status = client.predict(handle_file(str(query)), value, 5, "", 0, 0, 100, 100,
                                          api_name="/search")
        marks["first_search_s"] = time.perf_counter() - began
        if not gallery:
            raise SystemExit("the first search returned no results")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {k: round(v, 2) for k, v in marks.items()}


def cli_cold_start(data_dir: Path, query: Path) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search_core", "search", str(query), "--k", "5"],
                   cwd=REPO, env=env_for(data_dir), check=True, capture_output=True)
    return round(time.perf_counter() - began, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    require_dir(GROCERY)
    runs = args.runs or (1 if args.quick else 3)
    query = sorted(QUERY.glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as name:
        tmp = Path(name)
        data_dir = prepare_catalogue(tmp)
        apps = [app_cold_start(data_dir, query, tmp) for _ in range(runs)]
        clis = [cli_cold_start(data_dir, query) for _ in range(runs)]
    rows = [["app: HTTP up (/ping)", median([a["http_s"] for a in apps])],
            ["app: models loaded (/healthz ready)", median([a["ready_s"] for a in apps])],
            ["app: first search answered", median([a["first_search_s"] for a in apps])],
            ["CLI: `search IMAGE` start to exit", median(clis)]]
    print(f"median of {runs} run(s), seconds")
    print(table(rows, ["step", "s"]))
    payload: dict[str, Any] = {
        "bench": "cold_start", "runs": runs,
        "app_http_s": rows[0][1], "app_ready_s": rows[1][1],
        "app_first_search_s": rows[2][1], "cli_search_s": rows[3][1],
        "app_runs": apps, "cli_runs": clis, "machine": machine(),
    }
    emit(payload)


if __name__ == "__main__":
    main()
