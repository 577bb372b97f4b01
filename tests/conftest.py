"""Shared fixtures: the shared data sets beside the checkout, and isolated data directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GROCERY = SHARED_DATA / "grocery"
SCENES = SHARED_DATA / "scenes"


def require(path: Path) -> Path:
    """The path, or a skip naming what is missing (the shared data lives beside the checkout)."""
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected ../shared/data beside the repo)")
    return path


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SEARCH_DATA_DIR for this test, with the sample-catalogue bootstrap off."""
    folder = tmp_path / "data"
    monkeypatch.setenv("SEARCH_DATA_DIR", str(folder))
    monkeypatch.setenv("SEARCH_SAMPLE_CATALOGUE", "off")
    monkeypatch.setenv("SEARCH_FOLDER_ROOTS", f"{REPO},{SHARED_DATA},{tmp_path}")
    return folder


@pytest.fixture(scope="session")
def grocery() -> Path:
    return require(GROCERY)


@pytest.fixture(scope="session")
def scenes() -> Path:
    return require(SCENES)
