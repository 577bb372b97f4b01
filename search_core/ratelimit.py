"""Failed-login accounting: slow down, then refuse for a while, per client and per user.

Kept apart from the web code so that any login route (Gradio's ``/login``, a REST API's basic
auth) shares one ledger, and so the policy is testable with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginLimiter:
    """Counts failures per key (``"client:1.2.3.4"``, ``"user:alice"``).

    After ``slow_after`` failures each further attempt waits ``delay_s`` (growing, at most
    ``max_delay_s``) before it is answered; after ``max_failures`` the key is refused for
    ``lockout_s`` seconds. A success clears the user's and the client's records. Records idle
    for longer than the lock-out are forgotten, so memory stays bounded by recent attackers.
    """

    def __init__(self, *, max_failures: int = 10, lockout_s: float = 300.0, slow_after: int = 3,
                 delay_s: float = 0.25, max_delay_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.max_failures = max(1, max_failures)
        self.lockout_s = lockout_s
        self.slow_after = slow_after
        self.delay_s = delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.max_keys = max_keys
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        """Seconds until the first of ``keys`` may try again (0 when none is locked)."""
        now = self.clock()
        with self._lock:
            waits = [r.locked_until - now for k in keys if (r := self._records.get(k))]
        return max([0.0, *waits])

    def delay(self, *keys: str) -> float:
        """How long to hold the answer to this attempt (slow-down before the lock-out)."""
        with self._lock:
            failures = max([0, *(r.failures for k in keys if (r := self._records.get(k)))])
        extra = failures - self.slow_after
        return 0.0 if extra < 0 else min(self.max_delay_s, self.delay_s * 2 ** min(extra, 8))

    def failure(self, *keys: str) -> float:
        """Records a failure; returns the lock-out now in force (0 if none)."""
        now = self.clock()
        with self._lock:
            self._forget_idle(now)
            for key in keys:
                record = self._records.setdefault(key, _Record())
                if record.locked_until and record.locked_until <= now:
                    record.failures, record.locked_until = 0, 0.0  # a new round after a lock
                record.failures += 1
                record.last = now
                if record.failures >= self.max_failures:
                    record.locked_until = now + self.lockout_s
        return self.retry_after(*keys)

    def success(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def _forget_idle(self, now: float) -> None:
        if len(self._records) < self.max_keys:
            return
        horizon = now - self.lockout_s
        for key in [k for k, r in self._records.items() if r.last < horizon
                    and r.locked_until <= now]:
            del self._records[key]
