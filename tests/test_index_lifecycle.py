"""Index lifecycle cases (found by probing) that left the index out of step with its source.

1. A file indexed once, then replaced by a dangling symbolic link (the picture is gone) or by
   a truncated copy (not a usable picture any more): ``index --prune`` keeps the old name with
   the old vector, so searches keep returning a picture that no longer exists.
2. After switching SEARCH_EMBEDDER, the error says "use another SEARCH_DATA_DIR or reset the
   index", but ``reset --yes`` fails with the same error; resetting with the old embedder
   empties the index yet keeps the old model id, so the new embedder is still refused.

Real photos, the real CLI in subprocesses.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import GROCERY, REPO

KIWIS = GROCERY / "train" / "Fruit" / "Kiwi"


def _photos(count: int) -> list[Path]:
    if not KIWIS.is_dir():
        pytest.skip(f"shared test data not found: {KIWIS}")
    return sorted(KIWIS.glob("*.jpg"))[:count]


def cli(*args: str, data: Path, roots: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEARCH_DATA_DIR": str(data), "SEARCH_DETECTOR": "none",
           "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(roots), **extra}
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def names(data: Path) -> dict[str, str]:
    with sqlite3.connect(data / "index.sqlite3") as conn:
        return dict(conn.execute("SELECT uri, sha256 FROM names").fetchall())


def _indexed_folder(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    root = tmp_path / "Kiwi"
    root.mkdir()
    files = []
    for photo in _photos(3):
        shutil.copy(photo, root / photo.name)
        files.append(root / photo.name)
    data = tmp_path / "data"
    done = cli("index", str(root), data=data, roots=tmp_path)
    assert done.returncode == 0, done.stderr
    assert set(names(data)) == {str(f) for f in files}
    return root, data, files


def test_prune_drops_a_file_replaced_by_a_dangling_link(tmp_path: Path) -> None:
    root, data, files = _indexed_folder(tmp_path)
    gone = files[0]
    gone.unlink()
    gone.symlink_to(tmp_path / "nowhere.jpg")  # the picture is gone; only a dead link is left
    done = cli("index", str(root), "--prune", data=data, roots=tmp_path)
    assert done.returncode == 0, done.stderr
    # observed: the name stays with the old vector (the dead link is listed, so never pruned)
    assert str(gone) not in names(data)


def test_reindex_drops_the_old_vector_of_a_file_replaced_by_a_truncated_copy(
    tmp_path: Path,
) -> None:
    root, data, files = _indexed_folder(tmp_path)
    target = files[0]
    old_sha = names(data)[str(target)]
    truncated = target.read_bytes()[:3000]
    target.unlink()
    target.write_bytes(truncated)  # now "corrupt or truncated": a failure, not that picture
    done = cli("index", str(root), "--prune", data=data, roots=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "truncated" in done.stderr
    # observed: the name still holds the old content (an empty file would have removed it)
    assert names(data).get(str(target)) != old_sha


def _indexed_with_the_old_embedder(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Two photos indexed with efficientnet-lite0: the folder, the data dir, and the setting
    that selects that embedder again."""
    root = tmp_path / "Kiwi"
    root.mkdir()
    for photo in _photos(2):
        shutil.copy(photo, root / photo.name)
    data = tmp_path / "data"
    old = {"SEARCH_EMBEDDER": "efficientnet-lite0"}
    assert cli("index", str(root), data=data, roots=tmp_path, **old).returncode == 0
    return root, data, old


def test_reset_recovers_from_an_embedder_switch(tmp_path: Path) -> None:
    _root, data, old = _indexed_with_the_old_embedder(tmp_path)
    refused = cli("stats", data=data, roots=tmp_path)
    assert refused.returncode != 0 and "reset --yes" in refused.stderr  # the advice given
    # following the advice with either embedder must leave a usable index for the new one
    cli("reset", "--yes", data=data, roots=tmp_path, **old)
    reset = cli("reset", "--yes", data=data, roots=tmp_path)
    assert reset.returncode == 0, reset.stderr
    stats = cli("stats", data=data, roots=tmp_path)
    assert stats.returncode == 0, stats.stderr


def test_reset_with_the_new_embedder_empties_an_index_of_the_old_one(tmp_path: Path) -> None:
    """The advice followed literally: reset with the new SEARCH_EMBEDDER (which cannot open
    the old index as an index), then index and search with it."""
    root, data, _old = _indexed_with_the_old_embedder(tmp_path)
    refused = cli("reset", data=data, roots=tmp_path)  # no --yes, no terminal: refused
    assert refused.returncode != 0 and "--yes" in refused.stderr
    reset = cli("reset", "--yes", data=data, roots=tmp_path)
    assert reset.returncode == 0, reset.stderr
    assert '"removed": 2' in reset.stdout
    again = cli("index", str(root), data=data, roots=tmp_path)
    assert again.returncode == 0, again.stderr
    found = cli("search", str(next(root.glob("*.jpg"))), "--object", "whole", data=data,
                roots=tmp_path)
    assert found.returncode == 0, found.stderr
    with sqlite3.connect(data / "index.sqlite3") as conn:
        model = conn.execute("SELECT value FROM info WHERE key = 'model'").fetchone()[0]
    assert model.startswith("efficientnet-lite0-lite2")


def test_a_fifo_named_like_an_image_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    """A FIFO (or device) would block a reader: it is refused without blocking, and reported
    when its name promises an image (left out silently it would look like a lost image); a
    link loop is reported as a loop."""
    root = tmp_path / "Kiwi"
    root.mkdir()
    shutil.copy(_photos(1)[0], root / "real.jpg")
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "pipe.txt")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    done = cli("index", str(root), data=tmp_path / "data", roots=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pipe.jpg" in done.stderr and "not a regular file" in done.stderr
    assert "pipe.txt" not in done.stderr
    assert "loop.jpg" in done.stderr and "a loop" in done.stderr
    assert set(names(tmp_path / "data")) == {str(root / "real.jpg")}
