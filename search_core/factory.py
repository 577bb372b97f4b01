"""The one place that turns configuration into concrete backends."""

from __future__ import annotations

from functools import lru_cache

from search_core.config import Settings
from search_core.errors import ConfigError
from search_core.interfaces import Detector, Embedder, VectorIndex
from search_core.pipeline import SearchPipeline


def build_detector(settings: Settings) -> Detector | None:
    if settings.detector == "none":
        return None
    if settings.detector == "rekognition":
        from search_core.aws.rekognition import RekognitionDetector

        return RekognitionDetector(settings)
    from search_core.models.detectors import build_local_detector

    return build_local_detector(settings)


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedder == "titan":
        from search_core.aws.titan import TitanEmbedder

        return TitanEmbedder(settings)
    if settings.embedder == "clip":
        from search_core.models.clip import ClipEmbedder

        return ClipEmbedder(settings.clip_model, batch_size=settings.batch_size)
    from search_core.models.efficientnet import EfficientNetEmbedder

    return EfficientNetEmbedder(
        settings.models_dir,
        threads=settings.onnx_threads,
        batch_size=settings.batch_size,
        crop_fraction=settings.view_crop,
    )


def build_index(settings: Settings, embedder: Embedder) -> VectorIndex:
    if settings.index == "opensearch":
        from search_core.aws.opensearch_index import OpenSearchIndex

        return OpenSearchIndex(settings, dimension=embedder.dimension, model_id=embedder.model_id)
    if settings.index == "local":
        from search_core.local_index import LocalIndex

        return LocalIndex(
            settings.data_dir,
            dimension=embedder.dimension,
            model_id=embedder.model_id,
            hnsw_threshold=settings.hnsw_threshold,
        )
    raise ConfigError(f"unknown index backend {settings.index!r}")


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
