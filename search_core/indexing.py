"""Incremental, batched, resumable ingestion of an image source into a vector index.

Reading, hashing, decoding and model preprocessing run in worker threads and overlap with model
inference on the calling thread, so on a CPU machine the embedding model stays the bottleneck.
Every batch is committed on its own: after a crash the next run skips what already landed
(same URI and version, or same content hash), which makes a run resumable and idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from search_core.errors import BackendError, ConfigError, SearchError
from search_core.images import describe_non_image, load_image, looks_like_image, sha256_hex
from search_core.interfaces import Embedder, ImageSource, VectorIndex
from search_core.tags import Tagger
from search_core.types import ItemMeta, SourceEntry

log = logging.getLogger(__name__)

# Files with these names that turn out not to be usable images are reported as failures (a
# user expects them indexed); other non-images (notes, descriptions) are skipped quietly.
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".jfif",
    ".svg",
    ".heic",
}
MAX_CONSECUTIVE_FAILED_BATCHES = 3
#: nice value of the preparation threads (0 = same priority as inference); see _lower_priority
DEFAULT_WORKER_NICENESS = 10


@dataclass
class IndexReport:
    """Counts of one run. ``failures`` holds (uri, reason) for every file that did not land."""

    source: str = ""
    total: int = 0
    done: int = 0
    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    not_images: int = 0
    replaced: int = 0
    pruned: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: (uri, sha256) of files skipped because that content is already indexed
    duplicate_files: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False
    error: str = ""
    seconds: float = 0.0
    current: str = ""
    #: "listing" -> "embedding" (``planned`` is then known: files left after the cheap
    #: unchanged check) -> "done". Callers print cost estimates on entering "embedding".
    phase: str = "listing"
    planned: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": self.total,
            "done": self.done,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "not_images": self.not_images,
            "replaced": self.replaced,
            "pruned": self.pruned,
            "failed": self.failed,
            "failures": [{"uri": uri, "reason": reason} for uri, reason in self.failures],
            "duplicate_files": [
                {"uri": uri, "sha256": sha} for uri, sha in self.duplicate_files[:100]
            ],
            "stopped": self.stopped,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "planned": self.planned,
            "images_per_s": round(self.indexed / self.seconds, 2) if self.seconds else 0.0,
        }


ProgressCallback = Callable[[IndexReport], None]


@dataclass
class _Prepared:
    entry: SourceEntry
    meta: ItemMeta | None = None
    image: Image.Image | None = None
    tensor: np.ndarray | None = None
    skip: str = ""  # "not_image"
    error: str = ""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` → (I, N) with 0 ≤ I < N."""
    if not text:
        return None
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError as exc:
        raise SearchError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from exc
    if count < 1 or not 0 <= index < count:
        raise SearchError(f"--shard {text}: need 0 ≤ I < N")
    return index, count


def in_shard(uri: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic split by a hash of the URI: N workers listing the same prefix each take a
    disjoint share, and together all of it, with no coordination."""
    if shard is None:
        return True
    digest = hashlib.sha1(uri.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


def default_workers() -> int:
    """Preparation threads: one per core (decoding and resizing release the GIL), at least two
    so reading the next file overlaps decoding the current one."""
    return max(2, os.cpu_count() or 1)


def _lower_priority(niceness: int) -> None:
    """Runs in each preparation thread: on Linux a thread has its own nice value, so the
    inference threads preempt decoding whenever they are runnable. With intra-op parallelism
    one preempted inference thread stalls the whole operator; decoding only needs to keep a
    few batches ahead, which it does in the gaps."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):  # not permitted (some containers): normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def label_from_uri(uri: str) -> str:
    """The parent folder name: the class in folder-per-class catalogues."""
    return PurePosixPath(uri.replace("\\", "/")).parent.name


def _first(output: Any) -> np.ndarray:
    """``forward`` may return (vectors, extra outputs); the vectors come first."""
    return output[0] if isinstance(output, tuple) else output


class Indexer:
    """Runs one source into one index with one embedder."""

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        *,
        batch_size: int = 16,
        workers: int | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        max_pixels: int = 50_000_000,
        max_side: int = 2048,
        worker_niceness: int = DEFAULT_WORKER_NICENESS,
        tagger: Tagger | None = None,
    ) -> None:
        self.embedder = embedder
        self.tagger = tagger
        self.worker_niceness = worker_niceness
        self.index = index
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers or default_workers())
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        # Local ONNX embedders split preprocessing (parallel, in workers) from the forward pass.
        self._preprocess: Callable[[list[Image.Image]], np.ndarray] | None = getattr(
            embedder, "preprocess", None
        )
        forward = getattr(embedder, "forward", None)
        self._forward: Callable[[np.ndarray], Any] | None = None
        if self._preprocess is not None and forward is not None:
            self._forward = forward
        else:
            self._preprocess = None

    # -- worker side ---------------------------------------------------------------------------

    def _prepare(self, source: ImageSource, entry: SourceEntry) -> _Prepared:
        suffix = PurePosixPath(entry.uri).suffix.lower()
        try:
            if entry.size_bytes > self.max_bytes:
                return _Prepared(entry, error=f"file is too large ({entry.size_bytes:,} bytes)")
            data = source.read(entry)
            if len(data) > self.max_bytes:
                return _Prepared(entry, error=f"file is too large ({len(data):,} bytes)")
            if not looks_like_image(data[:16]):
                if suffix in IMAGE_SUFFIXES or not data:
                    what = "the file is empty (0 bytes)" if not data else describe_non_image(data)
                    return _Prepared(entry, error=f"not an image: {what}")
                return _Prepared(entry, skip="not_image")
            image = load_image(data, max_pixels=self.max_pixels, max_side=self.max_side)
            meta = ItemMeta(
                uri=entry.uri,
                sha256=sha256_hex(data),
                label=label_from_uri(entry.uri),
                width=image.width,
                height=image.height,
                size_bytes=len(data),
                model=self.embedder.model_id,
                dimension=self.embedder.dimension,
                extra={"version": entry.version, "source": getattr(source, "uri", "")},
            )
            if self.tagger is not None:  # category and detector tags (search_core.tags)
                meta.extra.update(self.tagger.describe(entry.uri, meta.extra["source"], image))
            tensor = self._preprocess([image])[0] if self._preprocess else None
            return _Prepared(
                entry, meta=meta, image=None if tensor is not None else image, tensor=tensor
            )
        except SearchError as exc:
            return _Prepared(entry, error=str(exc))
        except OSError as exc:
            return _Prepared(entry, error=f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # one bad file must never stop the run
            log.exception("unexpected error preparing %s", entry.uri)
            return _Prepared(entry, error=f"unexpected error: {type(exc).__name__}: {exc}")

    def _prepared_stream(
        self, source: ImageSource, entries: list[SourceEntry], pool: ThreadPoolExecutor
    ) -> Iterator[_Prepared]:
        """Results in source order with a bounded number in flight (bounded memory)."""
        pending: deque[Future[_Prepared]] = deque()
        window = max(self.batch_size * 2, self.workers * 4)
        iterator = iter(entries)
        for entry in iterator:
            pending.append(pool.submit(self._prepare, source, entry))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft().result()
            for entry in iterator:
                pending.append(pool.submit(self._prepare, source, entry))
                break

    # -- main side -----------------------------------------------------------------------------

    def _embed(self, batch: list[_Prepared]) -> list[np.ndarray | str]:
        """One vector or one error message per item of the batch."""
        try:
            if self._forward is not None:
                output = self._forward(np.stack([item.tensor for item in batch]))
                if self.tagger is not None and isinstance(output, tuple) and len(output) > 1:
                    keywords = self.tagger.keyword_tags(output[1])  # ImageNet labels, same pass
                    Tagger.merge([item.meta for item in batch], keywords)
                return list(_first(output))
            partial = getattr(self.embedder, "embed_images_partial", None)
            images = [item.image for item in batch]
            if partial is not None:
                return [r if isinstance(r, np.ndarray) else str(r) for r in partial(images)]
            return list(self.embedder.embed_images(images))
        except ConfigError:
            raise  # a broken model or setting fails every file alike: stop the run instead
        except SearchError as exc:
            return [str(exc)] * len(batch)

    def run(
        self,
        source: ImageSource,
        *,
        prune: bool = False,
        progress: ProgressCallback | None = None,
        shard: tuple[int, int] | None = None,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        started = time.perf_counter()
        report = IndexReport(source=getattr(source, "uri", ""))
        last_report = 0.0

        def tick(force: bool = False) -> None:
            nonlocal last_report
            report.seconds = time.perf_counter() - started
            now = time.monotonic()
            if progress and (force or now - last_report > 0.2):
                last_report = now
                progress(report)

        entries = [e for e in source.list() if in_shard(e.uri, shard)]
        report.total = len(entries)
        existing = {item.uri: item for item in self.index.items()}
        known = {item.sha256 for item in existing.values()}
        tick(force=True)

        todo: list[SourceEntry] = []
        for entry in entries:
            old = existing.get(entry.uri)
            if old is not None and entry.version and old.extra.get("version") == entry.version:
                report.unchanged += 1
                report.done += 1
            else:
                todo.append(entry)
        report.planned = len(todo)
        report.phase = "embedding"
        tick(force=True)

        batch: list[_Prepared] = []
        seen: set[str] = set()
        failed_batches = 0

        def flush() -> None:
            nonlocal failed_batches
            if not batch:
                return
            results = self._embed(batch)
            good = [
                (item, r)
                for item, r in zip(batch, results, strict=True)
                if isinstance(r, np.ndarray)
            ]
            for item, result in zip(batch, results, strict=True):
                if not isinstance(result, np.ndarray):
                    report.failures.append((item.entry.uri, result))
            if good:
                vectors = np.stack([r for _, r in good]).astype(np.float32)
                metas = [item.meta for item, _ in good if item.meta is not None]
                report.indexed += self.index.add(vectors, metas)  # raises: cannot go on
                replaced = [
                    existing[m.uri].sha256
                    for m in metas
                    if m.uri in existing and existing[m.uri].sha256 != m.sha256
                ]
                if replaced:
                    report.replaced += self.index.delete(replaced)
                failed_batches = 0
            else:
                failed_batches += 1
            report.done += len(batch)
            batch.clear()
            tick()

        with ThreadPoolExecutor(
            self.workers,
            thread_name_prefix="prepare",
            initializer=_lower_priority,
            initargs=(self.worker_niceness,),
        ) as pool:
            stream = self._prepared_stream(source, todo, pool)
            try:
                for prepared in stream:
                    report.current = prepared.entry.uri
                    if prepared.error or prepared.skip or prepared.meta is None:
                        if prepared.error:
                            report.failures.append((prepared.entry.uri, prepared.error))
                        else:
                            report.not_images += 1
                        report.done += 1
                        tick()
                        continue
                    sha = prepared.meta.sha256
                    previous = existing.get(prepared.entry.uri)
                    if previous is not None and previous.sha256 == sha:
                        report.unchanged += 1  # touched but not changed
                        report.done += 1
                        tick()
                        continue
                    if sha in seen or sha in known:
                        report.duplicates += 1
                        report.duplicate_files.append((prepared.entry.uri, sha))
                        if previous is not None:  # its old content is gone from the source
                            report.replaced += self.index.delete([previous.sha256])
                        report.done += 1
                        tick()
                        continue
                    seen.add(sha)
                    batch.append(prepared)
                    if len(batch) >= self.batch_size:
                        flush()
                        if failed_batches >= MAX_CONSECUTIVE_FAILED_BATCHES:
                            report.error = (
                                f"stopped after {failed_batches} failed batches in a row: "
                                f"{report.failures[-1][1]}"
                            )
                            report.stopped = True
                            break
                    if stop is not None and stop.is_set():
                        flush()
                        report.stopped = True
                        break
                else:
                    flush()
            except (BackendError, ConfigError) as exc:
                report.error = str(exc)
                report.stopped = True
            finally:
                stream.close()

        if prune and not report.stopped:
            listed = {e.uri for e in entries}
            root = getattr(source, "uri", "")
            gone = [
                item.sha256
                for uri, item in existing.items()
                if uri not in listed and item.extra.get("source") == root and in_shard(uri, shard)
            ]
            report.pruned = self.index.delete(gone)
        build_graph = getattr(self.index, "build_graph", None)
        if callable(build_graph) and report.indexed and not report.stopped:
            # Large local indexes: build/extend and save the HNSW graph now, in the ingest job,
            # rather than in the first user search after it.
            report.current = "updating the search graph"
            tick(force=True)
            build_graph()
        report.current = ""
        report.phase = "done"
        tick(force=True)
        return report
