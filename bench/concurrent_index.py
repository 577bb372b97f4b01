"""Several CLI ``index`` runs at once on one data dir: no error, truthful counts, exact result.

    python bench/concurrent_index.py                      # 2, 3 and 4 writers, 20 rounds each
    python bench/concurrent_index.py --writers 3 --rounds 5 --files 12

Each round starts ``writers`` real ``python -m search_core index FOLDER`` processes together
on a fresh data dir at batch size 1 (the case that used to fail 1 in 3 with
``UNIQUE constraint failed: items.sha256``). A round counts as an error when any process exits
non-zero or prints ``error``; as a count mismatch when a run's counters do not add up to its
total (indexed + by_other_run + unchanged + duplicates + not_images + failed) or the runs
together indexed more or fewer contents than the folder has; as a drift when the final index
is not exactly the folder (names and contents). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import GROCERY, REPO, emit, machine, require_dir, table

FIELDS = ("indexed", "by_other_run", "unchanged", "duplicates", "not_images", "failed")


def make_folder(target: Path, files: int) -> dict[str, str]:
    """``files`` photos plus one copy (two names, one content): uri -> sha256."""
    photos = sorted(require_dir(GROCERY / "train").rglob("*.jpg"))[:files]
    target.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, target / photo.name)
    shutil.copy(photos[0], target / "copy-of-first.jpg")
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in target.iterdir()}


def one_round(folder: Path, expected: dict[str, str], data: Path, writers: int,
              batch: int) -> dict[str, Any]:
    env = {**os.environ, "SEARCH_DATA_DIR": str(data), "SEARCH_DETECTOR": "none",
           "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(folder.parent),
           "SEARCH_BATCH_SIZE": str(batch)}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "search_core", "index", str(folder)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(writers)]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    seconds = time.perf_counter() - started
    errors: list[str] = []
    summaries: list[dict[str, Any]] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or "error" in err:
            errors.append(f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
            continue
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    mismatch = [s for s in summaries if sum(s[f] for f in FIELDS) != s["total"]]
    with sqlite3.connect(data / "index.sqlite3") as conn:
        names = dict(conn.execute("SELECT uri, sha256 FROM names").fetchall())
        contents = {row[0] for row in conn.execute("SELECT sha256 FROM contents")}
    indexed = sum(s["indexed"] for s in summaries)
    drift = names != expected or contents != set(expected.values())
    return {
        "errors": errors,
        "count_mismatch": bool(mismatch) or (not errors and indexed != len(contents)),
        "drift": drift,
        "seconds": seconds,
        "by_other_run": sum(s["by_other_run"] for s in summaries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="concurrent-index-") as tmp:
        folder = Path(tmp) / "catalogue"
        expected = make_folder(folder, args.files)
        for writers in args.writers:
            rounds = []
            load = os.getloadavg()[0]
            for number in range(args.rounds):
                data = Path(tmp) / f"data-{writers}-{number}"
                rounds.append(one_round(folder, expected, data, writers, args.batch))
                shutil.rmtree(data, ignore_errors=True)
            summary = {
                "writers": writers,
                "rounds": args.rounds,
                "files": len(expected),
                "rounds_with_errors": sum(bool(r["errors"]) for r in rounds),
                "count_mismatches": sum(r["count_mismatch"] for r in rounds),
                "drifts": sum(r["drift"] for r in rounds),
                "by_other_run_total": sum(r["by_other_run"] for r in rounds),
                "mean_round_s": round(sum(r["seconds"] for r in rounds) / len(rounds), 1),
                "load_1min_at_start": round(load, 2),
                "first_errors": [e for r in rounds for e in r["errors"]][:3],
            }
            results.append(summary)
            rows.append([writers, args.rounds, summary["rounds_with_errors"],
                         summary["count_mismatches"], summary["drifts"],
                         summary["by_other_run_total"], summary["mean_round_s"],
                         summary["load_1min_at_start"]])
    print(table(rows, ["writers", "rounds", "rounds with errors", "count mismatches", "drifts",
                       "by other run (sum)", "mean round s", "load"]))
    emit({"bench": "concurrent_index", "batch_size": args.batch, "results": results,
          "machine": machine()})


if __name__ == "__main__":
    main()
