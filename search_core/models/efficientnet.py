"""EfficientNet-Lite (ImageNet) as the offline image embedder, plus free ImageNet keywords.

Two embedders share this code:

- :class:`EfficientNetPairEmbedder` (``SEARCH_EMBEDDER=efficientnet``, the default): Lite0 and
  Lite2 in one ONNX graph (``efficientnet_lite0_lite2.onnx``, input ``[B,3,260,260]``; Lite0
  sees the view resized to 224 inside the graph), 2 x 1280 = 2560-d vectors. Two networks of
  different depth and resolution make different mistakes: on GroceryStore train/ (held-out
  photos least like the rest of their class, the adaptation fitted on the rest) Recall@1 is
  0.860 for Lite0, 0.846 for Lite2 and 0.869-0.875 for the pair (``bench/quality.py``).
- :class:`EfficientNetEmbedder` (``SEARCH_EMBEDDER=efficientnet-lite0``): Lite0 alone
  (``efficientnet_lite0.onnx``, ``[B,3,224,224]``), 1280-d: about a third of the compute and
  half the storage per vector, for slow machines and very large catalogues.

Each file's graph normalises the uint8 RGB input itself and has the pooled ``features`` (before
the classifier) and ``logits`` outputs, so one forward pass yields the search vector and keyword
labels. The export bakes TensorFlow-"SAME" padding for its input size, so inputs must be exactly
that size; the batch size may vary.

Vectors are power-normalised (square root of each pooled activation, then unit length, per
network; the pair's halves are concatenated and scaled to unit length). The activations are
non-negative (ReLU6) and a few of them dominate the dot product; the square root evens them out
(the "power law" / Hellinger normalisation of Jegou et al. and RootSIFT). On grocery train/ it
gained for every view and model tried (Lite0, 80 % view: held-out Recall@1 0.851 -> 0.860).

:func:`preprocess` is separate from :meth:`EfficientNetEmbedder.forward` so that an ingest
pipeline can decode and resize images in worker threads while another thread runs inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from search_core.errors import ImageError, NotSupportedError
from search_core.models.base import OnnxModel
from search_core.vectors import l2_normalise

INPUT_SIZE = 224  # Lite0's input
PAIR_INPUT_SIZE = 260  # Lite2's input: the pair's one input
#: Fraction of the short side the model sees (centre crop). ImageNet's habit is 87.5 % (short
#: side 256, crop 224); photos of products in use show more background than that. 80 % was
#: chosen on GroceryStore train/ alone (``python bench/quality.py --select-crop``: the quarter of
#: each class least like the rest searched against the rest, adaptation fitted on the rest;
#: Recall@1 0.902 / 0.907 / 0.898 at 70 / 80 / 87.5 % for the pair). Queries and catalogue must
#: use the same value: it is part of the model id, so an index built with another view is
#: detected as stale (SEARCH_VIEW_CROP).
DEFAULT_CROP_FRACTION = 0.8
LABELS_FILE = "imagenet_labels.txt"


LITE0 = "efficientnet-lite0"
PAIR = "efficientnet-lite0-lite2"


def model_id_for(crop_fraction: float, family: str = PAIR) -> str:
    """e.g. ``efficientnet-lite0-lite2-c80-sqrt``: the networks, the view and the power
    normalisation, so that vectors embedded any other way never share an index (indexes built
    before the power normalisation, ``efficientnet-lite0`` or ``efficientnet-lite0-c80``, are
    reported as built with another model and re-indexed)."""
    return f"{family}-c{round(crop_fraction * 100)}-sqrt"


def power_normalise(features: np.ndarray) -> np.ndarray:
    """Unit-length square roots of non-negative pooled activations (see the module docstring)."""
    return l2_normalise(np.sqrt(np.maximum(np.asarray(features, dtype=np.float32), 0.0)))


def preprocess_one(
    image: Image.Image, crop_fraction: float = DEFAULT_CROP_FRACTION, size: int = INPUT_SIZE
) -> np.ndarray:
    """``[3,size,size]`` uint8: RGB, short side to ``size / crop_fraction`` (bicubic), centre
    crop ``size`` (0.875 at 224 is the classic 256 -> 224).

    The model itself applies the EfficientNet-Lite normalisation ``(x - 127) / 128`` (ImageNet
    mean/std measurably hurts this checkpoint), so this stays in uint8: OpenCV's resize and one
    transpose cost about 0.5 ms per image, against 2.6 ms for Pillow plus a float conversion,
    and this work competes with inference for the same cores while indexing."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("the image is empty")
    short_side = max(size, round(size / crop_fraction))
    scale = short_side / min(width, height)
    if scale < 0.5:
        # Big photos: a cheap integer box-filter reduction first (anti-aliasing), so the
        # bicubic pass below never shrinks by more than 2x.
        factor = int(0.5 / scale)
        image = image.reduce(factor)
        width, height = image.size
        scale = short_side / min(width, height)
    new_w = max(short_side, round(width * scale))
    new_h = max(short_side, round(height * scale))
    resized = cv2.resize(np.asarray(image), (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    cropped = resized[top : top + size, left : left + size]
    return np.ascontiguousarray(cropped.transpose(2, 0, 1))


def preprocess(
    images: Sequence[Image.Image], crop_fraction: float = DEFAULT_CROP_FRACTION,
    size: int = INPUT_SIZE,
) -> np.ndarray:
    """``[N,3,size,size]`` uint8 batch ready for :meth:`EfficientNetEmbedder.forward`."""
    if not images:
        return np.zeros((0, 3, size, size), dtype=np.uint8)
    return np.stack([preprocess_one(image, crop_fraction, size) for image in images])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


class EfficientNetEmbedder(OnnxModel):
    """Image-only :class:`~search_core.interfaces.Embedder` (cosine): Lite0 alone, 1280-d."""

    labels_file = LABELS_FILE
    filename = "efficientnet_lite0.onnx"
    family = LITE0
    input_size = INPUT_SIZE
    #: the pooled feature outputs, each power-normalised, concatenated in this order
    feature_outputs: tuple[str, ...] = ("features",)
    model_id = model_id_for(DEFAULT_CROP_FRACTION, LITE0)
    dimension = 1280
    #: bench/near_duplicates.py: the cosine that folds edited copies, not distinct products
    near_duplicate_threshold = 0.89
    supports_text = False

    def __init__(
        self,
        models_dir: Path,
        threads: int = 0,
        batch_size: int = 16,
        crop_fraction: float = DEFAULT_CROP_FRACTION,
    ) -> None:
        super().__init__(models_dir, threads)
        self.batch_size = max(1, batch_size)
        self.crop_fraction = crop_fraction
        self.model_id = model_id_for(crop_fraction, self.family)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess(images, self.crop_fraction, self.input_size)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit-length float32 vectors ``[N,dimension]``, ImageNet logits ``[N,1000]``) for a
        preprocessed batch of any size (run in chunks of ``batch_size``)."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dimension), np.float32), np.zeros((0, 1000), np.float32)
        feats, logits = [], []
        names = [*self.feature_outputs, "logits"]
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(batch[start : start + self.batch_size], dtype=np.uint8)
            *features, chunk_logits = self.session.run(names, {"input": chunk})
            feats.append(np.concatenate([power_normalise(part) for part in features], axis=1))
            logits.append(chunk_logits)
        return l2_normalise(np.concatenate(feats)), np.concatenate(logits)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = [
            self.forward(self.preprocess(images[start : start + self.batch_size]))[0]
            for start in range(0, len(images), self.batch_size)
        ]
        if not vectors:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(vectors)

    def embed_query(self, image: Image.Image | None = None, text: str | None = None) -> np.ndarray:
        if text is not None and text.strip():
            raise NotSupportedError(
                "EfficientNet-Lite understands images only, so text queries are not possible; "
                "set SEARCH_EMBEDDER=clip or titan for text and image+text search"
            )
        if image is None:
            raise ImageError("a query image is needed")
        return np.asarray(self.embed_images([image])[0])

    def keywords(
        self, logits: np.ndarray, top_k: int = 5, min_probability: float = 0.05
    ) -> list[list[tuple[str, float]]]:
        """Top ImageNet labels per row of ``logits`` as (name, probability 0-1)."""
        probabilities = softmax(logits.astype(np.float64))
        labels = self.labels
        result = []
        for row in probabilities:
            order = np.argsort(-row)[:top_k]
            result.append(
                [(labels[i], float(row[i])) for i in order if row[i] >= min_probability]
            )
        return result

    def embed_with_keywords(
        self, images: Sequence[Image.Image], top_k: int = 5, min_probability: float = 0.05
    ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Vectors and, from the same forward pass, the top ImageNet labels of each image."""
        vectors, logits = self.forward(self.preprocess(images))
        return vectors, self.keywords(logits, top_k, min_probability)


class EfficientNetPairEmbedder(EfficientNetEmbedder):
    """Lite0 + Lite2 in one graph, 2560-d (the default; see the module docstring). Its
    ``logits`` are the log of the two networks' mean ImageNet probabilities, so keywords come
    from the ensemble."""

    filename = "efficientnet_lite0_lite2.onnx"
    family = PAIR
    input_size = PAIR_INPUT_SIZE
    feature_outputs = ("features_lite0", "features_lite2")
    model_id = model_id_for(DEFAULT_CROP_FRACTION, PAIR)
    dimension = 2560
    near_duplicate_threshold = 0.92
