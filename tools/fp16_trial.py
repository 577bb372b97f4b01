"""Compares an fp32 and an fp16 EfficientNet ONNX file: CPU speed and GroceryStore retrieval.

Used by ``tools/build_models.py --try-fp16`` to decide (and document) whether the smaller fp16
file is worth shipping. Retrieval: every val image queries the train images (exact cosine);
R@k counts a hit when one of the top k has the same fine class.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from search_core.models.efficientnet import preprocess
from search_core.vectors import l2_normalise

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery"


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def speed(sess: ort.InferenceSession, batch: int, repeats: int = 5) -> float:
    """Median ms per image."""
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)
    sess.run(["features"], {"input": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(["features"], {"input": x})
        times.append((time.perf_counter() - start) * 1000 / batch)
    return float(np.median(times))


def load_split(name: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split(",") for line in (GROCERY / f"{name}.txt").read_text().splitlines() if line]
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    images = [Image.open(GROCERY / row[0].strip()).convert("RGB") for row in rows]
    return preprocess(images), np.array([int(row[1]) for row in rows])


def embed(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    parts = [
        sess.run(["features"], {"input": batch[i : i + 32]})[0] for i in range(0, len(batch), 32)
    ]
    return l2_normalise(np.concatenate(parts).astype(np.float32))


def recall(queries: np.ndarray, q_labels: np.ndarray, base: np.ndarray, b_labels: np.ndarray
           ) -> dict[str, float]:
    order = np.argsort(-(queries @ base.T), axis=1)
    hits = b_labels[order] == q_labels[:, None]
    return {f"R@{k}": round(float(hits[:, :k].any(axis=1).mean()), 3) for k in (1, 5, 10)}


def compare(fp32: Path, fp16: Path, limit: int = 0) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    data = None
    if (GROCERY / "val.txt").exists():
        data = (load_split("val", limit), load_split("train", limit * 4 if limit else 0))
    for label, path in (("fp32", fp32), ("fp16", fp16)):
        sess = session(path)
        row = {
            "MB": round(path.stat().st_size / 1e6, 2),
            "ms_b1": round(speed(sess, 1), 1),
            "ms_b16": round(speed(sess, 16), 1),
        }
        if data is not None:
            (val_x, val_y), (train_x, train_y) = data
            row.update(recall(embed(sess, val_x), val_y, embed(sess, train_x), train_y))
        results[label] = row
        print(f"[fp16 trial] {label}: {row}", flush=True)
    return results
