"""Optional CLIP embedder through Hugging Face ``transformers`` (``SEARCH_EMBEDDER=clip``).

CLIP puts images and text in one space, which makes text queries ("red running shoe") and image
+ text queries possible. Its weights are downloaded from the hub on first use, so it needs
internet once (or a local folder in ``SEARCH_CLIP_MODEL``); the offline default stays
EfficientNet. ``open_clip`` is deliberately not used: it needs torchvision, which pulls a multi-GB
CUDA build of torch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from search_core.errors import BackendError, SearchError
from search_core.vectors import l2_normalise


def _tensor(output: Any) -> Any:
    """transformers 5 may wrap features in a model output; older versions return a tensor."""
    if hasattr(output, "pooler_output") and not hasattr(output, "shape"):
        return output.pooler_output
    return output


def _projection_dim(config: Any, model_name: str) -> int:
    """The joint embedding size; a config without one is not a CLIP checkpoint."""
    dimension = config.projection_dim
    if not dimension:
        raise BackendError(f"{model_name!r} is not a CLIP model (its config has no projection_dim)")
    return int(dimension)


class ClipEmbedder:
    """:class:`~search_core.interfaces.Embedder` for any ``CLIPModel`` checkpoint."""

    supports_text = True

    def __init__(self, model_name: str, *, batch_size: int = 16, threads: int = 0) -> None:
        self.model_name = model_name
        self.model_id = f"clip:{model_name}"
        self.batch_size = max(1, batch_size)
        self.threads = threads
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._dimension: int | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            from transformers import CLIPConfig

            try:
                config = CLIPConfig.from_pretrained(self.model_name)
            except (OSError, ValueError) as exc:
                raise BackendError(
                    f"cannot load CLIP model {self.model_name!r} (needs internet on first use, "
                    f"or a local folder): {exc}"
                ) from exc
            self._dimension = _projection_dim(config, self.model_name)
        return self._dimension

    def load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import CLIPModel, CLIPProcessor

            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                processor = CLIPProcessor.from_pretrained(self.model_name)
                # Any: transformers types from_pretrained loosely (eval() is untyped there)
                model: Any = CLIPModel.from_pretrained(self.model_name)
            except (OSError, ValueError) as exc:
                raise BackendError(
                    f"cannot load CLIP model {self.model_name!r} (needs internet on first use, "
                    f"or a local folder): {exc}"
                ) from exc
            model.eval()
            self._processor = processor
            self._model = model
            self._dimension = _projection_dim(model.config, self.model_name)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        self.load()
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            inputs = self._processor(images=batch, return_tensors="pt")
            with torch.inference_mode():
                features = _tensor(self._model.get_image_features(**inputs))
            chunks.append(features.float().numpy())
        if not chunks:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalise(np.concatenate(chunks))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        inputs = self._processor(
            text=list(texts), return_tensors="pt", padding=True, truncation=True
        )
        with torch.inference_mode():
            features = _tensor(self._model.get_text_features(**inputs))
        return l2_normalise(features.float().numpy())

    def embed_query(self, image: Image.Image | None = None, text: str | None = None) -> np.ndarray:
        """Image, text, or both: for both, the normalised sum of the two unit vectors, the
        usual way to steer an image query with words in a joint embedding space."""
        parts = []
        if image is not None:
            parts.append(self.embed_images([image])[0])
        if text is not None and text.strip():
            parts.append(self.embed_texts([text.strip()])[0])
        if not parts:
            raise SearchError("a query image or text is needed")
        return l2_normalise(np.sum(parts, axis=0))
