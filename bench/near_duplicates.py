"""Calibrates SEARCH_NEAR_DUPLICATE: the cosine above which two catalogue images count as one.

Positives are edited copies of GroceryStore photos, the copies a catalogue really holds: JPEG
re-encoded at quality 50, resized to half, cropped by 5 % on each side, brightened by 10 %.
Negatives are the hardest distinct photos there are: for each photo, its most similar *other*
photo of the same fine-grained product (same shelf, same product, another shot). The chosen
threshold folds at least 99 % of the copies while folding (almost) no distinct photo.

    python bench/near_duplicates.py [--per-class 3]
"""

from __future__ import annotations

import argparse
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import GROCERY, emit, machine, percentile, require_dir, table
from PIL import Image, ImageEnhance

from search_core.config import Settings
from search_core.factory import build_embedder

EDITS = {
    "jpeg q50": lambda im: Image.open(_jpeg(im, 50)).convert("RGB"),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "crop 5 %": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
    "brighter 10 %": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
}


def _jpeg(image: Image.Image, quality: int) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return buffer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=3, help="photos per fine class")
    args = parser.parse_args()
    root = require_dir(GROCERY / "train")
    by_class: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.jpg")):
        by_class[path.parent].append(path)
    photos = [p for paths in by_class.values() for p in paths[: args.per_class]]
    embedder = build_embedder(Settings.from_env())
    images = [Image.open(p).convert("RGB") for p in photos]
    originals = embedder.embed_images(images)
    positives: dict[str, np.ndarray] = {}
    for name, edit in EDITS.items():
        edited = embedder.embed_images([edit(im) for im in images])
        positives[name] = np.sum(originals * edited, axis=1)
    classes = np.array([str(p.parent) for p in photos])
    similarity = originals @ originals.T
    np.fill_diagonal(similarity, -1.0)
    same = classes[:, None] == classes[None, :]
    hardest = np.where(same, similarity, -1.0).max(axis=1)
    hardest = hardest[hardest > -1.0]
    every_other = similarity[np.triu_indices(len(photos), 1)]
    copies = np.concatenate(list(positives.values()))
    rows = [
        [
            name,
            f"{values.min():.3f}",
            f"{percentile(values.tolist(), 1):.3f}",
            f"{np.median(values):.3f}",
        ]
        for name, values in positives.items()
    ]
    rows.append(
        [
            "distinct, same product (hardest)",
            f"{hardest.min():.3f}",
            f"{percentile(hardest.tolist(), 99):.3f} (p99)",
            f"{np.median(hardest):.3f}",
        ]
    )
    print(f"{len(photos)} photos, {len(by_class)} classes, {embedder.model_id}")
    print(table(rows, ["pairs", "min", "p1 (copies) / p99", "median"]))
    candidates = np.round(np.arange(0.85, 0.991, 0.01), 2)
    sweep = []
    for threshold in candidates:
        folded_copies = float((copies >= threshold).mean())
        folded_distinct = float((every_other >= threshold).sum())
        sweep.append([f"{threshold:.2f}", f"{100 * folded_copies:.1f} %", int(folded_distinct)])
    print(table(sweep, ["threshold", "copies folded", "distinct pairs folded (of all)"]))
    # The highest threshold that still folds 99 % of the copies: as few distinct photos lost
    # to folding as possible.
    chosen = max(
        (t for t in candidates if (copies >= t).mean() >= 0.99), default=float(candidates[0])
    )
    print(f"chosen threshold: {chosen:.2f}")
    emit(
        {
            "bench": "near_duplicates",
            "photos": len(photos),
            "threshold": float(chosen),
            "copies_p1": round(percentile(copies.tolist(), 1), 4),
            "distinct_same_product_p99": round(percentile(hardest.tolist(), 99), 4),
            "distinct_pairs_folded": int((every_other >= chosen).sum()),
            "machine": machine(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
