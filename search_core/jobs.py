"""Background indexing jobs that the UI polls.

Indexing a catalogue takes minutes; an HTTP request that long is cut by App Runner (~120 s) and
load balancers, so the Index tab starts a job and then polls its progress instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from search_core.errors import SearchError
from search_core.indexing import IndexReport, ProgressCallback

log = logging.getLogger(__name__)

#: (source uri, prune, stop event, progress callback) -> report
JobRunner = Callable[[str, bool, threading.Event, ProgressCallback], IndexReport]


@dataclass
class Job:
    id: str
    source: str
    state: str = "running"  # running | finished | stopped | failed
    report: IndexReport = field(default_factory=IndexReport)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "state": self.state,
            "error": self.error,
            "started": self.started,
            "finished": self.finished,
            **self.report.to_dict(),
        }


class JobManager:
    """One indexing job at a time (two would compete for the same CPU and index)."""

    def __init__(self, runner: JobRunner, keep: int = 20) -> None:
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        # Reentrant: start() checks active() under it. Readers take it too, since UI polls
        # from many sessions iterate the dict while start() may be inserting into it.
        self._lock = threading.RLock()
        self._keep = keep

    def start(self, source: str, *, prune: bool = False) -> Job:
        with self._lock:
            active = self.active()
            if active is not None:
                raise SearchError(f"an indexing job is already running ({active.source})")
            job = Job(id=uuid.uuid4().hex[:12], source=source)
            job.report.source = source
            job.thread = threading.Thread(
                target=self._run, args=(job, prune), name=f"index-{job.id}", daemon=True
            )
            self._jobs[job.id] = job
            for old in list(self._jobs)[: -self._keep]:
                self._jobs.pop(old, None)
        job.thread.start()
        return job

    def _run(self, job: Job, prune: bool) -> None:
        def progress(report: IndexReport) -> None:
            job.report = report

        try:
            job.report = self._runner(job.source, prune, job.stop_event, progress)
            if job.report.error:
                job.state, job.error = "failed", job.report.error
            else:
                job.state = "stopped" if job.report.stopped else "finished"
        except SearchError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a job thread must never die silently
            log.exception("indexing job %s failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()

    def _snapshot(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def active(self) -> Job | None:
        return next((job for job in self._snapshot() if job.running), None)

    def latest(self) -> Job | None:
        jobs = self._snapshot()
        return jobs[-1] if jobs else None

    def stop(self, job_id: str | None = None) -> None:
        """Asks a job to stop after its current batch (a clean point: nothing half-written)."""
        for job in self._snapshot():
            if job_id is None or job.id == job_id:
                job.stop_event.set()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stops every job and waits; True when all ended within ``timeout`` (SIGTERM path)."""
        self.stop()
        deadline = time.monotonic() + timeout
        jobs = self._snapshot()
        for job in jobs:
            if job.thread is not None and job.thread.is_alive():
                job.thread.join(max(0.0, deadline - time.monotonic()))
        return all(not (j.thread and j.thread.is_alive()) for j in jobs)
