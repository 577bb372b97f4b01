"""Retrieval quality by class: Recall@K and mAP@10, where an image's class is its parent folder."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from search_core.errors import SearchError
from search_core.indexing import label_from_uri
from search_core.pipeline import SearchPipeline
from search_core.sources import FolderSource

log = logging.getLogger(__name__)
KS = (1, 5, 10)


@dataclass
class EvalResult:
    queries: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    hits_at: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KS, 0))
    ap_sum: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        n = max(self.queries, 1)
        result: dict[str, Any] = {f"recall@{k}": round(self.hits_at[k] / n, 4) for k in KS}
        result["map@10"] = round(self.ap_sum / n, 4)
        result["queries"] = self.queries
        result["failed_queries"] = len(self.failed)
        return result


def average_precision(relevant: list[bool], total_relevant: int, k: int = 10) -> float:
    """AP@k normalised by min(total relevant, k), the usual retrieval definition."""
    if total_relevant <= 0:
        return 0.0
    found, precision_sum = 0, 0.0
    for rank, is_relevant in enumerate(relevant[:k], start=1):
        if is_relevant:
            found += 1
            precision_sum += found / rank
    return precision_sum / min(total_relevant, k)


def evaluate(
    pipeline: SearchPipeline,
    queries_dir: str,
    *,
    choice: str = "auto",
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Runs every image under ``queries_dir`` as a query against the pipeline's index."""
    class_sizes = Counter(label_from_uri(item.uri) for item in pipeline.index.items())
    if not class_sizes:
        raise SearchError("the corpus index is empty: nothing to evaluate against")
    source = FolderSource(queries_dir, pipeline.settings.folder_roots)
    entries = list(source.list())[: limit or None]
    result = EvalResult()
    for number, entry in enumerate(entries, start=1):
        wanted = label_from_uri(entry.uri)
        try:
            hits = pipeline.search(pipeline.analyze(source.read(entry)), choice, k=max(KS))
        except (SearchError, OSError) as exc:
            result.failed.append((entry.uri, str(exc)))
            continue
        relevant = [label_from_uri(hit.uri) == wanted for hit in hits]
        result.queries += 1
        for k in KS:
            result.hits_at[k] += any(relevant[:k])
        result.ap_sum += average_precision(relevant, class_sizes.get(wanted, 0))
        if progress:
            progress(number, len(entries))
    return result
