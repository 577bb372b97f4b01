"""The one place that turns configuration into concrete backends.

Every backend is built here, from :class:`Settings`, by one builder per name in the tables
below. The local model classes take plain values (``models/`` knows nothing about environment
variables, so benchmarks and tests construct them directly); the AWS backends take ``Settings``
because they share the client configuration of :mod:`search_core.aws.clients` (region, retries,
pool size). Adding a backend is one builder and one table row; a name in no table raises
:class:`ConfigError` instead of quietly falling back to the local backend.

Imports stay inside the builders: the offline app must start without boto3 or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import TypeVar

from search_core.config import Settings
from search_core.errors import ConfigError
from search_core.interfaces import Detector, Embedder, VectorIndex
from search_core.pipeline import SearchPipeline

T = TypeVar("T")


def _local_detector(settings: Settings) -> Detector:
    from search_core.models.detectors import MergedDetector
    from search_core.models.nanodet import NanoDetDetector
    from search_core.models.objectron_ssd import ObjectronSsdDetector

    threads = settings.onnx_threads
    return MergedDetector(
        [
            ObjectronSsdDetector(settings.models_dir, threads=threads),
            NanoDetDetector(settings.models_dir, threads=threads),
        ],
        min_confidence=settings.min_detection_confidence,
    )


def _rekognition_detector(settings: Settings) -> Detector:
    from search_core.aws.rekognition import RekognitionDetector

    return RekognitionDetector(settings)


def _efficientnet_embedder(settings: Settings, *, pair: bool = True) -> Embedder:
    """Lite0 + Lite2 (``efficientnet``, the default) or Lite0 alone (``efficientnet-lite0``)."""
    from search_core.models.efficientnet import EfficientNetEmbedder, EfficientNetPairEmbedder

    kind = EfficientNetPairEmbedder if pair else EfficientNetEmbedder
    return kind(
        settings.models_dir,
        threads=settings.onnx_threads,
        batch_size=settings.batch_size,
        crop_fraction=settings.view_crop,
    )


def _clip_embedder(settings: Settings) -> Embedder:
    from search_core.models.clip import ClipEmbedder

    return ClipEmbedder(settings.clip_model, batch_size=settings.batch_size)


def _titan_embedder(settings: Settings) -> Embedder:
    from search_core.aws.titan import TitanEmbedder

    return TitanEmbedder(settings)


def _local_index(settings: Settings, embedder: Embedder) -> VectorIndex:
    from search_core.local_index import LocalIndex

    return LocalIndex(
        settings.data_dir,
        dimension=embedder.dimension,
        model_id=embedder.model_id,
        hnsw_threshold=settings.hnsw_threshold,
    )


def _opensearch_index(settings: Settings, embedder: Embedder) -> VectorIndex:
    from search_core.aws.opensearch_index import OpenSearchIndex

    return OpenSearchIndex(settings, dimension=embedder.dimension, model_id=embedder.model_id)


#: SEARCH_DETECTOR -> builder (``none``: search whole images only)
DETECTORS: dict[str, Callable[[Settings], Detector | None]] = {
    "local": _local_detector,
    "rekognition": _rekognition_detector,
    "none": lambda _settings: None,
}
#: SEARCH_EMBEDDER -> builder
EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {
    "efficientnet": _efficientnet_embedder,
    "efficientnet-lite0": partial(_efficientnet_embedder, pair=False),
    "clip": _clip_embedder,
    "titan": _titan_embedder,
}
#: SEARCH_INDEX -> builder (the index stores vectors of the embedder's dimension and model)
INDEXES: dict[str, Callable[[Settings, Embedder], VectorIndex]] = {
    "local": _local_index,
    "opensearch": _opensearch_index,
}


def _builder(table: Mapping[str, T], variable: str, name: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"{variable}={name!r} is not one of {', '.join(sorted(table))}") from None


def build_detector(settings: Settings) -> Detector | None:
    return _builder(DETECTORS, "SEARCH_DETECTOR", settings.detector)(settings)


def build_embedder(settings: Settings) -> Embedder:
    return _builder(EMBEDDERS, "SEARCH_EMBEDDER", settings.embedder)(settings)


def build_index(settings: Settings, embedder: Embedder) -> VectorIndex:
    return _builder(INDEXES, "SEARCH_INDEX", settings.index)(settings, embedder)


def build_pipeline(settings: Settings | None = None) -> SearchPipeline:
    settings = settings or Settings.from_env()
    embedder = build_embedder(settings)
    return SearchPipeline(
        settings,
        detector=build_detector(settings),
        embedder=embedder,
        index=build_index(settings, embedder),
    )


@lru_cache(maxsize=1)
def get_pipeline() -> SearchPipeline:
    """The process's one pipeline (models are loaded once and shared by every request)."""
    return build_pipeline()
