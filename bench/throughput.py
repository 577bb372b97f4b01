"""Served searches/s through the REST API next to the pipeline's own searches/s, same run.

    python bench/throughput.py                    # 4, 8, 16 clients, 20 s each
    python bench/throughput.py --fill 10000       # the same on a 10k-item index
    python bench/throughput.py --clients 8 --seconds 10

What it does: indexes the sample catalogue (CLI) into a temporary data dir (``--fill N`` then
adds synthetic items up to N: perturbed copies of the real vectors pointing at real files, so
search cost is that of an N-item index), starts ``python app.py`` on it and
1. measures the pipeline alone, in this process, on the same query photos (GroceryStore val,
   296 distinct photos so the per-image analysis cache never hits): analyse + search, one
   thread, then two;
2. for each client count, a light asyncio httpx load generator posts the photos to
   ``POST /api/search`` (object=auto, k=10) for a fixed time: searches/s, p50, p95, errors,
   and the server's resident memory;
3. one search at a time, p50 of the REST route next to the Gradio route (``/analyze`` then
   ``/search`` through gradio_client, what the browser does).
The machine load (1-min average) is printed with every figure: the machine may be shared.
Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GROCERY, REPO, emit, image_files, machine, percentile, table
from load import AppServer, run_cli


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def fill_index(data_dir: Path, target: int) -> int:
    """Adds synthetic items until the local index holds ``target`` (see module docstring)."""
    from search_core.config import Settings
    from search_core.factory import build_embedder
    from search_core.local_index import LocalIndex
    from search_core.types import ItemMeta

    embedder = build_embedder(Settings())
    index = LocalIndex(data_dir, dimension=embedder.dimension, model_id=embedder.model_id)
    real = list(index.items())
    base = np.stack([index.vector_of(i.sha256) for i in real])
    rng = np.random.default_rng(0)
    missing = target - len(real)
    batch = 2000
    for start in range(0, max(missing, 0), batch):
        n = min(batch, missing - start)
        picks = rng.integers(0, len(real), n)
        vectors = base[picks] + 0.35 * rng.normal(size=(n, base.shape[1])).astype(np.float32) * (
            base[picks].std(axis=1, keepdims=True)
        )
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [
            ItemMeta(
                uri=real[p].uri,
                sha256=f"{start + k:064x}",
                label=real[p].label,
                width=real[p].width,
                height=real[p].height,
                model=embedder.model_id,
                dimension=embedder.dimension,
                extra={**real[p].extra, "synthetic": True},
            )
            for k, p in enumerate(picks.tolist())
        ]
        index.add(vectors.astype(np.float32), items)
    return index.count()


def pipeline_rate(photos: list[bytes], threads: int, seconds: float) -> dict[str, Any]:
    """Analyse + search in this process (a fresh pipeline: no warm analysis cache)."""
    from search_core.factory import build_pipeline

    pipeline = build_pipeline()
    pipeline.warm_up()
    pipeline.search(pipeline.analyze(photos[0]), k=10)
    done: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    def worker() -> None:
        while time.monotonic() < stop:
            with lock:
                n = next(counter)
            started = time.perf_counter()
            pipeline.search(pipeline.analyze(photos[n % len(photos)]), k=10)
            with lock:
                done.append(time.perf_counter() - started)

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "threads": threads,
        "searches_per_s": round(len(done) / elapsed, 2),
        "p50_ms": round(1000 * percentile(done, 50), 1),
        "load": load_avg(),
    }


async def served_rate(
    url: str, photos: list[bytes], clients: int, seconds: float, server: AppServer
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    rss: list[float] = []
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            photo = photos[next(counter) % len(photos)]
            started = time.perf_counter()
            try:
                response = await http.post(
                    f"{url}/api/search", files={"image": ("q.jpg", photo)}, data={"k": "10"}
                )
                if response.status_code != 200 or not response.json()["results"]:
                    errors.append(f"{response.status_code} {response.text[:80]}")
                    continue
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - started)

    async def sample_memory() -> None:
        while time.monotonic() < stop:
            rss.append(server.rss_mb())
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.monotonic()
        await asyncio.gather(sample_memory(), *(client(http) for _ in range(clients)))
        elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "searches_per_s": round(len(latencies) / elapsed, 2),
        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "rss_max_mb": round(max(rss), 1) if rss else 0.0,
        "load": load_avg(),
    }


def single_search_p50(url: str, photos: list[bytes], paths: list[Path], n: int) -> dict[str, Any]:
    """One search at a time: the REST route and the Gradio route (/analyze + /search)."""
    import httpx
    from gradio_client import Client, handle_file

    rest: list[float] = []
    with httpx.Client(timeout=120) as http:
        for i in range(n):
            started = time.perf_counter()
            http.post(
                f"{url}/api/search",
                files={"image": ("q.jpg", photos[i % len(photos)])},
                data={"k": "10"},
            ).raise_for_status()
            rest.append(time.perf_counter() - started)
    client = Client(url + "/", verbose=False)
    gradio: list[float] = []
    for i in range(n):
        path = handle_file(str(paths[(i + n) % len(paths)]))
        started = time.perf_counter()
        _image, choice, _status = client.predict(path, api_name="/analyze")
        value = choice.get("value", "whole") if isinstance(choice, dict) else "whole"
        client.predict(path, value, 10, "", 0, 0, 100, 100, api_name="/search")
        gradio.append(time.perf_counter() - started)
    return {
        "rest_p50_ms": round(1000 * percentile(rest, 50), 1),
        "gradio_p50_ms": round(1000 * percentile(gradio, 50), 1),
        "load": load_avg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fill", type=int, default=0, help="grow the index to N items")
    parser.add_argument("--single", type=int, default=20, help="searches for the p50 compare")
    args = parser.parse_args()
    paths = image_files(GROCERY / "val")
    photos = [p.read_bytes() for p in paths]
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    server = AppServer(work)
    os.environ["SEARCH_DATA_DIR"] = server.env["SEARCH_DATA_DIR"]
    os.environ["SEARCH_SAMPLE_CATALOGUE"] = "off"
    indexed = run_cli(["index", str(REPO / "samples" / "catalogue")], server.env)
    if indexed.returncode != 0:
        print(indexed.stderr, file=sys.stderr)
        return 1
    count = fill_index(Path(server.env["SEARCH_DATA_DIR"]), args.fill) if args.fill else 324
    print(f"index: {count} items; load {load_avg()} at start ({len(photos)} query photos)")
    alone = [pipeline_rate(photos, t, args.seconds) for t in (1, 2)]
    best = max(r["searches_per_s"] for r in alone)
    print(
        table(
            [[r["threads"], r["searches_per_s"], r["p50_ms"], r["load"]] for r in alone],
            ["pipeline threads", "searches/s", "p50 ms", "load"],
        )
    )
    server.start()
    try:
        served = [
            asyncio.run(served_rate(server.url, photos, c, args.seconds, server))
            for c in args.clients
        ]
        single = single_search_p50(server.url, photos, paths, args.single)
        hwm = server.hwm_mb()
    finally:
        server.stop()
    again = pipeline_rate(photos, 1, args.seconds)  # the machine may have changed meanwhile
    print(
        table(
            [
                [
                    r["clients"],
                    r["searches_per_s"],
                    f"{r['searches_per_s'] / best:.2f}",
                    r["p50_s"],
                    r["p95_s"],
                    r["errors"],
                    r["rss_max_mb"],
                    r["load"],
                ]
                for r in served
            ],
            ["clients", "served/s", "× pipeline", "p50 s", "p95 s", "errors", "RSS MB", "load"],
        )
    )
    print(f"pipeline again after serving: {again['searches_per_s']}/s (load {again['load']})")
    print(
        f"one search at a time, {count} items: REST p50 {single['rest_p50_ms']} ms, Gradio "
        f"(/analyze + /search) p50 {single['gradio_p50_ms']} ms (load {single['load']})"
    )
    print(f"server memory high-water mark: {hwm:.0f} MB")
    emit(
        {
            "bench": "throughput",
            "items": count,
            "pipeline": alone,
            "pipeline_after": again,
            "served": served,
            "single": single,
            "server_hwm_mb": round(hwm, 1),
            "machine": machine(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
