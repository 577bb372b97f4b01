"""A global budget on concurrent image decodes, sized from the memory limit.

Why: a near-limit image (50 MP) needs one full-size decoded buffer (up to 200 MB for RGBA or
float) while it is normalised; four users at once took a 2 GB task to 2.6 GB. Decodes beyond the
budget wait their turn (the request queues; nothing fails), so the worst case is
``slots × one decode`` on top of the models, whatever the traffic.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_size = 0


def configure(slots: int) -> None:
    """Sets the number of decodes that may run at once (at least 1)."""
    global _slots, _size
    with _lock:
        _size = max(1, int(slots))
        _slots = threading.BoundedSemaphore(_size)


def size() -> int:
    _semaphore()
    return _size


def _semaphore() -> threading.BoundedSemaphore:
    if _slots is None:
        from search_core.config import Settings

        try:
            configure(Settings.from_env().max_decodes)
        except Exception:  # a bad setting is reported where settings are built, not here
            configure(1)
    assert _slots is not None
    return _slots


@contextlib.contextmanager
def decode_slot() -> Iterator[None]:
    """Holds one slot of the budget while the block runs (waits for a free one)."""
    semaphore = _semaphore()
    with semaphore:
        yield
