"""Incremental indexing with the real EfficientNet model on real grocery photos."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from search_core.config import Settings
from search_core.factory import build_pipeline
from search_core.pipeline import SearchPipeline


def _copy_classes(grocery: Path, target: Path, classes: dict[str, int]) -> list[Path]:
    copied = []
    for name, count in classes.items():
        source = next(grocery.glob(f"train/**/{name}"))
        (target / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(source.glob("*.jpg"))[:count]:
            copied.append(Path(shutil.copy(photo, target / name / photo.name)))
    return copied


@pytest.fixture()
def pipeline(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> SearchPipeline:
    monkeypatch.setenv("SEARCH_DETECTOR", "none")
    monkeypatch.setenv("SEARCH_BATCH_SIZE", "4")
    return build_pipeline(Settings.from_env())


def test_incremental_dedupe_failures_replace_and_prune(
    pipeline: SearchPipeline, grocery: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    photos = _copy_classes(grocery, corpus, {"Banana": 4, "Lemon": 4, "Red-Bell-Pepper": 3})
    (corpus / "notes.txt").write_text("not an image, ignored")
    (corpus / "broken.jpg").write_bytes(b"<html>oops</html>")
    shutil.copy(photos[0], corpus / "Banana" / "copy-of-first.jpg")  # same bytes, other name

    first = pipeline.index_source(str(corpus))
    assert first.indexed == 11
    assert first.duplicates == 1 and first.not_images == 1
    assert [(Path(uri).name, reason) for uri, reason in first.failures] == [
        ("broken.jpg", "not an image: an HTML page")
    ]
    assert pipeline.index.count() == 12  # names: the copy is a name of the first's content
    assert len({item.sha256 for item in pipeline.index.items()}) == 11

    second = pipeline.index_source(str(corpus))  # nothing changed: nothing embedded again
    assert second.indexed == 0 and second.unchanged == 12

    shutil.copy(photos[5], photos[1])  # a file's content changed: replaced, not doubled
    photos[2].unlink()
    third = pipeline.index_source(str(corpus), prune=True)
    assert third.replaced == 1  # photos[1]'s old content left the index
    assert third.pruned == 1
    names = {item.uri: item.sha256 for item in pipeline.index.items()}
    assert str(photos[2]) not in names  # pruned
    assert names[str(photos[1])] == names[str(photos[5])]  # [1] now shows [5]'s content
    assert len(names) == 11 and len(set(names.values())) == 9


def test_stop_event_ends_at_a_batch_boundary(
    pipeline: SearchPipeline, grocery: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    _copy_classes(grocery, corpus, {"Banana": 10})
    stop = threading.Event()
    stop.set()
    report = pipeline.index_source(str(corpus), stop=stop)
    assert report.stopped and report.indexed == pipeline.index.count() <= 4
    rest = pipeline.index_source(str(corpus))
    assert pipeline.index.count() == 10 and rest.indexed == 10 - report.indexed


def test_background_job_reports_progress(
    pipeline: SearchPipeline, grocery: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    _copy_classes(grocery, corpus, {"Lemon": 6})
    job = pipeline.jobs.start(str(corpus))
    assert job.thread is not None
    job.thread.join(120)
    assert job.state == "finished", job.error
    assert job.to_dict()["indexed"] == 6
    with pytest.raises(Exception, match="outside the allowed folders"):
        pipeline.index_source("/etc")
