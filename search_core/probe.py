"""The health probe of a remote index, kept off the request path (see IndexProbe)."""

from __future__ import annotations

import threading
import time
from typing import Any

from search_core.interfaces import VectorIndex


class IndexProbe:
    """The last known state of a remote index, refreshed in a background thread.

    Why: a health check that calls OpenSearch inherits its 30 s timeout and retries, and the
    load balancer's check times out first. The probe starts at most one count at a time, at
    most every ``interval`` seconds, waits ``wait`` seconds for it, and otherwise answers with
    what it knew (``index_reachable`` is None until the first answer)."""

    def __init__(self, index: VectorIndex, *, interval: float = 30.0, wait: float = 0.5) -> None:
        self._index = index
        self._interval = interval
        self._wait = wait
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {"index_reachable": None, "count": None}
        self._checked = -float("inf")

    def _run(self) -> None:
        try:
            state: dict[str, Any] = {"index_reachable": True, "count": self._index.count()}
        except Exception as exc:  # reported, never raised
            state = {"index_reachable": False, "count": None, "index_error": str(exc)}
        with self._lock:
            self._state = state
            self._checked = time.monotonic()

    def state(self) -> dict[str, Any]:
        with self._lock:
            stale = time.monotonic() - self._checked > self._interval
            if stale and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="index-probe", daemon=True)
                self._thread.start()
            thread = self._thread
        if stale and thread is not None:
            thread.join(self._wait)
        with self._lock:
            age = time.monotonic() - self._checked
            checked = round(age, 1) if age != float("inf") else None
            return {**self._state, "index_checked_s_ago": checked}
