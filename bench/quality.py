"""Retrieval quality by fine class, through the CLI contract (`python -m search_core eval`).

    python bench/quality.py           # val -> train and val -> iconic, --object auto and whole
    python bench/quality.py --quick   # val (60 queries) -> the 81 iconic images only (< 2 min)

An image's class is its parent folder (e.g. Granny-Smith), in the query tree and the corpus
tree alike. "auto" is what the app preselects for a user (detect -> choose -> crop); "whole"
skips detection. The corpus is indexed exactly as `index` does it, into a throwaway
SEARCH_DATA_DIR (pass --data-dir to keep and reuse it). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import GROCERY, REPO, emit, machine, require_dir, table

ICONIC = GROCERY / "iconic-images-and-descriptions"


def run_eval(corpus: Path, queries: Path, choice: str, data_dir: Path,
             limit: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "search_core", "eval", "--corpus", str(corpus),
               "--queries", str(queries), "--object", choice]
    if limit:
        command += ["--limit", str(limit)]
    env = {**os.environ, "SEARCH_DATA_DIR": str(data_dir), "SEARCH_SAMPLE_CATALOGUE": "off"}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"eval failed ({done.returncode}): {' '.join(command)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = round(seconds, 1)
    result["command"] = " ".join(["python", *command[1:]])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the corpus indexes here (reruns skip re-embedding)")
    args = parser.parse_args()
    require_dir(GROCERY)
    corpora = [("iconic", ICONIC)] if args.quick else [("train", GROCERY / "train"),
                                                       ("iconic", ICONIC)]
    limit = 60 if args.quick else None
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        rows = []
        for name, corpus in corpora:
            for choice in ("auto", "whole"):
                result = run_eval(corpus, GROCERY / "val", choice, data_dir, limit)
                rows.append({"corpus": name, "object": choice, **result})
    print(table([[r["corpus"], r["object"], r["queries"], r["corpus_size"], r["recall@1"],
                  r["recall@5"], r["recall@10"], r["map@10"], r["seconds"]] for r in rows],
                ["corpus", "object", "queries", "corpus size", "R@1", "R@5", "R@10", "mAP@10",
                 "s"]))
    payload: dict[str, Any] = {"bench": "quality"}
    for r in rows:
        for metric in ("recall@1", "recall@5", "recall@10", "map@10"):
            payload[f"{r['corpus']}_{r['object']}_{metric}"] = r[metric]
    payload.update({"runs": rows, "machine": machine()})
    emit(payload)


if __name__ == "__main__":
    main()
