"""Approximate search at a million vectors: recall@10 against exact search, latency, build
time and memory, through the same graph code the local index uses (search_core.local_index).

    python bench/ann.py              # 1,000,000 x 1280 (about 10-15 min and ~9 GB RAM on 2 cores)
    python bench/ann.py --quick      # 50,000 vectors (< 2 min)
    OPENSEARCH_URL=http://localhost:9200 python bench/ann.py --quick   # also OpenSearch k-NN

The vectors are synthetic but CLUSTERED the way image embeddings are: each point is a cluster
centre plus a random mix of that cluster's few principal directions plus a little isotropic
noise, normalised. (Uniformly random unit vectors in 1280-d are all nearly orthogonal, have no
meaningful nearest neighbours, and make every ANN method look bad.) Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import current_rss_mb, emit, machine, percentile, table

from search_core.local_index import RERANK_MIN, AnnGraph

DIM = 1280


def clustered(n: int, *, seed: int, clusters: int, rank: int = 24,
              noise: float = 0.25, dim: int = DIM) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` low-rank cluster subspaces (float32)."""
    structure = np.random.default_rng(12345)  # same clusters for corpus and queries
    centres = structure.standard_normal((clusters, dim), dtype=np.float32)
    bases = structure.standard_normal((clusters, rank, dim), dtype=np.float32) / np.sqrt(rank)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        part = labels[start : start + 50_000]
        block = centres[part] + noise * rng.standard_normal((len(part), dim), dtype=np.float32)
        coeffs = rng.standard_normal((len(part), rank), dtype=np.float32)
        for cluster in np.unique(part):
            rows = np.nonzero(part == cluster)[0]
            block[rows] += coeffs[rows] @ bases[cluster]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(part)] = block
    return out


def exact_top10(matrix: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best_scores = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 10), dtype=np.int64)
    for start in range(0, len(matrix), 100_000):
        scores = queries @ matrix[start : start + 100_000].T
        ids = np.argpartition(-scores, 9, axis=1)[:, :10] + start
        merged_scores = np.concatenate([best_scores, np.take_along_axis(
            scores, ids - start, axis=1)], axis=1)
        merged_ids = np.concatenate([best_ids, ids], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_ids = np.take_along_axis(merged_ids, keep, axis=1)
    return best_ids


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(t.tolist())) / 10
                          for f, t in zip(found, truth, strict=True)]))


def time_queries(fn: Any, queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    found, millis = [], []
    for query in queries:
        began = time.perf_counter()
        ids = fn(query)
        millis.append((time.perf_counter() - began) * 1000)
        found.append(ids)
    return found, millis


def opensearch_run(url: str, matrix: np.ndarray, queries: np.ndarray,
                   truth: np.ndarray) -> dict[str, Any]:
    """The same measurement against an OpenSearch k-NN index (faiss HNSW, inner product)."""
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch(url, timeout=120)
    name = f"bench-ann-{os.getpid()}"
    client.indices.create(name, body={
        "settings": {"index": {"knn": True, "number_of_replicas": 0, "refresh_interval": "-1"}},
        "mappings": {"properties": {"v": {
            "type": "knn_vector", "dimension": matrix.shape[1], "method": {
            "name": "hnsw", "engine": "faiss", "space_type": "innerproduct",
            "parameters": {"m": 16, "ef_construction": 128}}}}},
    })
    try:
        began = time.perf_counter()
        helpers.bulk(client, ({"_index": name, "_id": str(i), "v": row.tolist()}
                              for i, row in enumerate(matrix)), chunk_size=500)
        client.indices.refresh(name)
        ingest_s = time.perf_counter() - began

        def search(query: np.ndarray) -> np.ndarray:
            body = {"size": 10, "_source": False,
                    "query": {"knn": {"v": {"vector": query.tolist(), "k": 10}}}}
            hits = client.search(index=name, body=body)["hits"]["hits"]
            return np.array([int(h["_id"]) for h in hits])

        search(queries[0])
        found, millis = time_queries(search, queries)
        return {"opensearch_recall@10": round(recall(found, truth), 4),
                "opensearch_ms_p50": round(percentile(millis, 50), 2),
                "opensearch_ms_p95": round(percentile(millis, 95), 2),
                "opensearch_ingest_s": round(ingest_s, 1)}
    finally:
        client.indices.delete(name, ignore_unavailable=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50,000 vectors")
    parser.add_argument("--n", type=int, default=None, help="number of vectors")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256, help="projected dimension of the graph")
    parser.add_argument("--vector-dim", type=int, default=DIM,
                        help="stored vector dimension (2560 = the default pair embedder; "
                        "1M x 2560 needs ~18 GB RAM)")
    args = parser.parse_args()
    n = args.n or (50_000 if args.quick else 1_000_000)
    clusters = max(50, n // 500)

    rss0 = current_rss_mb()
    began = time.perf_counter()
    matrix = clustered(n, seed=1, clusters=clusters, dim=args.vector_dim)
    queries = clustered(args.queries, seed=2, clusters=clusters, dim=args.vector_dim)
    gen_s = time.perf_counter() - began
    rss_matrix = current_rss_mb()
    truth = exact_top10(matrix, queries)
    print(f"{n:,} clustered vectors ({clusters} clusters), dim {args.vector_dim}, "
          f"generated in {gen_s:.0f} s")

    exact_found, exact_ms = time_queries(
        lambda q: np.argpartition(-(matrix @ q), 9)[:10], queries[:50])

    rows = np.arange(1, n + 1, dtype=np.int64)
    key = {"uuid": "bench", "generation": 0}
    began = time.perf_counter()
    graph = AnnGraph.build(matrix, rows, key, m=args.m, ef_construction=args.ef_construction,
                           max_dim=args.dim)
    build_s = time.perf_counter() - began
    rss_graph = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as tmp:
        path = Path(tmp) / "hnsw.npz"
        began = time.perf_counter()
        graph.save(path)
        save_s = time.perf_counter() - began
        graph_mb = path.stat().st_size / 1e6
        began = time.perf_counter()
        loaded = AnnGraph.load(path, key, rows)
        load_s = time.perf_counter() - began
        assert loaded is not None and loaded.ntotal == n
        del loaded

    sweep = []
    for candidates in (50, 100, RERANK_MIN, 400):
        found, millis = time_queries(
            lambda q, c=candidates: graph.search(q, 10, matrix, candidates=c)[0], queries)
        sweep.append({"candidates": candidates, "ef_search": max(128, candidates),
                      "recall@10": round(recall(found, truth), 4),
                      "ms_p50": round(percentile(millis, 50), 3),
                      "ms_p95": round(percentile(millis, 95), 3)})
    best = sweep[2]  # the product default: 200 candidates (efSearch 200), exact re-rank
    energy = None
    if graph.projection is not None:
        sample = matrix[:: max(1, n // 20_000)]
        energy = float(np.linalg.norm(sample @ graph.projection) ** 2 / np.linalg.norm(sample) ** 2)

    print(table([[s["candidates"], s["ef_search"], s["recall@10"], s["ms_p50"], s["ms_p95"]]
                 for s in sweep], ["re-ranked", "efSearch", "recall@10", "ms p50", "ms p95"]))
    print(table([
        ["vectors", f"{n:,}"], ["graph", f"HNSW M={args.m} efC={args.ef_construction} on a "
                                f"{args.dim}-d projection, exact re-rank of {RERANK_MIN}"],
        ["build s", round(build_s, 1)], ["save s / load s", f"{save_s:.1f} / {load_s:.1f}"],
        ["graph file MB", round(graph_mb, 1)],
        ["matrix MB (float32)", round(matrix.nbytes / 1e6, 1)],
        ["RSS MB: start / +matrix / +graph", f"{rss0:.0f} / {rss_matrix:.0f} / {rss_graph:.0f}"],
        ["exact search ms p50 (NumPy)", round(percentile(exact_ms, 50), 2)],
        ["projection energy kept", round(energy, 3) if energy is not None else "n/a"],
    ], ["what", "value"]))
    payload: dict[str, Any] = {
        "bench": "ann", "vectors": n, "dim": args.vector_dim, "clusters": clusters,
        "queries": len(queries),
        "m": args.m, "ef_construction": args.ef_construction, "graph_dim": args.dim,
        "recall@10": best["recall@10"], "ms_p50": best["ms_p50"], "ms_p95": best["ms_p95"],
        "build_s": round(build_s, 1), "save_s": round(save_s, 1), "load_s": round(load_s, 1),
        "graph_file_mb": round(graph_mb, 1), "matrix_mb": round(matrix.nbytes / 1e6, 1),
        "rss_mb": round(rss_graph, 0), "graph_rss_mb": round(rss_graph - rss_matrix, 0),
        "exact_ms_p50": round(percentile(exact_ms, 50), 2),
        "exact_recall": round(recall(exact_found, truth[:50]), 4),
        "projection_energy": round(energy, 4) if energy is not None else None,
        "sweep": sweep, "machine": machine(),
    }
    url = os.environ.get("OPENSEARCH_URL")
    if url:
        payload.update(opensearch_run(url, matrix, queries, truth))
    emit(payload)


if __name__ == "__main__":
    main()
