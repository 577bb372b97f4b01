"""Every backend has the capabilities the code finds with ``isinstance`` (interfaces.py).

Why: a fast path used to be found with ``getattr(embedder, "forward", None)``, so a renamed or
misspelt hook silently turned it off. Now a capability is a Protocol, and this test pins which
backend has which: renaming ``forward`` or ``build_graph`` fails here instead of making indexing
quietly slower. Objects are built without loading any model or calling any service.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search_core.config import Settings
from search_core.errors import ConfigError
from search_core.factory import (
    DETECTORS,
    EMBEDDERS,
    INDEXES,
    build_detector,
    build_embedder,
    build_index,
)
from search_core.interfaces import (
    Detector,
    Embedder,
    EventuallyConsistent,
    ExpectsLookups,
    KeywordEmbedder,
    ListsVectors,
    Loadable,
    LooksUpItems,
    LooksUpVectors,
    PartialBatchEmbedder,
    PrefersBatchSize,
    PreprocessingEmbedder,
    SelectsVectors,
    VectorIndex,
)

CAPABILITIES = (
    Loadable,
    PreprocessingEmbedder,
    PartialBatchEmbedder,
    PrefersBatchSize,
    EventuallyConsistent,
    ExpectsLookups,
    ListsVectors,
    LooksUpVectors,
    LooksUpItems,
    SelectsVectors,
    KeywordEmbedder,
)


def _has(obj: object) -> set[type]:
    return {capability for capability in CAPABILITIES if isinstance(obj, capability)}


def test_local_backends(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    embedder = build_embedder(settings)
    assert isinstance(embedder, Embedder)
    assert _has(embedder) == {Loadable, PreprocessingEmbedder, KeywordEmbedder}
    assert not embedder.loaded  # lazy: nothing was loaded to answer isinstance

    detector = build_detector(settings)
    assert isinstance(detector, Detector)
    assert _has(detector) == {Loadable}
    assert not detector.loaded

    index = build_index(settings, embedder)
    assert isinstance(index, VectorIndex)
    assert _has(index) == {ListsVectors, LooksUpVectors, LooksUpItems}


def test_aws_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    settings = Settings(
        detector="rekognition",
        embedder="titan",
        index="opensearch",
        opensearch_endpoint="https://abc.us-east-1.aoss.amazonaws.com",
    )
    embedder = build_embedder(settings)
    assert isinstance(embedder, Embedder)
    assert _has(embedder) == {PartialBatchEmbedder, PrefersBatchSize}
    assert embedder.preferred_batch_size > settings.batch_size

    detector = build_detector(settings)
    assert isinstance(detector, Detector) and _has(detector) == set()

    index = build_index(settings, embedder)  # no request is sent before the first call
    assert isinstance(index, VectorIndex)
    assert _has(index) == {
        EventuallyConsistent, ExpectsLookups, ListsVectors, LooksUpVectors, LooksUpItems,
        SelectsVectors,
    } and index.serverless


def test_clip_is_loadable_without_loading() -> None:
    """Not checked against Embedder: its ``dimension`` reads the model config from the hub."""
    from search_core.models.clip import ClipEmbedder

    clip = ClipEmbedder("openai/clip-vit-base-patch32")
    assert _has(clip) == {Loadable} and not clip.loaded


def test_a_misspelt_hook_is_not_a_capability() -> None:
    class Misspelt:
        def preprocess(self, images: object) -> None: ...

        def foward(self, batch: object) -> None: ...

    assert not isinstance(Misspelt(), PreprocessingEmbedder)


def test_unknown_backend_names_raise(tmp_path: Path) -> None:
    """A typo in a backend name is an error, not a silent fall-back to the local backend
    (Settings() skips validation, as a caller building one by hand may)."""
    for build, field in ((build_detector, "detector"), (build_embedder, "embedder")):
        with pytest.raises(ConfigError, match="is not one of"):
            build(Settings(data_dir=tmp_path, **{field: "efficientnett"}))
    embedder = build_embedder(Settings(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="SEARCH_INDEX='faiss' is not one of local, opensearch"):
        build_index(Settings(data_dir=tmp_path, index="faiss"), embedder)


def test_factory_builds_every_choice_config_accepts() -> None:
    from search_core.config import CHOICES

    assert set(DETECTORS) == CHOICES["detector"]
    assert set(EMBEDDERS) == CHOICES["embedder"]
    assert set(INDEXES) == CHOICES["index"]
