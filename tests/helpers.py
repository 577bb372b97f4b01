"""What many test modules share, importable (``from helpers import ...``); the fixtures built
on it live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the shared, read-only data sets beside the checkout (never copied into git)
SHARED_DATA = REPO.parent / "shared" / "data"
GROCERY = SHARED_DATA / "grocery"
SCENES = SHARED_DATA / "scenes"


def require(path: Path) -> Path:
    """The path, or a skip naming what is missing (the shared data lives beside the checkout)."""
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected ../shared/data beside the repo)")
    return path


class Capture:
    """Equal to anything, and keeps what it was compared with: put it in Stubber's
    ``expected_params`` to check a request body after the call instead of predicting it."""

    def __init__(self) -> None:
        self.value: object = None

    def __eq__(self, other: object) -> bool:
        self.value = other
        return True

    __hash__ = None  # type: ignore[assignment]
