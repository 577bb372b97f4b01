"""Incremental, batched, resumable ingestion of an image source into a vector index.

A run is five stages over one batch contract (:class:`Batch`): **plan** (list the source, keep
files whose name is not indexed with the same version), **read/prepare** (read, hash, decode,
preprocess in worker threads), **embed** (the model, on the calling thread), **commit** (contents
then names, one transaction each) and **prune/finalize** (drop names under the source that left
it; build the search graph). Preparation overlaps inference, so on a CPU machine the embedding
model stays the bottleneck. Every batch is committed on its own: after a crash the next run
skips what already landed (same name and version, or same content hash), which makes a run
resumable and idempotent; any number of runs may write one index at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from search_core.errors import BackendError, ConfigError, GoneError, ImageError, SearchError
from search_core.images import (
    IMAGE_SUFFIXES,
    describe_non_image,
    load_image,
    looks_like_image,
    sha256_hex,
)
from search_core.interfaces import (
    Embedder,
    ImageSource,
    PartialBatchEmbedder,
    PreprocessingEmbedder,
    VectorIndex,
)
from search_core.sources import uri_to_path
from search_core.tags import Tagger
from search_core.types import ItemMeta, SourceEntry

log = logging.getLogger(__name__)

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
    #: files whose content a concurrent run (another CLI, the app) stored first: counted, so
    #: indexed + by_other_run + unchanged + duplicates + not_images + failed == total
    by_other_run: int = 0
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
            "by_other_run": self.by_other_run,
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
    return np.asarray(output[0] if isinstance(output, tuple) else output)


# -- the batch contract ---------------------------------------------------------------------------
#
# plan -> read/prepare -> (triage into a Batch) -> embed -> commit -> prune -> finalize.
# Each stage is a small function or class that can be tested alone; ``Indexer.run`` only wires
# them and keeps the report.


@dataclass(eq=False)
class Prepared:
    """One listed file after the read/prepare stage: its metadata (with the content hash) and
    the model input, or why it cannot be indexed."""

    entry: SourceEntry
    meta: ItemMeta | None = None
    image: Image.Image | None = None
    tensor: np.ndarray | None = None
    skip: str = ""  # "not_image"
    error: str = ""
    #: the failure shows the name no longer holds the picture indexed under it (not an image
    #: now, corrupt or cut short, a dead link), unlike a read error that may pass: the old
    #: vector goes, as when the file is deleted
    gone: bool = False


_Prepared = Prepared  # the former private name


@dataclass
class Plan:
    """The plan stage's answer: what is listed, what must be read, what the index holds."""

    entries: list[SourceEntry]
    todo: list[SourceEntry]
    existing: dict[str, ItemMeta]  # uri -> item, at planning time
    known: set[str]  # content hashes stored at planning time
    unchanged: int


@dataclass
class Batch:
    """What one commit writes. ``embed``: new contents (need the model); ``link``: names whose
    content is (believed) stored, with the counter they fall under (``unchanged`` for a touched
    file, ``duplicates`` for a copy or rename, ``by_other_run`` for content a concurrent run
    stored after our plan); ``stale``: names whose file is no longer an image."""

    embed: list[Prepared] = field(default_factory=list)
    link: list[tuple[Prepared, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.embed) + len(self.link)


def plan_run(
    source: ImageSource, index: VectorIndex, shard: tuple[int, int] | None = None
) -> Plan:
    """Lists the source and keeps what must be read: a file whose name is indexed with the same
    version (size, mtime, ctime and inode for folders; the ETag on S3) is unchanged."""
    entries = [e for e in source.list() if in_shard(e.uri, shard)]
    existing = {item.uri: item for item in index.items()}
    known = {item.sha256 for item in existing.values()}
    todo: list[SourceEntry] = []
    unchanged = 0
    for entry in entries:
        old = existing.get(entry.uri)
        if old is not None and entry.version and old.extra.get("version") == entry.version:
            unchanged += 1
        else:
            todo.append(entry)
    return Plan(entries, todo, existing, known, unchanged)


class Reader:
    """The read/prepare stage: reads, hashes, decodes and preprocesses files in worker threads,
    in source order, with a bounded number in flight (bounded memory)."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_bytes: int,
        max_pixels: int,
        max_side: int,
        preprocess: Callable[[list[Image.Image]], np.ndarray] | None,
        tagger: Tagger | None = None,
    ) -> None:
        self.embedder = embedder
        self.tagger = tagger
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.preprocess = preprocess

    def prepare(self, source: ImageSource, entry: SourceEntry) -> Prepared:
        suffix = PurePosixPath(entry.uri).suffix.lower()
        try:
            if entry.size_bytes > self.max_bytes:
                return Prepared(entry, error=f"file is too large ({entry.size_bytes:,} bytes)")
            data = source.read(entry)
            if len(data) > self.max_bytes:
                return Prepared(entry, error=f"file is too large ({len(data):,} bytes)")
            if not looks_like_image(data[:16]):
                if suffix in IMAGE_SUFFIXES or not data:
                    what = "the file is empty (0 bytes)" if not data else describe_non_image(data)
                    return Prepared(entry, error=f"not an image: {what}", gone=True)
                return Prepared(entry, skip="not_image")
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
                extra={"version": entry.version, "source": source.uri},
            )
            if self.tagger is not None:  # category and detector tags (search_core.tags)
                meta.extra.update(self.tagger.describe(entry.uri, meta.extra["source"], image))
            tensor = self.preprocess([image])[0] if self.preprocess else None
            return Prepared(
                entry, meta=meta, image=None if tensor is not None else image, tensor=tensor
            )
        except (ImageError, GoneError) as exc:
            return Prepared(entry, error=str(exc), gone=True)
        except SearchError as exc:
            return Prepared(entry, error=str(exc))
        except OSError as exc:
            return Prepared(entry, error=f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # one bad file must never stop the run
            log.exception("unexpected error preparing %s", entry.uri)
            return Prepared(entry, error=f"unexpected error: {type(exc).__name__}: {exc}")

    def stream(
        self,
        source: ImageSource,
        entries: list[SourceEntry],
        pool: ThreadPoolExecutor,
        window: int,
    ) -> Generator[Prepared, None, None]:
        pending: deque[Future[Prepared]] = deque()
        iterator = iter(entries)
        for entry in iterator:
            pending.append(pool.submit(self.prepare, source, entry))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft().result()
            for entry in iterator:
                pending.append(pool.submit(self.prepare, source, entry))
                break


class BatchEmbedder:
    """The embed stage: one vector or one error message per prepared item."""

    def __init__(self, embedder: Embedder, tagger: Tagger | None = None) -> None:
        self.embedder = embedder
        self.tagger = tagger
        # Local ONNX embedders split preprocessing (parallel, in workers) from the forward pass.
        self.preprocess: Callable[[list[Image.Image]], np.ndarray] | None = None
        self._forward: Callable[[np.ndarray], Any] | None = None
        if isinstance(embedder, PreprocessingEmbedder):
            self.preprocess = embedder.preprocess
            self._forward = embedder.forward

    def __call__(self, batch: list[Prepared]) -> list[np.ndarray | str]:
        if not batch:
            return []
        try:
            tensors = [item.tensor for item in batch if item.tensor is not None]
            if self._forward is not None and len(tensors) == len(batch):
                output = self._forward(np.stack(tensors))
                if self.tagger is not None and isinstance(output, tuple) and len(output) > 1:
                    keywords = self.tagger.keyword_tags(output[1])  # ImageNet labels, same pass
                    Tagger.merge([item.meta for item in batch], keywords)
                return list(_first(output))
            images = [item.image for item in batch if item.image is not None]
            if len(images) != len(batch):
                return ["internal error: no image prepared"] * len(batch)
            if isinstance(self.embedder, PartialBatchEmbedder):
                results = self.embedder.embed_images_partial(images)
                return [r if isinstance(r, np.ndarray) else str(r) for r in results]
            return list(self.embedder.embed_images(images))
        except ConfigError:
            raise  # a broken model or setting fails every file alike: stop the run instead
        except SearchError as exc:
            return [str(exc)] * len(batch)


def triage(prepared: Prepared, plan: Plan, seen: set[str], batch: Batch) -> str:
    """Sorts one prepared file into the batch. Returns the counter of a file that needs no
    commit ("failed", "not_images") or "" when it joined the batch."""
    previous = plan.existing.get(prepared.entry.uri)
    if prepared.error or prepared.skip or prepared.meta is None:
        if previous is not None and (prepared.skip or prepared.gone):
            batch.stale.append(prepared.entry.uri)  # the indexed picture is no longer there
        return "failed" if prepared.error else "not_images"
    sha = prepared.meta.sha256
    if previous is not None and previous.sha256 == sha:
        batch.link.append((prepared, "unchanged"))  # touched, same bytes: refresh the version
    elif sha in seen or sha in plan.known:
        batch.link.append((prepared, "duplicates"))  # a copy, a rename, a swapped content
    else:
        seen.add(sha)
        batch.embed.append(prepared)
    return ""


def _usable(result: np.ndarray | str) -> np.ndarray | str:
    """A zero or non-finite vector is that file's failure; the index would refuse the whole
    batch (and stop the run) for it."""
    if isinstance(result, np.ndarray):
        norm = float(np.linalg.norm(result))
        if norm == 0.0 or not np.isfinite(norm):
            return "the model produced no usable vector for this image (zero or not finite)"
    return result


class Committer:
    """The commit stage: re-checks which new contents a concurrent run stored meanwhile (those
    are linked, not embedded), embeds the rest, writes contents then names, removes stale
    names. Updates the report's counters only for what was committed."""

    def __init__(
        self,
        index: VectorIndex,
        embed: BatchEmbedder,
        reread: Callable[[SourceEntry], Prepared],
    ) -> None:
        self.index = index
        self.embed = embed
        self.reread = reread

    def __call__(self, batch: Batch, plan: Plan, report: IndexReport) -> bool:
        """True when something landed (or nothing needed the model); False when every file
        sent to the model failed."""
        stored = self.index.known_hashes(p.meta.sha256 for p in batch.embed if p.meta)
        fresh = [p for p in batch.embed if p.meta and p.meta.sha256 not in stored]
        taken = {id(p) for p in fresh}  # identity: Prepared holds arrays, no == on them
        links = batch.link + [(p, "by_other_run") for p in batch.embed if id(p) not in taken]
        ok = self._store(fresh, plan, report) or not fresh
        missing = {
            item.uri for item in self.index.link([p.meta for p, _ in links if p.meta])
        }
        for prepared, counter in links:
            if prepared.entry.uri not in missing:
                setattr(report, counter, getattr(report, counter) + 1)
                if counter == "duplicates" and prepared.meta:  # named in the Index tab
                    report.duplicate_files.append((prepared.entry.uri, prepared.meta.sha256))
                self._count_replaced(prepared, plan, report)
        if missing:  # removed by another writer between our check and the link: embed
            again = [self.reread(p.entry) for p, _ in links if p.entry.uri in missing]
            self._store([p for p in again if p.meta], plan, report)
            for prepared in again:
                if prepared.meta is None:
                    report.failures.append((prepared.entry.uri, prepared.error or "vanished"))
        if batch.stale:
            self.index.remove(batch.stale)
        return ok

    def _store(self, fresh: list[Prepared], plan: Plan, report: IndexReport) -> bool:
        if not fresh:
            return False
        results = [_usable(r) for r in self.embed(fresh)]
        good = [(p, r) for p, r in zip(fresh, results, strict=True) if isinstance(r, np.ndarray)]
        for prepared, result in zip(fresh, results, strict=True):
            if not isinstance(result, np.ndarray):
                report.failures.append((prepared.entry.uri, result))
        if not good:
            return False
        vectors = np.stack([r for _, r in good]).astype(np.float32)
        added = self.index.add(vectors, [p.meta for p, _ in good if p.meta])  # raises: stop
        report.indexed += added
        report.by_other_run += len(good) - added  # stored by a concurrent run first
        for prepared, _ in good:
            self._count_replaced(prepared, plan, report)
        return True

    @staticmethod
    def _count_replaced(prepared: Prepared, plan: Plan, report: IndexReport) -> None:
        previous = plan.existing.get(prepared.entry.uri)
        if previous is not None and prepared.meta and previous.sha256 != prepared.meta.sha256:
            report.replaced += 1  # the name now shows other content


def in_scope(uri: str, root: str) -> bool:
    """Whether ``uri`` lies under the source ``root``: on a path boundary for folders (so
    pruning ``/c8`` covers ``/c8/sub`` but not ``/c80``), as a key prefix for S3 (as S3 lists)."""
    if not root:
        return False
    if root.startswith("s3://"):
        return uri.startswith(root)
    path = uri_to_path(uri)
    base = root.rstrip("/")
    return path == root or path.startswith(base + "/")


def prune_missing(
    index: VectorIndex, root: str, listed: set[str], shard: tuple[int, int] | None = None
) -> int:
    """Removes every indexed name under ``root`` (sub-folders indexed on their own included)
    that the listing did not return; contents go with their last name."""
    gone = [
        item.uri
        for item in index.items()
        if item.uri not in listed and in_scope(item.uri, root) and in_shard(item.uri, shard)
    ]
    return index.remove(gone)


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
        self.worker_niceness = worker_niceness
        self.index = index
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers or default_workers())
        self.embed = BatchEmbedder(embedder, tagger)
        self.reader = Reader(
            embedder,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            max_side=max_side,
            preprocess=self.embed.preprocess,
            tagger=tagger,
        )

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
        report = IndexReport(source=source.uri)
        last_report = 0.0

        def tick(force: bool = False) -> None:
            nonlocal last_report
            report.seconds = time.perf_counter() - started
            now = time.monotonic()
            if progress and (force or now - last_report > 0.2):
                last_report = now
                progress(report)

        plan = plan_run(source, self.index, shard)
        report.total = len(plan.entries)
        report.unchanged = report.done = plan.unchanged
        report.planned = len(plan.todo)
        tick(force=True)
        report.phase = "embedding"
        tick(force=True)

        commit = Committer(self.index, self.embed, lambda e: self.reader.prepare(source, e))
        batch = Batch()
        seen: set[str] = set()
        failed_batches = 0

        def flush() -> None:
            nonlocal batch, failed_batches
            if not len(batch) and not batch.stale:
                return
            size = len(batch)
            needed_model = bool(batch.embed)
            landed = commit(batch, plan, report)
            if needed_model:
                failed_batches = 0 if landed else failed_batches + 1
            report.done += size
            batch = Batch()
            tick()

        window = max(self.batch_size * 2, self.workers * 4)
        with ThreadPoolExecutor(
            self.workers,
            thread_name_prefix="prepare",
            initializer=_lower_priority,
            initargs=(self.worker_niceness,),
        ) as pool:
            stream = self.reader.stream(source, plan.todo, pool, window)
            try:
                for prepared in stream:
                    report.current = prepared.entry.uri
                    counter = triage(prepared, plan, seen, batch)
                    if counter == "failed":
                        report.failures.append((prepared.entry.uri, prepared.error))
                    elif counter:
                        report.not_images += 1
                    if counter:
                        report.done += 1
                        tick()
                    if len(batch.embed) >= self.batch_size or len(batch.link) >= 64:
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
                if prune and not report.stopped:
                    report.current = "removing what left the source"
                    tick(force=True)
                    listed = {e.uri for e in plan.entries}
                    report.pruned = prune_missing(
                        self.index, report.source, listed, shard
                    )
                if not report.stopped:
                    # Large local indexes: build/extend and save the HNSW graph now, in the
                    # ingest job, rather than in the first user search after it.
                    report.current = "updating the search graph"
                    tick(force=True)
                    self.index.finalize()
            except (BackendError, ConfigError) as exc:
                report.error = str(exc)
                report.stopped = True
            finally:
                stream.close()
        report.current = ""
        report.phase = "done"
        tick(force=True)
        return report
