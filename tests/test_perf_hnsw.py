"""The local index's approximate search: recall on clustered data through the projected HNSW
graph, and the saved graph being reused, extended, or discarded exactly when it should be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search_core.local_index import AnnGraph, LocalIndex
from search_core.types import ItemMeta

DIM = 96


def clustered(n: int, seed: int, *, clusters: int = 40, rank: int = 8) -> np.ndarray:
    """Unit vectors near low-rank cluster subspaces, like real embeddings (uniformly random
    vectors have no neighbours worth the name and make every graph look bad)."""
    rng = np.random.default_rng(1000)  # the same clusters for every seed
    centres = rng.normal(size=(clusters, DIM))
    bases = rng.normal(size=(clusters, rank, DIM)) / np.sqrt(rank)
    local = np.random.default_rng(seed)
    labels = local.integers(0, clusters, n)
    spread = np.einsum("nr,nrd->nd", local.normal(size=(n, rank)), bases[labels])
    rows = centres[labels] + spread + 0.1 * local.normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def items(n: int, start: int = 0) -> list[ItemMeta]:
    return [ItemMeta(uri=f"/c/{i}.jpg", sha256=f"{i:08d}") for i in range(start, start + n)]


def make_index(folder: Path) -> LocalIndex:
    # hnsw_dim < DIM exercises the projection path used for 1280-d embeddings
    return LocalIndex(folder, dimension=DIM, model_id="m", hnsw_threshold=500, hnsw_dim=32)


def recall_at_10(index: LocalIndex, data: np.ndarray, queries: np.ndarray) -> float:
    found = 0
    for query in queries:
        truth = set(np.argsort(-(data @ query))[:10].tolist())
        hits = index.search(query, 10)
        found += len(truth & {int(h.item.sha256) for h in hits})
    return found / (10 * len(queries))


def test_projected_hnsw_recall_on_clustered_data(tmp_path: Path) -> None:
    data = clustered(4000, seed=1)
    index = make_index(tmp_path)
    index.add(data, items(4000))
    assert index.build_graph() is True
    assert index.stats()["graph"] == "ready"
    assert recall_at_10(index, data, clustered(100, seed=2)) >= 0.95


def test_small_index_needs_no_graph(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    index.add(clustered(100, seed=1), items(100))
    assert index.build_graph() is False
    assert not (tmp_path / "hnsw.npz").exists()


def test_saved_graph_is_reused_then_extended_then_dropped_after_a_delete(tmp_path: Path) -> None:
    data = clustered(3000, seed=3)
    first = make_index(tmp_path)
    first.add(data[:2000], items(2000))
    first.build_graph()
    graph_file = tmp_path / "hnsw.npz"
    assert graph_file.exists()

    # A restart: the saved graph matches the database, so it is loaded, not rebuilt.
    second = make_index(tmp_path)
    second.add(data[2000:], items(1000, start=2000))  # rows appended after it was saved
    key = second._graph_key()
    rows = np.arange(1, 3001)
    loaded = AnnGraph.load(graph_file, key, rows)
    assert loaded is not None and loaded.ntotal == 2000
    second.build_graph()  # extends the saved graph with the 1,000 new rows and saves it
    assert AnnGraph.load(graph_file, key, rows).ntotal == 3000
    assert recall_at_10(second, data, clustered(50, seed=4)) >= 0.95

    # A deletion shifts positions: the saved graph no longer applies and is rebuilt.
    assert second.delete(["00000005"]) == 1
    assert AnnGraph.load(graph_file, second._graph_key(), rows[:-1]) is None
    second.build_graph()
    hits = second.search(data[5], 5)
    assert "00000005" not in {h.item.sha256 for h in hits}
    assert hits[0].score == pytest.approx(float(np.sort(data[np.arange(3000) != 5] @ data[5])[-1]),
                                          abs=1e-5)


def test_a_corrupt_graph_file_is_ignored(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    data = clustered(800, seed=5)
    index.add(data, items(800))
    (tmp_path / "hnsw.npz").write_bytes(b"not a graph")
    assert index.build_graph() is True  # rebuilt and saved over the broken file
    assert AnnGraph.load(tmp_path / "hnsw.npz", index._graph_key(), np.arange(1, 801))


def test_appends_keep_search_consistent_with_the_database(tmp_path: Path) -> None:
    """In-memory appends (amortised buffer growth) give the same answers as a fresh load."""
    data = clustered(1500, seed=6)
    live = LocalIndex(tmp_path, dimension=DIM, model_id="m", hnsw_threshold=10**9)
    live.search(data[0], 1)  # loads the (empty) matrix, so later adds append in memory
    for start in range(0, 1500, 100):
        live.add(data[start : start + 100], items(100, start=start))
    fresh = LocalIndex(tmp_path, dimension=DIM, model_id="m", hnsw_threshold=10**9)
    for query in data[::150]:
        assert [h.uri for h in live.search(query, 5)] == [h.uri for h in fresh.search(query, 5)]
