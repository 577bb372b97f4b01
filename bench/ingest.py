"""Ingest throughput versus the raw model forward throughput, on the same images, in one run.

    python bench/ingest.py            # all of ../shared/data/grocery/train (~3 min on 2 cores)
    python bench/ingest.py --quick    # the first 400 images (< 1 min)
    python bench/ingest.py --sweep    # also tries other batch sizes / worker counts / threads

"Model" is the ONNX forward pass alone on already-preprocessed tensors (decode and resize done
beforehand and not timed): the ceiling an ingest can reach on this machine. "Ingest" is the
real thing -- list the folder, read, hash, decode, preprocess, embed, write SQLite -- through
:class:`search_core.indexing.Indexer` into a fresh local index. The files are split into
chunks and the two passes alternate over each chunk (model first, then ingest first, ...), so a
shared machine whose load drifts during the run weighs on both alike. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import GROCERY, REPO, emit, image_files, machine, require_dir, table

from search_core import adaptation
from search_core.images import load_image
from search_core.indexing import DEFAULT_WORKER_NICENESS, Indexer, default_workers
from search_core.local_index import LocalIndex
from search_core.models.efficientnet import (
    EfficientNetEmbedder,
    EfficientNetPairEmbedder,
)
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
        tensor = embedder.preprocess(images)
        began = time.perf_counter()
        embedder.forward(tensor)
        spent += time.perf_counter() - began
    return len(files) / spent


def ingest_run(
    embedder: EfficientNetEmbedder, index: LocalIndex, folder: Path, files: list[Path],
    batch_size: int, workers: int, niceness: int,
) -> tuple[int, float]:
    """(images indexed, seconds) of one Indexer run over ``files``."""
    indexer = Indexer(embedder, index, batch_size=batch_size, workers=workers,
                      worker_niceness=niceness)
    report = indexer.run(ListedSource(folder, files))
    if report.failures:
        print(f"warning: {len(report.failures)} failures, first: {report.failures[0]}")
    return report.indexed, report.seconds


def measure(
    folder: Path, files: list[Path], *, batch_size: int, workers: int, threads: int,
    niceness: int = DEFAULT_WORKER_NICENESS, rounds: int = 4, model: str = "efficientnet",
) -> dict[str, float | int | str]:
    """Alternates model-only and ingest passes over the same chunks of files (model first in
    even rounds, ingest first in odd ones), so a machine whose load drifts during the run
    weighs on both figures alike; the ratio is of the summed throughputs."""
    kind = EfficientNetEmbedder if model == "efficientnet-lite0" else EfficientNetPairEmbedder
    embedder = kind(REPO / "models", threads=threads, batch_size=batch_size)
    embedder.load()
    embedder.forward(embedder.preprocess([load_image(f.read_bytes()) for f in files[:batch_size]]))
    chunk = -(-len(files) // rounds)
    model_images = model_seconds = ingest_images = ingest_seconds = 0.0
    per_round = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        index = LocalIndex(Path(tmp), dimension=embedder.dimension, model_id=embedder.model_id)
        for number in range(rounds):
            part = files[number * chunk : (number + 1) * chunk]
            if not part:
                break
            steps = ["model", "ingest"] if number % 2 == 0 else ["ingest", "model"]
            for step in steps:
                if step == "model":
                    speed = model_throughput(embedder, part, batch_size)
                    model_images += len(part)
                    model_seconds += len(part) / speed
                    model_speed = speed
                else:
                    done, seconds = ingest_run(embedder, index, folder, part, batch_size,
                                               workers, niceness)
                    ingest_images += done
                    ingest_seconds += seconds
                    ingest_speed = done / seconds
            per_round.append(round(ingest_speed / model_speed, 3))
        # the catalogue adaptation fitted once at the end of the ingest (pipeline.index_source)
        began = time.perf_counter()
        _, learned = adaptation.fit(*index.vectors(), embedder.model_id)
        fit_seconds = time.perf_counter() - began
    ingest = ingest_images / ingest_seconds
    model = model_images / model_seconds
    return {
        "embedder": embedder.model_id,
        "batch_size": batch_size,
        "workers": workers,
        "worker_niceness": niceness,
        "onnx_threads": threads or (os.cpu_count() or 1),
        "images": int(ingest_images),
        "seconds": round(ingest_seconds, 2),
        "images_per_s": round(ingest, 2),
        "model_images_per_s": round(model, 2),
        "ratio": round(ingest / model, 3),
        "ratio_per_round": per_round,
        "adaptation_fit_s": round(fit_seconds, 2),
        "adaptation": learned.status,
        "ratio_with_fit": round(ingest_images / (ingest_seconds + fit_seconds) / model, 3),
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
    parser.add_argument("--embedder", default="efficientnet",
                        choices=("efficientnet", "efficientnet-lite0"),
                        help="SEARCH_EMBEDDER value to measure (default: the default)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating passes")
    args = parser.parse_args()

    folder = require_dir(args.folder.resolve())
    limit = args.limit or (400 if args.quick else None)
    files = image_files(folder, limit)
    rounds = args.rounds or (2 if args.quick else 6)
    configs = [(args.batch_size, args.workers, args.threads)]
    if args.sweep:
        configs += [(8, args.workers, args.threads), (32, args.workers, args.threads),
                    (args.batch_size, 1, args.threads), (args.batch_size, 3, args.threads)]
    rows = []
    for batch_size, workers, threads in configs:
        rows.append(measure(folder, files, batch_size=batch_size, workers=workers,
                            threads=threads, rounds=rounds, model=args.embedder))
    if args.sweep:  # preparation threads at normal priority, for comparison
        rows.append(measure(folder, files, batch_size=args.batch_size, workers=args.workers,
                            threads=args.threads, niceness=0, rounds=rounds,
                            model=args.embedder))
    header = ["batch", "workers", "nice", "onnx threads", "images", "ingest img/s",
              "model img/s", "ratio", "ratio per round", "+ adaptation fit s", "ratio with fit"]
    print(f"folder {folder} ({len(files)} images), embedder {rows[0]['embedder']}")
    print(table([[r["batch_size"], r["workers"], r["worker_niceness"], r["onnx_threads"],
                  r["images"], r["images_per_s"], r["model_images_per_s"], r["ratio"],
                  " ".join(map(str, r["ratio_per_round"])), r["adaptation_fit_s"],
                  r["ratio_with_fit"]] for r in rows], header))
    emit({"bench": "ingest", **rows[0], "sweep": rows[1:], "machine": machine()})


if __name__ == "__main__":
    main()
