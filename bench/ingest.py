"""Ingest throughput versus the raw model forward throughput, on the same images, in one run.

    python bench/ingest.py            # all of ../shared/data/grocery/train (~3 min on 2 cores)
    python bench/ingest.py --quick    # the first 400 images (< 1 min)
    python bench/ingest.py --sweep    # also tries other batch sizes / worker counts / threads

"Model" is the ONNX forward pass alone on already-preprocessed tensors (decode and resize done
beforehand and not timed): the ceiling an ingest can reach on this machine. "Ingest" is the
real thing -- list the folder, read, hash, decode, preprocess, embed, write SQLite -- through
:class:`search_core.indexing.Indexer` into a fresh local index. The model is measured before
and after the ingest and the ratio uses their mean, so a machine whose load drifts during the
run does not flatter or punish the ingest. Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import GROCERY, REPO, emit, image_files, machine, require_dir, table

from search_core.images import load_image
from search_core.indexing import DEFAULT_WORKER_NICENESS, Indexer, default_workers
from search_core.local_index import LocalIndex
from search_core.models.efficientnet import EfficientNetEmbedder, preprocess
from search_core.sources import FolderSource
from search_core.types import SourceEntry


class ListedSource:
    """A folder source restricted to a given list of files (for ``--limit``)."""

    def __init__(self, folder: Path, files: list[Path]) -> None:
        self._inner = FolderSource(folder)
        self._wanted = {str(f.resolve()) for f in files}
        self.uri = self._inner.uri

    def list(self) -> Iterator[SourceEntry]:
        return (e for e in self._inner.list() if e.uri in self._wanted)

    def read(self, entry: SourceEntry) -> bytes:
        return self._inner.read(entry)


def model_throughput(embedder: EfficientNetEmbedder, files: list[Path], batch_size: int) -> float:
    """Images per second of ``forward`` alone; decoding and preprocessing are not timed."""
    spent = 0.0
    for start in range(0, len(files), batch_size):
        images = [load_image(f.read_bytes()) for f in files[start : start + batch_size]]
        tensor = preprocess(images)
        began = time.perf_counter()
        embedder.forward(tensor)
        spent += time.perf_counter() - began
    return len(files) / spent


def ingest_throughput(
    embedder: EfficientNetEmbedder, folder: Path, files: list[Path], batch_size: int,
    workers: int, niceness: int = DEFAULT_WORKER_NICENESS,
) -> tuple[float, int, float]:
    """(images per second, images indexed, seconds) of a full Indexer run into a fresh index."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        index = LocalIndex(Path(tmp), dimension=embedder.dimension, model_id=embedder.model_id)
        indexer = Indexer(embedder, index, batch_size=batch_size, workers=workers,
                          worker_niceness=niceness)
        report = indexer.run(ListedSource(folder, files))
        if report.failures:
            print(f"warning: {len(report.failures)} failures, first: {report.failures[0]}")
        return report.indexed / report.seconds, report.indexed, report.seconds


def measure(
    folder: Path, files: list[Path], *, batch_size: int, workers: int, threads: int,
    niceness: int = DEFAULT_WORKER_NICENESS,
) -> dict[str, float | int]:
    embedder = EfficientNetEmbedder(REPO / "models", threads=threads, batch_size=batch_size)
    embedder.load()
    embedder.forward(preprocess([load_image(f.read_bytes()) for f in files[:batch_size]]))
    before = model_throughput(embedder, files, batch_size)
    ingest, indexed, seconds = ingest_throughput(embedder, folder, files, batch_size, workers,
                                                 niceness)
    after = model_throughput(embedder, files, batch_size)
    model = (before + after) / 2
    return {
        "batch_size": batch_size,
        "workers": workers,
        "worker_niceness": niceness,
        "onnx_threads": threads or (os.cpu_count() or 1),
        "images": indexed,
        "seconds": round(seconds, 2),
        "images_per_s": round(ingest, 2),
        "model_images_per_s": round(model, 2),
        "model_before": round(before, 2),
        "model_after": round(after, 2),
        "ratio": round(ingest / model, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="first 400 images only")
    parser.add_argument("--folder", type=Path, default=GROCERY / "train")
    parser.add_argument("--limit", type=int, default=None)
    env = os.environ.get
    parser.add_argument("--batch-size", type=int, default=int(env("SEARCH_BATCH_SIZE", "16")))
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--threads", type=int, default=int(env("SEARCH_ONNX_THREADS", "0")))
    parser.add_argument("--sweep", action="store_true", help="also try other settings")
    args = parser.parse_args()

    folder = require_dir(args.folder.resolve())
    limit = args.limit or (400 if args.quick else None)
    files = image_files(folder, limit)
    configs = [(args.batch_size, args.workers, args.threads)]
    if args.sweep:
        configs += [(8, args.workers, args.threads), (32, args.workers, args.threads),
                    (args.batch_size, 1, args.threads), (args.batch_size, 3, args.threads),
                    (args.batch_size, args.workers, 1)]
    rows = []
    for batch_size, workers, threads in configs:
        rows.append(measure(folder, files, batch_size=batch_size, workers=workers,
                            threads=threads))
    header = ["batch", "workers", "onnx threads", "images", "ingest img/s", "model img/s",
              "model before/after", "ratio"]
    print(f"folder {folder} ({len(files)} images)")
    print(table([[r["batch_size"], r["workers"], r["onnx_threads"], r["images"],
                  r["images_per_s"], r["model_images_per_s"],
                  f"{r['model_before']}/{r['model_after']}", r["ratio"]] for r in rows], header))
    emit({"bench": "ingest", **rows[0], "sweep": rows[1:], "machine": machine()})


if __name__ == "__main__":
    main()
