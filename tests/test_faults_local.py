"""Faults on the local side: the disk fills up while the index is saved, a file vanishes
mid-run, a model file is corrupted. Each ends in a clear message, nothing half-written, and
running the same command again completes the job with every image exactly once."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import GROCERY, REPO

from search_core.config import Settings
from search_core.factory import build_embedder
from search_core.indexing import Indexer
from search_core.interfaces import Embedder
from search_core.local_index import LocalIndex
from search_core.models.efficientnet import EfficientNetEmbedder
from search_core.pipeline import SearchPipeline
from search_core.sources import FolderSource
from search_core.types import SourceEntry

FRUIT = GROCERY / "train" / "Fruit"
APPLES = FRUIT / "Apple"
DISK_FULL = "database or disk is full"


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"shared test data not found: {path}")
    return path


def _cli(*args: str, data: Path, roots: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEARCH_DATA_DIR": str(data), "SEARCH_DETECTOR": "none",
           "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(roots),
           "SEARCH_BATCH_SIZE": "16", **extra}
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _rows(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT uri, sha256, length(vector) FROM items").fetchall()


def _assert_exactly_once(rows: list[tuple[str, str, int]], files: list[Path],
                         dimension: int) -> None:
    assert len(rows) == len(files)
    assert {uri for uri, _, _ in rows} == {str(p) for p in files}
    assert len({sha for _, sha, _ in rows}) == len(files)
    assert {length for _, _, length in rows} == {dimension * 4}  # whole float32 vectors


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """The embedder this environment selects: the CLI runs below build the same one (their
    environment differs only in data, detector and batch settings)."""
    return build_embedder(Settings.from_env())


# ----------------------------------------------------------------- a real full disk (tmpfs)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs (needs root, as in the CI container); skipped where mounting is denied."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_while_saving_then_rerun(small_disk: Path, embedder: Embedder) -> None:
    files = sorted(p for p in _require(APPLES).rglob("*") if p.is_file())
    data = small_disk / "data"
    full = _cli("index", str(APPLES), data=data, roots=APPLES)
    assert full.returncode != 0, full.stdout
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "disk is full" in errors[0], full.stderr
    assert "run the same command again" in errors[0]
    summary = json.loads(full.stdout.strip().splitlines()[-1])
    assert summary["stopped"] and 0 < summary["indexed"] < len(files)

    rows = _rows(data / "index.sqlite3")  # whole batches only: what the report says landed
    assert len(rows) == summary["indexed"]
    assert len({sha for _, sha, _ in rows}) == len(rows)

    grown = subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)],
                           capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    rerun = _cli("index", str(APPLES), data=data, roots=APPLES)
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert resumed["unchanged"] == summary["indexed"]
    assert resumed["indexed"] + resumed["unchanged"] == len(files)
    _assert_exactly_once(_rows(data / "index.sqlite3"), files, embedder.dimension)


def test_disk_full_while_saving_the_search_graph_then_rerun(small_disk: Path, tmp_path: Path,
                                                            embedder: Embedder) -> None:
    """Issue 10: the rows fit on the 1 MiB disk, the HNSW graph (its 256-d projection of the
    vectors alone is 1.3 MB for 1280-d, 2.6 MB for 2560-d) does not. One error line, the
    summary still printed, the temp file removed, and the rerun on a grown disk builds the
    graph although nothing is left to embed."""
    folder, files = _corpus(tmp_path, 20)
    data = small_disk / "data"
    full = _cli("index", str(folder), data=data, roots=tmp_path, SEARCH_HNSW_THRESHOLD="5")
    assert full.returncode == 2, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in full.stderr
    assert "search graph" in errors[0] and "disk is full" in errors[0], errors
    summary = json.loads(full.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == len(files)
    _assert_exactly_once(_rows(data / "index.sqlite3"), files, embedder.dimension)
    assert not list(data.glob("*.tmp")) and not (data / "hnsw.npz").exists()

    grown = subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)],
                           capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    rerun = _cli("index", str(folder), data=data, roots=tmp_path, SEARCH_HNSW_THRESHOLD="5")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["unchanged"] == len(files)
    assert (data / "hnsw.npz").stat().st_size > 1024 * 1024
    assert not list(data.glob("*.tmp"))


# ------------------------------------------------ injected faults (no root needed, in-process)


class _FailingConnection:
    """Wraps a sqlite3 connection; storing a content raises "database or disk is full" once
    ``budget`` contents have gone through, exactly as SQLite does when the disk fills."""

    def __init__(self, inner: sqlite3.Connection, budget: int) -> None:
        self._inner = inner
        self.budget = budget

    def executemany(self, sql: str, params: Any) -> Any:
        if sql.startswith("INSERT INTO contents"):
            params = list(params)
            if self.budget < len(params):
                raise sqlite3.OperationalError(DISK_FULL)
            self.budget -= len(params)
        return self._inner.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _corpus(tmp_path: Path, count: int = 40) -> tuple[Path, list[Path]]:
    """``count`` real photos copied into a private folder (so the test may delete some)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted(_require(APPLES).rglob("*.jpg"))[:count]:
        shutil.copy(photo, folder / photo.name)
    return folder, sorted(folder.iterdir())


def test_injected_disk_full_keeps_whole_batches(tmp_path: Path, embedder: Embedder) -> None:
    folder, files = _corpus(tmp_path)
    data = tmp_path / "data"
    index = LocalIndex(data, dimension=embedder.dimension, model_id=embedder.model_id)
    index._conn = _FailingConnection(index._conn, budget=16)  # second batch hits a full disk
    report = Indexer(embedder, index, batch_size=16).run(FolderSource(folder))
    assert report.stopped and "disk is full" in report.error
    assert "nothing of this batch was written" in report.error
    assert report.indexed == 16 and len(_rows(data / "index.sqlite3")) == 16

    fresh = LocalIndex(data, dimension=embedder.dimension, model_id=embedder.model_id)
    again = Indexer(embedder, fresh, batch_size=16).run(FolderSource(folder))
    assert not again.stopped and again.unchanged == 16 and again.indexed == len(files) - 16
    _assert_exactly_once(_rows(data / "index.sqlite3"), files, embedder.dimension)


def test_disk_full_in_a_background_job_fails_the_job_not_the_app(
    tmp_path: Path, embedder: Embedder
) -> None:
    folder, files = _corpus(tmp_path, 24)
    data = tmp_path / "data"
    index = LocalIndex(data, dimension=embedder.dimension, model_id=embedder.model_id)
    index._conn = _FailingConnection(index._conn, budget=0)
    settings = Settings(data_dir=data, folder_roots=(tmp_path,), sample_catalogue=None,
                        batch_size=16)
    pipeline = SearchPipeline(settings, detector=None, embedder=embedder, index=index)
    job = pipeline.jobs.start(str(folder))
    assert job.thread is not None
    job.thread.join(120)
    assert job.state == "failed" and "disk is full" in job.error
    assert pipeline.index.count() == 0
    index._conn.budget = 10_000  # space freed: the same job again completes
    job = pipeline.jobs.start(str(folder))
    assert job.thread is not None
    job.thread.join(120)
    assert job.state == "finished", job.error
    _assert_exactly_once(_rows(data / "index.sqlite3"), files, embedder.dimension)


def test_file_vanishing_mid_run_is_reported_and_the_rest_lands(
    tmp_path: Path, embedder: Embedder
) -> None:
    folder, files = _corpus(tmp_path, 20)
    victim = files[7]

    class Vanishing(FolderSource):
        def read(self, entry: SourceEntry) -> bytes:
            if entry.uri == str(victim):
                victim.unlink()  # deleted between listing and reading
            return super().read(entry)

    index = LocalIndex(tmp_path / "data", dimension=embedder.dimension,
                       model_id=embedder.model_id)
    report = Indexer(embedder, index, batch_size=8).run(Vanishing(folder))
    assert report.failures == [(str(victim), "cannot read: No such file or directory")]
    assert report.indexed == len(files) - 1 and index.count() == len(files) - 1


def _default_embedder_file(models: Path) -> Path:
    """The model file the default embedder loads, in a private copy of models/ (detectors left
    out: SEARCH_DETECTOR=none)."""
    shutil.copytree(Settings().models_dir, models,
                    ignore=shutil.ignore_patterns("nanodet*", "ssd_*"))
    embedder = build_embedder(Settings.from_env({**os.environ, "SEARCH_MODELS_DIR": str(models)}))
    assert isinstance(embedder, EfficientNetEmbedder), "the offline default loads an ONNX file"
    return models / embedder.filename


def test_corrupted_model_file_stops_with_one_clear_line(tmp_path: Path) -> None:
    folder, _ = _corpus(tmp_path, 8)
    models = tmp_path / "models"
    onnx = _default_embedder_file(models)
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # a truncated download
    env_data = tmp_path / f"data-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "SEARCH_DATA_DIR": str(env_data), "SEARCH_DETECTOR": "none",
           "SEARCH_MODELS_DIR": str(models), "SEARCH_FOLDER_ROOTS": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "search_core", "index", str(folder)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()  # refused before any file: one line, no noise
    assert len(lines) == 1 and lines[0].startswith("error: ") and "SHA256SUMS" in lines[0], (
        run.stderr)
    db = env_data / "index.sqlite3"
    assert not db.exists() or _rows(db) == []


def test_threads_left_behind_are_daemons() -> None:
    """Nothing started by the tests above may keep the interpreter alive."""
    assert all(t.daemon or t is threading.main_thread() or t.name.startswith("pytest")
               for t in threading.enumerate())


def test_indexer_stops_on_a_broken_model(tmp_path: Path) -> None:
    folder, _ = _corpus(tmp_path, 8)
    models = tmp_path / "models"
    onnx = _default_embedder_file(models)
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    broken = build_embedder(Settings.from_env({**os.environ, "SEARCH_MODELS_DIR": str(models)}))
    index = LocalIndex(tmp_path / "data", dimension=broken.dimension, model_id=broken.model_id)
    report = Indexer(broken, index, batch_size=16).run(FolderSource(folder))
    assert report.stopped and "SHA256SUMS" in report.error
