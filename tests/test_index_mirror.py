"""The index is a function of its source (issue 10): after renames, copies, deletions, swapped
contents, in-place edits that keep the modification time and a sub-folder indexed on its own,
one ``index SOURCE --prune`` run leaves exactly the current files -- every current file's
current content under its current name, no dead name, no stale content.

Real photos, real files, the real CLI in subprocesses; after each step the index is compared
with the folder (count, names, contents, and each name found by searching its own vector).
Run with ``-s`` to see the table of index vs folder before and after each step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import GROCERY, REPO

APPLES = GROCERY / "train" / "Fruit" / "Apple"


def _photos(count: int) -> list[Path]:
    if not APPLES.is_dir():
        pytest.skip(f"shared test data not found: {APPLES}")
    return sorted(APPLES.rglob("*.jpg"))[:count]


def cli(*args: str, data: Path, roots: Path, batch: int = 4) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEARCH_DATA_DIR": str(data), "SEARCH_DETECTOR": "none",
           "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(roots),
           "SEARCH_BATCH_SIZE": str(batch)}
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def folder_state(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def index_state(data: Path) -> tuple[dict[str, str], set[str]]:
    """(names: uri -> sha256, contents: stored sha256s), read straight from the database."""
    with sqlite3.connect(data / "index.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        names = dict(conn.execute("SELECT uri, sha256 FROM names").fetchall())
        contents = {row[0] for row in conn.execute("SELECT sha256 FROM contents")}
    return names, contents


def compare(root: Path, data: Path) -> dict[str, int]:
    """Index vs folder in numbers: files, names, contents, and what does not match."""
    files = folder_state(root)
    names, contents = index_state(data)
    return {
        "files": len(files),
        "names": len(names),
        "contents": len(contents),
        "missing": sum(1 for uri in files if uri not in names),
        "dead": sum(1 for uri in names if uri not in files),
        "stale": sum(1 for uri, sha in names.items() if uri in files and files[uri] != sha)
        + len(contents - set(files.values())),
    }


def assert_mirrors(root: Path, data: Path) -> None:
    files = folder_state(root)
    names, contents = index_state(data)
    assert names == files  # every current name, with its current content; no dead name
    assert contents == set(files.values())  # no stale content, every content once
    # and each name is found by its own content (the search path, not only the tables)
    from search_core.config import Settings
    from search_core.factory import build_embedder
    from search_core.local_index import LocalIndex

    # the index the CLI wrote: its embedder's dimension and id (which includes the view), from
    # the same environment the CLI ran with
    embedder = build_embedder(Settings.from_env())
    index = LocalIndex(data, dimension=embedder.dimension, model_id=embedder.model_id)
    matrix, items = index.vectors()
    assert sorted(item.uri for item in items) == sorted(files)
    for vector, item in zip(matrix, items, strict=True):
        found = {hit.uri for hit in index.search(vector, len(items))
                 if hit.score > 0.9999}
        assert item.uri in found


def test_every_step_leaves_the_index_equal_to_the_folder(tmp_path: Path) -> None:
    photos = _photos(16)
    root = tmp_path / "c8"
    (root / "sub").mkdir(parents=True)
    for photo in photos[:9]:
        shutil.copy(photo, root / photo.name)
    for photo in photos[9:12]:
        shutil.copy(photo, root / "sub" / photo.name)
    spare = photos[12:]
    data = tmp_path / "data"
    table: list[tuple[str, dict[str, int], dict[str, int]]] = []

    def run(step: str, *args: str) -> dict:
        before = compare(root, data) if (data / "index.sqlite3").exists() else {}
        done = cli("index", *args, data=data, roots=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "error" not in done.stderr, done.stderr
        after = compare(root, data)
        table.append((step, before, after))
        assert_mirrors(root, data)
        summary = last_json(done.stdout)
        counted = (summary["indexed"] + summary["unchanged"] + summary["duplicates"]
                   + summary["by_other_run"] + summary["not_images"] + summary["failed"])
        assert counted == summary["total"], summary
        return summary

    files = sorted(p for p in root.glob("*.jpg"))
    first = run("initial index", str(root))
    assert first["indexed"] == 12

    files[0].rename(root / "renamed.jpg")  # rename a -> b
    summary = run("rename + --prune", str(root), "--prune")
    assert summary["indexed"] == 0 and summary["duplicates"] == 1 and summary["pruned"] == 1

    shutil.copy(files[1], root / "copy.jpg")  # a second name for one content
    summary = run("copy", str(root))
    assert summary["indexed"] == 0 and summary["duplicates"] == 1

    files[1].unlink()  # one of two names sharing a content
    summary = run("delete one of two names + --prune", str(root), "--prune")
    assert summary["pruned"] == 1

    a, b = files[2], files[3]  # swap the contents of two files
    swap = root / "swap.tmp"
    a.rename(swap)
    b.rename(a)
    swap.rename(b)
    summary = run("swap two contents (no --prune)", str(root))
    assert summary["indexed"] == 0 and summary["duplicates"] == 2

    edited = files[4]  # an edit that keeps the modification time (rsync -t, cp --preserve)
    stat = edited.stat()
    edited.write_bytes(spare[0].read_bytes())
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_mtime_ns == stat.st_mtime_ns
    summary = run("in-place edit, mtime kept", str(root))
    assert summary["indexed"] == 1 and summary["replaced"] == 1

    shutil.copy(spare[1], root / "sub" / "new-in-sub.jpg")  # a sub-folder indexed on its own
    summary = run("index sub-folder alone", str(root / "sub"))
    assert summary["indexed"] == 1
    victim = sorted((root / "sub").glob("*.jpg"))[0]
    victim.unlink()
    summary = run("delete in sub, prune parent", str(root), "--prune")
    assert summary["pruned"] == 1

    sibling = tmp_path / "c80"  # a folder whose name starts like the source: not pruned
    sibling.mkdir()
    shutil.copy(spare[2], sibling / "other.jpg")
    assert cli("index", str(sibling), data=data, roots=tmp_path).returncode == 0
    done = cli("index", str(root), "--prune", data=data, roots=tmp_path)
    assert done.returncode == 0 and last_json(done.stdout)["pruned"] == 0
    names, _ = index_state(data)
    assert str(sibling / "other.jpg") in names

    print("\nstep | before: files/names/contents missing dead stale | after: same")
    for step, before, after in table:
        def fmt(state: dict[str, int]) -> str:
            if not state:
                return "(no index)"
            return (f"{state['files']}/{state['names']}/{state['contents']} "
                    f"{state['missing']} {state['dead']} {state['stale']}")

        print(f"{step} | {fmt(before)} | {fmt(after)}")


def test_an_old_database_is_migrated_on_open(tmp_path: Path) -> None:
    """A v1 database (one ``items`` table, sha256 UNIQUE with one uri) opens as v2 with every
    item, its row ids (so a saved graph stays valid) and a uri stored twice reduced to the
    newest row."""
    from search_core.local_index import LocalIndex
    from search_core.types import ItemMeta

    data = tmp_path / "v1"
    data.mkdir()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with sqlite3.connect(data / "index.sqlite3") as conn:
        conn.executescript("""
            CREATE TABLE items (row INTEGER PRIMARY KEY AUTOINCREMENT,
                sha256 TEXT NOT NULL UNIQUE, uri TEXT NOT NULL, meta TEXT NOT NULL,
                vector BLOB NOT NULL);
            CREATE INDEX items_uri ON items(uri);
            CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """)
        conn.executemany("INSERT INTO info VALUES (?, ?)", [
            ("model", "m"), ("dimension", "4"), ("uuid", "abc"), ("generation", "0")])
        rows = [("/c/a.jpg", "s1"), ("/c/b.jpg", "s2"), ("/c/a.jpg", "s3")]  # a.jpg edited
        for (uri, sha), vector in zip(rows, vectors, strict=True):
            meta = json.dumps(ItemMeta(uri=uri, sha256=sha).to_dict())
            conn.execute("INSERT INTO items(sha256, uri, meta, vector) VALUES (?, ?, ?, ?)",
                         (sha, uri, meta, vector.tobytes()))
    index = LocalIndex(data, dimension=4, model_id="m")
    assert {i.uri: i.sha256 for i in index.items()} == {"/c/a.jpg": "s3", "/c/b.jpg": "s2"}
    assert index.search(vectors[2], 1)[0].uri == "/c/a.jpg"
    assert index.stats()["contents"] == 3  # s1 stays until a prune or a rerun drops it
    with sqlite3.connect(data / "index.sqlite3") as conn:
        assert conn.execute("SELECT value FROM info WHERE key = 'schema'").fetchone() == ("2",)
        assert conn.execute("SELECT uri FROM items ORDER BY row").fetchall() == [
            ("/c/b.jpg",), ("/c/a.jpg",)]  # the compatibility view
    assert LocalIndex(data, dimension=4, model_id="m").count() == 2  # reopening is a no-op


def test_names_and_contents_in_the_local_index(tmp_path: Path) -> None:
    from search_core.local_index import LocalIndex
    from search_core.types import ItemMeta

    index = LocalIndex(tmp_path, dimension=4, model_id="m")
    eye = np.eye(4, dtype=np.float32)
    assert index.add(eye[:2], [ItemMeta("/a", "s0"), ItemMeta("/b", "s1")]) == 2
    assert index.link([ItemMeta("/c", "s0"), ItemMeta("/d", "gone")]) == [ItemMeta("/d", "gone")]
    assert index.count() == 3 and index.stats()["contents"] == 2
    assert {h.uri for h in index.search(eye[0], 5) if h.score > 0.99} == {"/a", "/c"}
    assert index.remove(["/a"]) == 1 and index.known_hashes(["s0"]) == {"s0"}  # /c has it
    assert index.remove(["/c"]) == 1 and index.known_hashes(["s0"]) == set()  # last name
    assert index.add(eye[2:3], [ItemMeta("/b", "s2")]) == 1  # /b edited
    assert index.known_hashes(["s1", "s2"]) == {"s1", "s2"}  # s1 kept for a swap partner...
    index.finalize()
    assert index.known_hashes(["s1", "s2"]) == {"s2"}  # ...until the run ends
    matrix, items = index.vectors()
    assert matrix.shape == (1, 4) and [i.uri for i in items] == ["/b"]
    assert np.allclose(matrix[0], eye[2])


def test_prune_scope_is_a_path_boundary_for_folders_and_a_prefix_on_s3() -> None:
    from search_core.indexing import in_scope

    assert in_scope("/c8/sub/a.jpg", "/c8") and in_scope("/c8/a.jpg", "/c8/")
    assert not in_scope("/c80/a.jpg", "/c8") and not in_scope("/c8", "/c8/sub")
    assert in_scope("s3://b/photos/2024/a.jpg", "s3://b/photos/")
    assert in_scope("s3://b/photos-old/a.jpg", "s3://b/photos")  # S3 lists it under "photos"
    assert not in_scope("s3://other/photos/a.jpg", "s3://b/photos")
    assert in_scope("file:///c8/%FF.jpg", "/c8")  # a non-UTF-8 name under the folder


def test_stages_plan_and_triage_alone(tmp_path: Path) -> None:
    """The plan stage keeps only files whose version moved; triage sorts prepared files into
    the batch (embed a new content, link a copy, refresh a touched file)."""
    from search_core.indexing import Batch, Plan, Prepared, plan_run, triage
    from search_core.local_index import LocalIndex
    from search_core.sources import FolderSource
    from search_core.types import ItemMeta

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"a")
    (folder / "b.jpg").write_bytes(b"b")
    source = FolderSource(folder)
    entries = {Path(e.uri).name: e for e in source.list()}
    index = LocalIndex(tmp_path / "data", dimension=4, model_id="m")
    stored = ItemMeta(str(folder / "a.jpg"), "sa", extra={"version": entries["a.jpg"].version})
    index.add(np.eye(4, dtype=np.float32)[:1], [stored])
    plan = plan_run(source, index)
    assert plan.unchanged == 1 and [Path(e.uri).name for e in plan.todo] == ["b.jpg"]
    os.utime(folder / "a.jpg", ns=(1, 1))  # touched: read again
    assert len(plan_run(source, index).todo) == 2

    batch, seen = Batch(), set()
    plan = Plan(entries=[], todo=[], existing={stored.uri: stored}, known={"sa"}, unchanged=0)
    touched = Prepared(entries["a.jpg"], meta=ItemMeta(stored.uri, "sa"))
    copy = Prepared(entries["b.jpg"], meta=ItemMeta(str(folder / "b.jpg"), "sa"))
    new = Prepared(entries["b.jpg"], meta=ItemMeta(str(folder / "c.jpg"), "sc"))
    broken = Prepared(entries["a.jpg"], error="not an image: a PDF document", gone=True)
    passing = Prepared(entries["a.jpg"], error="cannot read: Input/output error")
    assert [triage(p, plan, seen, batch) for p in (touched, copy, new, passing, broken)] == [
        "", "", "", "failed", "failed"]
    assert [counter for _, counter in batch.link] == ["unchanged", "duplicates"]
    # a read error may pass (the picture is kept); "not an image any more" drops it
    assert batch.embed == [new] and batch.stale == [stored.uri]
