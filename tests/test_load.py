"""A short version of ``bench/load.py``: concurrent users search the real app while it runs an
indexing job. Asserts correctness only (zero errors, memory bounded, nothing lost), never
latency; the numbers come from the bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import GROCERY, REPO

sys.path.insert(0, str(REPO / "bench"))
from load import (
    AppServer,
    image_files,
    json_output,
    prepare_data_dir,
    run_load,
    wait_job,
)

USERS = 6
SECONDS = 12.0
MEMORY_BOUND_MB = 2048  # generous: a leak or an unbounded queue shows up as multiples of this


def test_concurrent_users_while_indexing(tmp_path: Path) -> None:
    if not GROCERY.is_dir():
        pytest.skip(f"shared test data not found: {GROCERY}")
    from gradio_client import Client

    server = AppServer(tmp_path / "app", GRADIO_DEFAULT_CONCURRENCY_LIMIT="2",
                       SEARCH_FOLDER_ROOTS=f"{REPO},{GROCERY},{tmp_path}")
    classes = sorted(p for p in (REPO / "samples" / "catalogue").iterdir() if p.is_dir())[:4]
    before = sum(prepare_data_dir(server.workdir, folder, server.env)["indexed"]
                 for folder in classes)
    assert before > 0
    queries = image_files(GROCERY / "val")[::10][:20]
    server.start()
    try:
        admin = Client(server.url, verbose=False)
        admin.predict(str(GROCERY / "train" / "Fruit" / "Apple"), False,
                      api_name="/start_index")
        result = run_load(server, queries, users=USERS, seconds=SECONDS)
        status = admin.predict(api_name="/index_status")
        admin.predict(api_name="/stop_index")
        final = wait_job(admin, 120)
        assert server.alive()
    finally:
        code = server.stop()
    summary = result.summary()
    print(json.dumps(summary))
    assert result.errors == [], result.errors[:5]
    assert summary["searches"] >= USERS  # every user got answers, not just one
    assert 0 < summary["peak_rss_mb"] < MEMORY_BOUND_MB
    assert "running" in status[0] or "finished" in status[0], status[0]
    count = json_output(final["stats"]).get("count", 0)
    assert count > before  # the job really ran beside the searches
    assert "Traceback" not in server.log()
    assert code == 0  # SIGTERM mid-job: clean stop


def test_query_cache_is_bounded_in_memory(tmp_path: Path) -> None:
    """20 users uploading big phone photos must not pin 32 × 12 MB of decoded images."""
    from io import BytesIO

    from PIL import Image

    from search_core.config import Settings
    from search_core.local_index import LocalIndex
    from search_core.models.efficientnet import EfficientNetEmbedder
    from search_core.pipeline import CACHE_MAX_PIXELS, SearchPipeline

    settings = Settings(data_dir=tmp_path, sample_catalogue=None)
    embedder = EfficientNetEmbedder(settings.models_dir)  # never loaded: analysis only
    index = LocalIndex(tmp_path, dimension=embedder.dimension, model_id=embedder.model_id)
    pipeline = SearchPipeline(settings, detector=None, embedder=embedder, index=index)
    for number in range(12):
        image = Image.new("RGB", (2048, 1536), (number * 20, 80, 160))
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=70)
        pipeline.analyze(buffer.getvalue())
    cached = sum(a.image.width * a.image.height for a in pipeline._cache.values())
    assert 1 <= len(pipeline._cache) < 12 and cached <= CACHE_MAX_PIXELS
