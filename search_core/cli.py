"""Command line: ``index``, ``search``, ``stats``, ``reset``, ``eval`` (and ``aws`` setup).

A stable contract for scripts: ``stats``, ``search`` and ``eval`` end their output with one line
of JSON; errors are one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_core.config import Settings
from search_core.errors import ModelMismatchError, SearchError

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts without the model code
    from tqdm import tqdm

    from search_core.indexing import IndexReport
    from search_core.pipeline import SearchPipeline

EXIT_ERROR = 2
MAX_K = 100


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other error (argparse
    would print the usage block first)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _k_value(text: str) -> int:
    """``--k``: 1..MAX_K; anything else is an error, never silently clamped."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_K:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_K}, got {value}")
    return value


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, ensure_ascii=True, sort_keys=False))


def _pipeline(settings: Settings | None = None) -> SearchPipeline:
    """The pipeline with no folder allow-list: SEARCH_FOLDER_ROOTS guards the web UI, where
    strangers type paths; the command line is the owner's tool (``index ~/Pictures`` works)."""
    from search_core.factory import build_pipeline

    settings = settings or Settings.from_env()
    return build_pipeline(dataclasses.replace(settings, folder_roots=()))


def _progress_bar(settings: Settings, total_hint: int = 0) -> tqdm[Any]:
    from tqdm import tqdm

    return tqdm(
        total=total_hint,
        unit="img",
        file=sys.stderr,
        disable=not sys.stderr.isatty() and not settings.progress,
    )


def cmd_index(args: argparse.Namespace) -> int:
    from search_core.costs import Prices, estimate_ingest, needs_estimate
    from search_core.interfaces import Loadable

    pipeline = _pipeline()
    settings = pipeline.settings
    # Load the embedder first: a missing or corrupted model file is one clear error now,
    # not the same failure repeated for every file of the run.
    if isinstance(pipeline.embedder, Loadable):
        pipeline.embedder.load()
    bar = _progress_bar(settings)
    estimate: dict[str, Any] = {}

    def progress(report: IndexReport) -> None:
        if (
            not estimate
            and report.phase == "embedding"
            and needs_estimate(settings.embedder, settings.index)
        ):
            cost = estimate_ingest(
                report.planned,
                embedder=settings.embedder,
                index=settings.index,
                dimension=pipeline.embedder.dimension,
                titan_concurrency=settings.titan_max_concurrency,
                prices=Prices.from_settings(settings),
            )
            estimate.update(cost.to_dict())
            print("\n".join(cost.lines()), file=sys.stderr, flush=True)
        bar.total = report.total
        bar.n = report.done
        bar.set_postfix(indexed=report.indexed, failed=report.failed, refresh=False)
        bar.refresh()

    stop = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        # ECS stops tasks with SIGTERM (then SIGKILL after stopTimeout): finish the batch in
        # hand so everything embedded so far is committed, then exit; a second signal kills.
        received.append(signum)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)
        print("stopping after the current batch…", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = pipeline.index_source(
            args.source, prune=args.prune, shard=args.shard, progress=progress, stop=stop
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    bar.close()
    for failure_uri, reason in report.failures:
        print(f"failed: {failure_uri}: {reason}", file=sys.stderr)
    summary = report.to_dict()
    if not args.verbose:
        summary.pop("failures")
    if report.indexed and not report.error:
        # Near-duplicates (re-encoded or resized copies) crowd result lists: name them.
        pairs = pipeline.near_duplicate_pairs()
        for first, second, score in pairs[:20]:
            print(f"near-duplicate: {first} ~ {second} ({score:.3f})", file=sys.stderr)
        summary["near_duplicates"] = len(pairs)
        summary["near_duplicate_pairs"] = [
            {"a": first, "b": second, "cosine": round(score, 4)}
            for first, second, score in pairs[:20]
        ]
    if estimate:
        summary["cost_estimate"] = estimate
    print(
        f"indexed {report.indexed}, unchanged {report.unchanged}, duplicates {report.duplicates}, "
        f"indexed by another run {report.by_other_run}, not images {report.not_images}, "
        f"failed {report.failed}, pruned {report.pruned} of {report.total} "
        f"in {report.seconds:.1f} s"
    )
    _print_json(summary)
    if report.error:
        # The run stopped early (disk full, backend down, model broken): scripts must see it.
        # Finished batches are committed, so running the same command again resumes.
        resume = (
            (f" ({report.done} of {report.total} files done; run the same command again to resume)")
            if report.done
            else ""
        )
        print(f"error: {report.error}{resume}", file=sys.stderr)
        return EXIT_ERROR
    if received:
        print(
            f"stopped by signal: {report.done} of {report.total} files done; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 128 + received[0]  # 143 for SIGTERM, 130 for SIGINT, as shells report them
    return 0


def _searched_object(analyzed: Any, choice: str) -> tuple[str, dict[str, Any]]:
    """The explicit choice to search (``auto`` resolved here, so the JSON can say what was
    searched) and its description: kind, 1-based number, label, confidence, box."""
    from search_core.pipeline import AUTO, WHOLE, auto_choice, parse_object

    parsed = parse_object(choice)
    kind = "auto" if parsed == AUTO else "whole" if parsed == WHOLE else "object"
    if parsed == AUTO:
        found = auto_choice(analyzed.detections)
        parsed = WHOLE if found is None else found
    if parsed == WHOLE:
        return WHOLE, {"chosen_by": kind, "kind": "whole", "number": None, "label": None,
                       "box": None}
    assert isinstance(parsed, int)
    if not 0 <= parsed < len(analyzed.detections):
        raise SearchError(
            f"object {parsed + 1} does not exist: {len(analyzed.detections)} object(s) "
            "were detected"
        )
    detection = analyzed.detections[parsed]
    return str(parsed + 1), {  # a string: the pipeline reads it as the 1-based number
        "chosen_by": kind,
        "kind": "object",
        "number": parsed + 1,
        "label": detection.label,
        "confidence": round(detection.confidence, 2),
        "box": dataclasses.asdict(detection.box),
    }


def cmd_search(args: argparse.Namespace) -> int:
    path = Path(args.image)
    if not path.is_file():
        raise SearchError(f"image not found: {args.image}")
    from search_core.pipeline import check_upload_size

    settings = Settings.from_env()
    # Before reading: a mistaken multi-GB path must not be loaded into memory first.
    check_upload_size(path.stat().st_size, settings.max_upload_bytes)
    pipeline = _pipeline(settings)
    pipeline.check_text(args.text)  # fail before the analysis prints anything
    from search_core.filters import parse_filters

    filters = parse_filters(args.filter or [])
    analyzed = pipeline.analyze(path.read_bytes())
    choice, searched = _searched_object(analyzed, args.object)
    hits = pipeline.search(analyzed, choice, k=args.k, text=args.text, filters=filters or None)
    # Printed only now: an error above stays the one line the contract promises.
    for number, detection in enumerate(analyzed.detections, start=1):
        print(f"object {number}: {detection.label} {detection.confidence:.0f} %", file=sys.stderr)
    if searched["kind"] == "whole":
        print("searched: the whole image", file=sys.stderr)
    else:
        print(f"searched: object {searched['number']} ({searched['label']})", file=sys.stderr)
    if not hits and pipeline.index.count() == 0:
        print(
            "the index is empty: add images first (python -m search_core index FOLDER)",
            file=sys.stderr,
        )
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank:3d}  {hit.score:.4f}  {hit.uri}")
    _print_json(
        {
            "objects": [
                {
                    "label": d.label,
                    "confidence": round(d.confidence, 2),
                    "box": dataclasses.asdict(d.box),
                }
                for d in analyzed.detections
            ],
            "searched": searched,
            "results": [
                {
                    "uri": h.uri,
                    "score": round(h.score, 6),
                    "label": h.item.label,
                    "tags": h.item.extra.get("tags", []),
                    "similar": [s.uri for s in h.similar],
                }
                for h in hits
            ],
        }
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    _print_json(_pipeline().stats())
    return 0


def _confirm_reset(args: argparse.Namespace, before: int | None, where: object) -> bool:
    """Everything goes and nothing brings it back but a full re-index: ask a person, and make
    a script say so explicitly (--yes)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise SearchError("reset removes every item: add --yes to confirm in a script")
    # the question goes to stderr: stdout stays the JSON contract
    what = "every item" if before is None else f"all {before} item(s)"
    print(f"remove {what} from {where}? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() in {"y", "yes"}:
        return True
    print("nothing removed", file=sys.stderr)
    _print_json({"removed": 0, "count": before})
    return False


def cmd_reset(args: argparse.Namespace) -> int:
    try:
        pipeline = _pipeline()
    except ModelMismatchError as exc:
        # SEARCH_EMBEDDER changed: the index cannot be opened for this embedder, which is
        # exactly when a reset is the advice; empty it as it is, the next open adopts the model
        from search_core.local_index import LocalIndex

        settings = Settings.from_env()
        print(f"{exc}", file=sys.stderr)
        if not _confirm_reset(args, None, settings.data_dir):
            return 1
        removed = LocalIndex.wipe(settings.data_dir)
        print(f"removed {removed} item(s)", file=sys.stderr)
        _print_json({"removed": removed, "count": 0})
        return 0
    before = pipeline.index.count()
    where = pipeline.stats().get("index") or pipeline.settings.data_dir
    if not _confirm_reset(args, before, where):
        return 1
    before = pipeline.reset()
    print(f"removed {before} item(s)", file=sys.stderr)
    _print_json({"removed": before, "count": pipeline.index.count()})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from search_core.evaluation import evaluate

    settings = Settings.from_env()
    corpus = Path(args.corpus).expanduser().resolve()
    if settings.index == "local":
        # A separate index per corpus keeps the user's catalogue out of the measurement.
        key = hashlib.sha1(str(corpus).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        settings = dataclasses.replace(settings, data_dir=settings.data_dir / "eval" / key)
    pipeline = _pipeline(settings)
    report = pipeline.index_source(str(corpus))
    print(
        f"corpus: {report.indexed} indexed, {report.unchanged} unchanged, {report.failed} failed",
        file=sys.stderr,
    )
    result = evaluate(pipeline, args.queries, choice=args.object, limit=args.limit)
    for failure_uri, reason in result.failed:
        print(f"failed query: {failure_uri}: {reason}", file=sys.stderr)
    payload = {
        **result.to_dict(),
        "object": args.object,
        "corpus_size": pipeline.index.count(),
        "embedder": pipeline.embedder.model_id,
    }
    print("  ".join(f"{k} {v}" for k, v in payload.items()))
    _print_json(payload)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m search_core",
        description="Reverse image search on your own catalogue "
        "(SEARCH_DATA_DIR selects the data).",
    )
    parser.add_argument(
        "--log-level", default=Settings.read("log_level") or "WARNING", help="(env LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="add a folder or s3://bucket/prefix to the index")
    p.add_argument("source")
    p.add_argument("--prune", action="store_true", help="remove items whose file is gone")
    p.add_argument("--shard", help="I/N: take only this worker's share of the source")
    p.add_argument("--verbose", action="store_true", help="include failures in the JSON line")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search with an image (and optionally a text)")
    p.add_argument("image")
    p.add_argument("--object", default="auto", help="auto | whole | N (1-based object number)")
    p.add_argument("--k", type=_k_value, default=10, help=f"results, 1-{MAX_K}")
    p.add_argument(
        "--text",
        default=None,
        help="text to combine (CLIP/Titan); a tag keyword with EfficientNet (e.g. banana)",
    )
    p.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="category=, label=, tag= (repeat: any of) or source= (URI prefix); repeatable",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("stats", help="index statistics")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("reset", help="remove every item from the index")
    p.add_argument("--yes", action="store_true",
                   help="do not ask (needed when not run on a terminal)")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("eval", help="Recall@1/5/10 and mAP@10 by class (parent folder name)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--object", default="auto", help="auto | whole | N")
    p.add_argument("--limit", type=int, default=None, help="use only the first N queries")
    p.set_defaults(func=cmd_eval)

    try:
        from search_core.aws.setup import register_cli
    except ImportError:
        pass
    else:
        register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:  # LOG_LEVEL and SEARCH_DEBUG are read first: a bad value is one line too
        parser = build_parser()
        debug = Settings.read("debug")
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: never a traceback
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return EXIT_ERROR
