"""Shared fixtures: the shared data sets beside the checkout, isolated data directories, and
fake AWS credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_opensearch import FAKE_KEY, FAKE_SECRET
from helpers import GROCERY, REPO, SCENES, SHARED_DATA, require

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture()
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and no profile, endpoint override or retry tuning from the machine, so
    that no test can reach a real AWS account and every client is signed the same way (the
    fake OpenSearch verifies SigV4 with these keys). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("fake_aws")``."""
    from search_core.aws import clients

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS",
                 "AWS_RETRY_MODE", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    clients._session_for.cache_clear()  # a cached session would keep the previous credentials
