"""Retrieval quality of every relevance component, on two catalogue shapes, in one run.

    python bench/quality.py                 # grocery val -> train and val -> a flat folder
    python bench/quality.py --quick         # 60 queries
    python bench/quality.py --data-dir D    # keep the indexes in D (reruns skip embedding)
    python bench/quality.py --select-crop   # choose SEARCH_EMBEDDER and SEARCH_VIEW_CROP on
                                            # train/ alone, then report val -> train for them
    python bench/quality.py --select-crop --select-only   # the choice alone

Catalogues (built from ../shared/data/grocery; a query's class is its fine class):

- ``train``: GroceryStore train/ (2,640 photos, one folder per class: the adaptation can learn).
- ``flat3``: 3 photos per class of train/ copied into ONE folder (243 images, no labels: the
  adaptation must say "flat" and keep the plain embedding; the class is in the file name).
- ``folders3``: the same 243 photos in their class folders (3 per class: little to learn from).

Configurations, each run through SearchPipeline as the app runs it (analyse, choose, crop, embed,
search): ``before`` (Lite0 alone, the 87.5 % view, no adaptation, detector-only auto: the seed's
pipeline, except that vectors are now power-normalised), ``whole`` and ``auto`` of the new
default, and the new default with each component switched off. Queries are
val/ (296), never used for fitting or choosing: the adaptation fits on the catalogue alone and
its "no close match" threshold from the catalogue's own scores; the share of val queries and
of 128 COCO photos (no groceries) reported as "no close match" is printed too. Ends with one
JSON line.

``--select-crop``: how the embedder and the view's crop fraction (``SEARCH_EMBEDDER``,
``SEARCH_VIEW_CROP``) are chosen without val/. GroceryStore train/ is split by class: the held-out
quarter of each class is the photos LEAST like the rest of their class (lowest best cosine to a
same-class photo, ``adaptation.held_out_mask``, as the adaptation's own on/off check holds out;
here in the plain embedding of the Lite0 87.5 % view that shipped before, so one fixed set for
every candidate). Why not the last quarter in file order (the first selection's split):
neighbouring files are shots of one session, a held-out photo then has
a near-twin in the catalogue part (median best same-class cosine 0.877, against 0.735 for val/
photos) and every candidate scores 0.97-0.985 Recall@1 there, too close to tell apart. The
least-alike quarter (median 0.787) leaves room (0.73 plain, 0.85-0.88 adapted). The rest of
train/ is the catalogue, copied into class folders. For each candidate (embedder x view) the
catalogue is indexed through the pipeline (so the adaptation fits on the catalogue part alone, as
in the product) and the held-out photos are searched with the default ``auto``. The winner has the
best Recall@1, ties broken by Recall@10, then mAP@10 (the rule of the first selection, kept); the
val report then uses it. At the chosen configuration the same split also rates
SEARCH_RESULTS_PER_LABEL (off by default); the val report shows the default with
PER_LABEL_OPTION as an extra row.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import GROCERY, SHARED_DATA, emit, image_files, machine, require_dir, table

from search_core.adaptation import held_out_mask
from search_core.config import Settings
from search_core.evaluation import KS, average_precision
from search_core.factory import build_pipeline
from search_core.models.efficientnet import DEFAULT_CROP_FRACTION
from search_core.pipeline import WHOLE, AnalyzedImage, SearchPipeline, auto_choice

OLD_CROP = 0.875
PAIR, LITE0 = "efficientnet", "efficientnet-lite0"  # SEARCH_EMBEDDER values
#: the (embedder, view fraction) candidates --select-crop compares
CANDIDATES = tuple((e, c) for e in (PAIR, LITE0) for c in (0.7, 0.8, 0.875))
#: SEARCH_RESULTS_PER_LABEL values --select-crop compares at the chosen view (0 = no cap)
PER_LABEL_CANDIDATES = (0, 2, 3, 5)
#: the cap the val report shows as an option (what the train/ split picked; off by default)
PER_LABEL_OPTION = 3


def class_of(uri: str) -> str:
    """Fine class: the folder, or in the flat catalogue the file name before ``_NNN``."""
    path = Path(uri)
    return path.stem.rsplit("_", 1)[0] if path.parent.name == "flat3" else path.parent.name


def split_train(root: Path) -> tuple[Path, list[Path]]:
    """train/ split by class (module docstring): the catalogue part, copied into class folders
    under ``root``, and the held-out least-alike quarter of each class (queries)."""
    files = image_files(GROCERY / "train")
    reference = pipeline_for(root, "reference", OLD_CROP, "off", embedder=LITE0)
    from PIL import Image

    vectors = np.concatenate([
        reference.embedder.embed_images([Image.open(path) for path in files[i:i + 32]])
        for i in range(0, len(files), 32)
    ])
    held = held_out_mask(vectors, [p.parent.name for p in files])
    catalogue = root / "catalogues" / "train-split"
    if not catalogue.is_dir():
        for path, out in zip(files, held, strict=True):
            if not out:
                target = catalogue / path.relative_to(GROCERY / "train")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return catalogue, [path for path, out in zip(files, held, strict=True) if out]


def select_crop(root: Path, candidates: tuple[tuple[str, float], ...]
                ) -> tuple[tuple[str, float], list[dict[str, Any]]]:
    """The --select-crop protocol (module docstring): train/ alone decides the embedder and
    the view, then, at those, the SEARCH_RESULTS_PER_LABEL option's value by the same rule."""
    catalogue, held_out = split_train(root)
    analyser = pipeline_for(root, "queries", DEFAULT_CROP_FRACTION, "off")
    queries = [(analyser.analyze(path.read_bytes()), path.parent.name) for path in held_out]
    rows = []
    for embedder, crop in candidates:
        pipeline = pipeline_for(root, "train-split", crop, "auto", embedder=embedder)
        pipeline.index_source(str(catalogue))
        result = evaluate(pipeline, queries, catalogue_auto, plain=False)
        learned = pipeline.adapter.describe()
        rows.append({"embedder": embedder, "crop": crop, "catalogue": pipeline.index.count(),
                     "queries": len(queries), "adaptation": learned["status"], **result,
                     "load": round(os.getloadavg()[0], 2)})
        print(f"select {embedder} {crop:.3f} {rows[-1]}", flush=True)

    def rule(row: dict[str, Any]) -> tuple[float, float, float]:
        return row["R@1"], row["R@10"], row["mAP@10"]

    winner = max(rows, key=rule)
    best = (str(winner["embedder"]), float(winner["crop"]))
    capped = []
    for per_label in PER_LABEL_CANDIDATES:
        pipeline = pipeline_for(root, "train-split", best[1], "auto", per_label,
                                embedder=best[0])
        result = evaluate(pipeline, queries, catalogue_auto, plain=False)
        capped.append({"embedder": best[0], "crop": best[1], "per_label": per_label, **result,
                       "load": round(os.getloadavg()[0], 2)})
        print(f"select per label {per_label} {capped[-1]}", flush=True)
    print(f"on train/ alone, SEARCH_RESULTS_PER_LABEL={max(capped, key=rule)['per_label']} "
          "would be chosen if turned on", flush=True)
    return best, rows + capped


def build_catalogues(root: Path) -> dict[str, Path]:
    """train/ itself, and 3 photos per class as a flat folder and as class folders."""
    flat, folders = root / "catalogues" / "flat3", root / "catalogues" / "folders3"
    if not flat.is_dir():
        by_class: dict[str, list[Path]] = {}
        for path in image_files(GROCERY / "train"):
            by_class.setdefault(path.parent.name, []).append(path)
        for name, paths in by_class.items():
            for path in paths[:: max(1, len(paths) // 3)][:3]:
                (folders / name).mkdir(parents=True, exist_ok=True)
                flat.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, folders / name / path.name)
                shutil.copyfile(path, flat / path.name)
    return {"train": GROCERY / "train", "flat3": flat, "folders3": folders}


def pipeline_for(root: Path, catalogue: str, crop: float, adapt: str, per_label: int = 0,
                 embedder: str = PAIR) -> SearchPipeline:
    """Tags are ``keywords`` (free from the embedder's pass): they never change a vector, and
    the detector-made ones would only slow the catalogue builds down."""
    base = Settings.from_env()
    settings = dataclasses.replace(
        base, data_dir=root / f"{catalogue}-{embedder}-c{round(crop * 100)}", view_crop=crop,
        adapt=adapt, sample_catalogue=None, folder_roots=(*base.folder_roots, root),
        results_per_label=per_label, embedder=embedder, tags="keywords",
    )
    return build_pipeline(settings)


Chooser = Callable[[SearchPipeline, AnalyzedImage], str | int]


def evaluate(pipeline: SearchPipeline, queries: list[tuple[AnalyzedImage, str]],
             choose: Chooser, plain: bool) -> dict[str, Any]:
    sizes = Counter(class_of(item.uri) for item in pipeline.index.items())
    hits_at = dict.fromkeys(KS, 0)
    ap_sum, seconds = 0.0, []
    pipeline._views.clear()  # each configuration pays for its own embeddings
    pipeline._auto.clear()
    for analyzed, wanted in queries:
        began = time.perf_counter()
        vector = pipeline.query_vector(analyzed, choose(pipeline, analyzed), None)
        hits = pipeline.search_vector(vector, max(KS), plain=plain)
        seconds.append(time.perf_counter() - began)
        relevant = [class_of(hit.uri) == wanted for hit in hits]
        for k in KS:
            hits_at[k] += any(relevant[:k])
        ap_sum += average_precision(relevant, sizes.get(wanted, 0))
    n = max(len(queries), 1)
    return {**{f"R@{k}": round(hits_at[k] / n, 3) for k in KS}, "mAP@10": round(ap_sum / n, 3),
            "ms_per_query": round(1000 * float(np.mean(seconds)), 1)}


def no_close_share(pipeline: SearchPipeline, images: list[AnalyzedImage]) -> float:
    """Share of whole images whose best catalogue match is reported as no close match."""
    matches = [pipeline.whole_match(analyzed) for analyzed in images]
    return round(sum(1 for m in matches if m is not None and not m.close) / len(images), 3)


def whole(_: SearchPipeline, __: AnalyzedImage) -> str:
    return WHOLE


def detector_auto(_: SearchPipeline, analyzed: AnalyzedImage) -> str | int:
    number = auto_choice(analyzed.detections)
    return WHOLE if number is None else number


def catalogue_auto(pipeline: SearchPipeline, analyzed: AnalyzedImage) -> str | int:
    number = pipeline.auto_object(analyzed)
    return WHOLE if number is None else number


Config = tuple[str, float, bool, Chooser]


def configs(new: tuple[str, float]) -> dict[str, Config]:
    """name -> (embedder, view crop, adaptation on, chooser)."""
    embedder, crop = new
    other = LITE0 if embedder == PAIR else PAIR
    return {
        "before: whole": (LITE0, OLD_CROP, False, whole),
        "before: auto": (LITE0, OLD_CROP, False, detector_auto),
        "new: whole": (embedder, crop, True, whole),
        "new: auto (default)": (embedder, crop, True, catalogue_auto),
        "default - adaptation": (embedder, crop, False, catalogue_auto),
        f"default - {round(crop * 100)} % view": (embedder, OLD_CROP, True, catalogue_auto),
        "default - catalogue auto": (embedder, crop, True, detector_auto),
        f"default with {other}": (other, crop, True, catalogue_auto),
        f"default + {PER_LABEL_OPTION} per label": (embedder, crop, True, catalogue_auto),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 queries")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the catalogue indexes here (reruns skip re-embedding)")
    parser.add_argument("--catalogues", default="train,flat3,folders3")
    parser.add_argument("--crop", type=float, default=DEFAULT_CROP_FRACTION,
                        help="the new default's view (default: SEARCH_VIEW_CROP's default)")
    parser.add_argument("--embedder", default=PAIR, choices=(PAIR, LITE0),
                        help="the new default's embedder (default: SEARCH_EMBEDDER's default)")
    parser.add_argument("--select-crop", action="store_true",
                        help="choose the view on train/ alone first (see the docstring)")
    parser.add_argument("--select-only", action="store_true",
                        help="with --select-crop: stop after the choice")
    args = parser.parse_args()
    require_dir(GROCERY)
    os.environ.setdefault("SEARCH_SAMPLE_CATALOGUE", "off")
    started = machine()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = (args.data_dir or Path(tmp)).resolve()
        new: tuple[str, float] = (args.embedder, args.crop)
        selection: list[dict[str, Any]] = []
        if args.select_crop:
            new, selection = select_crop(root, CANDIDATES)
            print(table([[r["embedder"], r["crop"], r.get("per_label", 0), r["R@1"], r["R@5"],
                          r["R@10"], r["mAP@10"], r["load"]] for r in selection],
                        ["embedder", "view crop", "per label", "R@1", "R@5", "R@10", "mAP@10",
                         "load"]))
            print(f"selected on train/ alone: SEARCH_EMBEDDER={new[0]} SEARCH_VIEW_CROP={new[1]}",
                  flush=True)
            if args.select_only:
                emit({"bench": "quality-select-crop", "selected_embedder": new[0],
                      "selected_crop": new[1], "selection": selection, "machine": started,
                      "load_1min_at_end": round(os.getloadavg()[0], 2)})
                return
        catalogues = build_catalogues(root)
        query_files = image_files(GROCERY / "val")
        if args.quick:
            query_files = query_files[:: max(1, len(query_files) // 60)][:60]
        analyser = pipeline_for(root, "queries", new[1], "off", embedder=new[0])
        queries = [(analyser.analyze(path.read_bytes()), path.parent.name) for path in query_files]
        # photos of no grocery at all: a good catalogue search says "no close match" for them
        outsiders = [analyser.analyze(path.read_bytes())
                     for path in image_files(SHARED_DATA / "coco128")]
        rows, learned, costs, rates = [], {}, {}, {}
        table_of_configs = configs(new)
        for name in args.catalogues.split(","):
            pipelines: dict[tuple[str, float, bool], SearchPipeline] = {}
            for embedder, crop in sorted({(e, c) for e, c, _, _ in table_of_configs.values()}):
                key = f"{name}_{embedder}_c{round(crop * 100)}"
                indexer = pipeline_for(root, name, crop, "auto", embedder=embedder)
                began = time.perf_counter()
                report = indexer.index_source(str(catalogues[name]))
                total = time.perf_counter() - began
                if report.indexed:
                    costs[f"{key}_ingest_ms_per_image"] = round(1000 * total / report.indexed, 1)
                learned[key] = indexer.adapter.describe()
                pipelines[(embedder, crop, True)] = indexer
                pipelines[(embedder, crop, False)] = pipeline_for(root, name, crop, "off",
                                                                  embedder=embedder)
            capped = pipeline_for(root, name, new[1], "auto", PER_LABEL_OPTION, embedder=new[0])
            default = pipelines[(new[0], new[1], True)]
            rates[name] = {
                "val_no_close_match": no_close_share(default, [a for a, _ in queries]),
                "coco_no_close_match": no_close_share(default, outsiders),
            }
            print(f"{name:9s} no close match: {rates[name]}", flush=True)
            for config, (embedder, crop, adapt, choose) in table_of_configs.items():
                pipeline = (capped if "per label" in config
                            else pipelines[(embedder, crop, adapt)])
                result = evaluate(pipeline, queries, choose, plain=not adapt)
                rows.append({"catalogue": name, "config": config,
                             "size": pipeline.index.count(), **result})
                print(f"{name:9s} {config:34s} {result}", flush=True)
    print(table([[r["catalogue"], r["config"], r["size"], r["R@1"], r["R@5"], r["R@10"],
                  r["mAP@10"], r["ms_per_query"]] for r in rows],
                ["catalogue", "configuration", "size", "R@1", "R@5", "R@10", "mAP@10",
                 "ms/query"]))
    print(table([[key, v["status"], v["labels"], v["dims"], v["recall1_plain"],
                  v["recall1_adapted"], v["no_match_threshold"], v["fit_seconds"], v["reason"]]
                 for key, v in learned.items()],
                ["catalogue", "adaptation", "labels", "dims", "held-out R@1 plain",
                 "adapted", "no-match thr.", "fit s", "why"]))
    payload: dict[str, Any] = {"bench": "quality", "queries": len(queries),
                               "embedder": new[0], "view_crop": new[1],
                               "crop_selection": selection}
    for r in rows:
        tag = f"{r['catalogue']}_{r['config']}".replace(" ", "_").replace(":", "")
        for metric in ("R@1", "R@5", "R@10", "mAP@10", "ms_per_query"):
            payload[f"{tag}_{metric}"] = r[metric]
    print(table([[name, r["val_no_close_match"], r["coco_no_close_match"]]
                 for name, r in rates.items()],
                ["catalogue", "val queries: no close match", "COCO photos: no close match"]))
    payload.update({"no_close_match": rates, "adaptation": learned, "costs": costs,
                    "runs": rows, "machine": started,
                    "load_1min_at_end": round(os.getloadavg()[0], 2)})
    emit(payload)


if __name__ == "__main__":
    main()
