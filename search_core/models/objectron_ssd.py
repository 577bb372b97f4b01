"""MediaPipe Objectron's 2-D SSD-MobileNetV2 (24 Open Images v4 classes) on ONNX Runtime.

The graph ends before post-processing (raw box offsets and class logits per anchor), as MediaPipe
does its decoding in C++; the anchors and the decoding are therefore reproduced here with the
parameters of MediaPipe's objectron oid_v4 graph. Strong on shoes (Footwear, Boot, High heels),
people, furniture and laptops; weak on small objects (300 px input).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from search_core.models.onnx_detector import OnnxDetector
from search_core.types import Detection

INPUT_SIZE = 300
LABELS_FILE = "ssd_oidv4_labels.txt"
INPUT_NAME = "normalized_input_image_tensor"
BOXES_NAME = "raw_outputs/box_encodings"
SCORES_NAME = "raw_outputs/class_predictions"

# SsdAnchorsCalculator options of MediaPipe's objectron oid_v4 detection graph.
STRIDES = (16, 32, 64, 128, 256, 512)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w


def _scale(index: int, count: int) -> float:
    return MIN_SCALE + (MAX_SCALE - MIN_SCALE) * index / (count - 1)


@lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """``[1917, 4]`` anchors (y_center, x_center, height, width) as fractions, in the order of
    the model's outputs: per layer, row-major over the feature map, then per box shape."""
    rows = []
    for layer, stride in enumerate(STRIDES):
        if layer == 0:  # reduce_boxes_in_lowest_layer
            shapes = [(0.1, 1.0), (_scale(0, len(STRIDES)), 2.0), (_scale(0, len(STRIDES)), 0.5)]
        else:
            scale = _scale(layer, len(STRIDES))
            shapes = [(scale, ratio) for ratio in ASPECT_RATIOS]
            following = 1.0 if layer == len(STRIDES) - 1 else _scale(layer + 1, len(STRIDES))
            shapes.append((math.sqrt(scale * following), 1.0))  # interpolated scale
        size = math.ceil(INPUT_SIZE / stride)
        for y in range(size):
            for x in range(size):
                for scale, ratio in shapes:
                    root = math.sqrt(ratio)
                    rows.append(((y + 0.5) / size, (x + 0.5) / size, scale / root, scale * root))
    return np.asarray(rows, dtype=np.float32)


def decode_boxes(raw: np.ndarray) -> np.ndarray:
    """Raw ``[N,4]`` offsets -> ``[N,4]`` (x0, y0, x1, y1) fractions of the image."""
    a = anchors()
    y_center = raw[:, 0] / BOX_SCALES[0] * a[:, 2] + a[:, 0]
    x_center = raw[:, 1] / BOX_SCALES[1] * a[:, 3] + a[:, 1]
    height = np.exp(raw[:, 2] / BOX_SCALES[2]) * a[:, 2]
    width = np.exp(raw[:, 3] / BOX_SCALES[3]) * a[:, 3]
    return np.stack(
        [x_center - width / 2, y_center - height / 2, x_center + width / 2, y_center + height / 2],
        axis=1,
    )


class ObjectronSsdDetector(OnnxDetector):
    """:class:`~search_core.interfaces.Detector` for 23 everyday Open Images classes."""

    labels_file = LABELS_FILE
    label_offset = 1  # line 0 of the label map is the background class
    filename = "ssd_mobilenetv2_oidv4.onnx"
    name = "objectron-ssd"

    @staticmethod
    def preprocess(image: Image.Image) -> np.ndarray:
        """``[1,3,300,300]``: RGB stretched to 300x300 (as MediaPipe feeds it), x/127.5 - 1."""
        resized = image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        return array.transpose(2, 0, 1)[None]

    def detect(self, image: Image.Image) -> list[Detection]:
        raw_boxes, logits = self.session.run(
            [BOXES_NAME, SCORES_NAME], {INPUT_NAME: self.preprocess(image)}
        )
        scores = 1.0 / (1.0 + np.exp(-logits[0, :, 1:]))  # column 0 is the background
        anchor_ids, class_ids = np.nonzero(scores >= self.min_score)
        if len(anchor_ids) == 0:
            return []
        boxes = decode_boxes(raw_boxes[0])[anchor_ids]
        kept_scores = scores[anchor_ids, class_ids]
        return self.to_detections(boxes, kept_scores, class_ids)
