"""Recall of the offline detectors on COCO128 (YOLO labels), per model and merged, and speed.

    python bench/detector.py            # all 128 images (~1 min on 2 cores)
    python bench/detector.py --quick    # the first 40 images (< 30 s)

Only labelled objects of classes a detector can name count for its recall (Objectron's SSD knows
~15 COCO classes through its Open Images labels, NanoDet all 80); a ground-truth box is found when
a detection of the same equivalence group (see ``search_core.models.detectors.SYNONYMS``)
overlaps it with IoU >= 0.5, matching greedily by confidence, one detection per object.
Precision counts detections whose group is a COCO class. Speed is the wall time of
``detect()`` per image (resize + inference + decoding) with the given ONNX threads; "merged" is
both models plus the merge. Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import SHARED_DATA, emit, machine, median, require_dir, table
from PIL import Image

from search_core.config import MODELS_DIR
from search_core.models.detectors import MergedDetector, canonical, known_groups
from search_core.models.nanodet import NanoDetDetector
from search_core.models.objectron_ssd import ObjectronSsdDetector
from search_core.types import Box, Detection

COCO128 = SHARED_DATA / "coco128"
IOU = 0.5


@dataclass
class Tally:
    known: set[str]
    objects: int = 0
    found: int = 0
    detections: int = 0
    correct: int = 0
    ms: list[float] = field(default_factory=list)
    per_class: dict[str, list[int]] = field(default_factory=dict)  # group -> [found, total]

    def recall(self) -> float:
        return self.found / self.objects if self.objects else float("nan")

    def precision(self) -> float:
        return self.correct / self.detections if self.detections else float("nan")


def ground_truth(label_file: Path, names: list[str]) -> list[tuple[str, Box]]:
    """(group, box) per labelled object; YOLO rows are ``class cx cy w h`` as fractions."""
    objects = []
    if not label_file.exists():
        return objects
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:])
        objects.append((canonical(names[cls])[1], Box(cx - w / 2, cy - h / 2, w, h)))
    return objects


def score(tally: Tally, truth: list[tuple[str, Box]], found: list[Detection],
          coco_groups: set[str]) -> None:
    relevant = [(g, b) for g, b in truth if g in tally.known]
    matched = [False] * len(relevant)
    for detection in sorted(found, key=lambda d: -d.confidence):
        group = canonical(detection.label)[1]
        if group not in coco_groups:
            continue
        tally.detections += 1
        best, best_iou = -1, IOU
        for i, (g, box) in enumerate(relevant):
            if not matched[i] and g == group and detection.box.iou(box) >= best_iou:
                best, best_iou = i, detection.box.iou(box)
        if best >= 0:
            matched[best] = True
            tally.correct += 1
    tally.objects += len(relevant)
    tally.found += sum(matched)
    for (group, _), hit in zip(relevant, matched, strict=True):
        counts = tally.per_class.setdefault(group, [0, 0])
        counts[0] += int(hit)
        counts[1] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first 40 images only")
    parser.add_argument("--limit", type=int, default=0, help="first N images (0 = all)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per model")
    parser.add_argument("--min-confidence", type=float, default=35.0, help="percent")
    parser.add_argument("--data", type=Path, default=COCO128)
    args = parser.parse_args()

    data = require_dir(args.data)
    names = (data / "classes.txt").read_text().splitlines()
    images = sorted((data / "images").glob("*.jpg"))
    limit = 40 if args.quick else args.limit
    if limit:
        images = images[:limit]

    ssd = ObjectronSsdDetector(MODELS_DIR, threads=args.threads)
    nano = NanoDetDetector(MODELS_DIR, threads=args.threads)
    models = {"objectron-ssd": ssd, "nanodet": nano}
    mergers = {
        key: MergedDetector([model], min_confidence=args.min_confidence)
        for key, model in models.items()
    }
    merged = MergedDetector([ssd, nano], min_confidence=args.min_confidence)
    coco_groups = known_groups(names)
    tallies = {
        "objectron-ssd": Tally(known_groups(ssd.labels) & coco_groups),
        "nanodet": Tally(known_groups(nano.labels) & coco_groups),
    }
    tallies["merged"] = Tally(tallies["objectron-ssd"].known | tallies["nanodet"].known)
    for model in models.values():  # load and warm up outside the timings
        model.detect(Image.new("RGB", (64, 64)))

    started = time.monotonic()
    for path in images:
        image = Image.open(path).convert("RGB")
        truth = ground_truth(data / "labels" / f"{path.stem}.txt", names)
        raw: list[Detection] = []
        total_ms = 0.0
        for key, model in models.items():
            t0 = time.perf_counter()
            detections = model.detect(image)
            ms = (time.perf_counter() - t0) * 1000
            total_ms += ms
            tallies[key].ms.append(ms)
            score(tallies[key], truth, mergers[key].merge(detections), coco_groups)
            raw.extend(detections)
        t0 = time.perf_counter()
        final = merged.merge(raw)
        tallies["merged"].ms.append(total_ms + (time.perf_counter() - t0) * 1000)
        score(tallies["merged"], truth, final, coco_groups)
    elapsed = time.monotonic() - started

    rows = [
        [key, len(t.known), t.objects, t.found, round(t.recall(), 3), round(t.precision(), 3),
         round(median(t.ms), 1), round(sum(t.ms) / len(t.ms), 1)]
        for key, t in tallies.items()
    ]
    print(f"COCO128: {len(images)} images, IoU {IOU}, min confidence {args.min_confidence}%, "
          f"{args.threads} ONNX threads per model, {elapsed:.0f} s")
    print(table(rows, ["model", "classes", "objects", "found", "recall", "precision",
                       "ms median", "ms mean"]))
    per_class = sorted(tallies["merged"].per_class.items(), key=lambda kv: -kv[1][1])[:12]
    print()
    print(table([[g, n, t, round(n / t, 3)] for g, (n, t) in per_class],
                ["group (merged)", "found", "objects", "recall"]))
    emit({
        "bench": "detector",
        "dataset": "coco128",
        "images": len(images),
        "iou": IOU,
        "min_confidence": args.min_confidence,
        "threads": args.threads,
        **{
            key.replace("-", "_"): {
                "classes": len(t.known),
                "objects": t.objects,
                "recall": round(t.recall(), 4),
                "precision": round(t.precision(), 4),
                "ms_per_image_median": round(median(t.ms), 1),
                "ms_per_image_mean": round(sum(t.ms) / len(t.ms), 1),
            }
            for key, t in tallies.items()
        },
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
