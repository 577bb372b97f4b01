"""The embedded index: de-duplication, exact and HNSW search, filters, durability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search_core.errors import ConfigError
from search_core.local_index import LocalIndex
from search_core.types import ItemMeta


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _items(n: int, prefix: str = "img") -> list[ItemMeta]:
    return [
        ItemMeta(
            uri=f"/c/{'ab'[i % 2]}/{prefix}{i}.jpg", sha256=f"{prefix}{i:04d}", label="ab"[i % 2]
        )
        for i in range(n)
    ]


def test_add_search_dedupe_delete_reset(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, dimension=8, model_id="m")
    vectors = _unit(np.random.default_rng(0).normal(size=(10, 8)))
    assert index.add(vectors, _items(10)) == 10
    assert index.add(vectors, _items(10)) == 0  # same hashes: nothing new
    hits = index.search(vectors[3], 3)
    assert hits[0].item.sha256 == "img0003" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    only_b = index.search(vectors[3], 10, {"label": "b"})
    assert only_b and all(h.item.label == "b" for h in only_b)
    assert index.known_hashes(["img0001", "nope"]) == {"img0001"}
    assert index.delete(["img0003", "nope"]) == 1
    assert index.search(vectors[3], 1)[0].item.sha256 != "img0003"
    index.reset()
    assert index.count() == 0 and index.search(vectors[0], 5) == []


def test_persists_and_other_connections_see_new_items(tmp_path: Path) -> None:
    writer = LocalIndex(tmp_path, dimension=4, model_id="m")
    reader = LocalIndex(tmp_path, dimension=4, model_id="m")
    assert reader.search(np.eye(4, dtype=np.float32)[0], 1) == []
    writer.add(np.eye(4, dtype=np.float32), _items(4))
    assert reader.search(np.eye(4, dtype=np.float32)[2], 1)[0].item.sha256 == "img0002"
    assert LocalIndex(tmp_path, dimension=4, model_id="m").count() == 4


def test_refuses_an_index_built_by_another_model(tmp_path: Path) -> None:
    """Vectors of another model are never mixed in; an empty index (after ``wipe``, the reset
    that works whatever model built it) takes the new model."""
    LocalIndex(tmp_path, dimension=4, model_id="m").add(_unit(np.eye(4)[:2]), _items(2))
    with pytest.raises(ConfigError, match="built with m"):
        LocalIndex(tmp_path, dimension=8, model_id="other")
    assert LocalIndex.wipe(tmp_path) == 2
    adopted = LocalIndex(tmp_path, dimension=8, model_id="other")
    assert adopted.count() == 0 and adopted.stats()["model"] == "other"
    adopted.add(_unit(np.eye(8)[:1]), _items(1))
    with pytest.raises(ConfigError, match="built with other"):
        LocalIndex(tmp_path, dimension=4, model_id="m")


def test_hnsw_above_the_threshold_finds_the_true_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32))
    data = _unit(centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32)))
    exact = LocalIndex(tmp_path / "exact", dimension=32, model_id="m", hnsw_threshold=10**9)
    approx = LocalIndex(tmp_path / "hnsw", dimension=32, model_id="m", hnsw_threshold=100)
    exact.add(data, _items(3000))
    approx.add(data, _items(3000))
    assert approx.stats()["search"] == "faiss-hnsw"
    found = 0
    for query in data[:50]:
        truth = {h.item.sha256 for h in exact.search(query, 10)}
        found += len(truth & {h.item.sha256 for h in approx.search(query, 10)})
    assert found / 500 >= 0.95


def test_finalize_builds_the_graph_once_and_clears_dead_writers_temps(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    index = LocalIndex(tmp_path, dimension=16, model_id="m", hnsw_threshold=50)
    index.add(_unit(rng.normal(size=(200, 16))), _items(200))
    dead = tmp_path / "hnsw.npz.999999999.deadbeef.tmp"  # a writer killed mid-save
    dead.write_bytes(b"half a graph")
    index.finalize()
    graph = tmp_path / "hnsw.npz"
    assert graph.exists() and not dead.exists()
    saved = graph.stat().st_mtime_ns
    fresh = LocalIndex(tmp_path, dimension=16, model_id="m", hnsw_threshold=50)
    fresh.finalize()  # nothing changed: the saved graph is current, not loaded nor rewritten
    assert graph.stat().st_mtime_ns == saved
    fresh.remove(["/c/a/img0.jpg"])  # a deletion invalidates it: the next finalize rebuilds
    fresh.finalize()
    assert graph.stat().st_mtime_ns != saved
    assert fresh.stats()["graph"] == "ready"
