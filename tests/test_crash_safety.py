"""``kill -9`` in the middle of local indexing, then the same command again.

Real processes, real models, a few hundred real photos: the CLI is killed twice while it
writes, and each time the index must open, the next run must finish the job, and in the end
every image must be in the index exactly once (nothing lost, nothing doubled).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import GROCERY, REPO

from search_core.config import Settings
from search_core.factory import build_embedder

APPLES = GROCERY / "train" / "Fruit" / "Apple"
KILL_AT = (0.25, 0.6)  # fractions of the corpus after which the running CLI is killed
DEADLINE_S = 300.0


def _count(db: Path) -> int:
    """Rows committed so far, read the way another process would (read-only, WAL-aware)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.Error:
        return 0  # schema not created yet


def _env(data: Path) -> dict[str, str]:
    return {**os.environ, "SEARCH_DATA_DIR": str(data), "SEARCH_DETECTOR": "none",
            "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(APPLES.parent),
            "SEARCH_BATCH_SIZE": "16"}


def _start(data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "search_core", "index", str(APPLES)],
                            cwd=REPO, env=_env(data), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill_9_during_indexing_then_rerun(tmp_path: Path) -> None:
    if not APPLES.is_dir():
        pytest.skip(f"shared test data not found: {APPLES}")
    files = sorted(p for p in APPLES.rglob("*") if p.is_file())
    total = len(files)
    assert total >= 200
    data = tmp_path / "data"
    db = data / "index.sqlite3"
    kills = []
    for fraction in KILL_AT:
        proc = _start(data)
        target = int(total * fraction)
        deadline = time.monotonic() + DEADLINE_S
        while proc.poll() is None and _count(db) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills.append((proc.returncode, _count(db)))
    # Each kill hit a live process half-way (SIGKILL -> returncode -9), not a finished one.
    assert all(code == -signal.SIGKILL for code, _ in kills), kills
    assert 0 < kills[0][1] < kills[1][1] < total, kills

    final = subprocess.run([sys.executable, "-m", "search_core", "index", str(APPLES)],
                           cwd=REPO, env=_env(data), capture_output=True, text=True,
                           timeout=DEADLINE_S)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0 and summary["duplicates"] == 0
    assert summary["unchanged"] == kills[1][1]  # resumed: what landed before is kept
    assert summary["indexed"] + summary["unchanged"] == total

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT uri, sha256, length(vector) FROM items").fetchall()
    uris = [uri for uri, _, _ in rows]
    assert len(rows) == total  # nothing lost ...
    assert len(set(uris)) == total and len({sha for _, sha, _ in rows}) == total  # ... or doubled
    assert set(uris) == {str(p) for p in files}
    # whole float32 vectors of the embedder the CLI ran (by default Lite0 + Lite2, 2560-d)
    dimension = build_embedder(Settings.from_env(_env(data))).dimension
    assert {length for _, _, length in rows} == {dimension * 4}

    again = subprocess.run([sys.executable, "-m", "search_core", "stats"], cwd=REPO,
                           env=_env(data), capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout.strip().splitlines()[-1])["count"] == total


def test_sigterm_during_an_app_indexing_job_then_rerun(tmp_path: Path) -> None:
    """The container is stopped (SIGTERM) while the Index tab's job runs: the job stops at a
    batch boundary, the server exits 0, and the same job afterwards completes the index."""
    if not APPLES.is_dir():
        pytest.skip(f"shared test data not found: {APPLES}")
    sys.path.insert(0, str(REPO / "bench"))
    from gradio_client import Client
    from load import AppServer

    files = sorted(p for p in APPLES.rglob("*") if p.is_file())
    server = AppServer(tmp_path, SEARCH_DETECTOR="none", SEARCH_FOLDER_ROOTS=str(APPLES),
                       SEARCH_BATCH_SIZE="16")
    db = Path(server.env["SEARCH_DATA_DIR"]) / "index.sqlite3"
    server.start()
    try:
        client = Client(server.url, verbose=False)
        client.predict(str(APPLES), False, api_name="/start_index")
        deadline = time.monotonic() + DEADLINE_S
        while _count(db) < len(files) // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
        landed = _count(db)
        assert 0 < landed < len(files), "the job should still be running"
    finally:
        code = server.stop()
    assert code == 0, server.log()[-2000:]
    assert "Traceback" not in server.log()
    stopped_at = _count(db)
    assert landed <= stopped_at < len(files)  # stopped early, kept what it had committed

    final = subprocess.run([sys.executable, "-m", "search_core", "index", str(APPLES)],
                           cwd=REPO, env={**server.env}, capture_output=True, text=True,
                           timeout=DEADLINE_S)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    assert summary["unchanged"] == stopped_at
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT uri, sha256 FROM items").fetchall()
    assert len(rows) == len(files) == len({u for u, _ in rows}) == len({s for _, s in rows})
