"""How raw index candidates become a result page: over-fetch factors and the per-label cap."""

from __future__ import annotations

from search_core.types import SearchHit

OVERFETCH = 3
#: with SEARCH_RESULTS_PER_LABEL, candidates are fetched this many times over, so that capped
#: labels leave enough others to fill the page
PER_LABEL_FETCH = 8


def cap_per_label(hits: list[SearchHit], per_label: int) -> list[SearchHit]:
    """Best first, at most ``per_label`` hits of one label; unlabelled items are never capped,
    and hits of fewer than two labels (a flat folder is one label) are returned as they are.
    A page can therefore be shorter than asked when the catalogue has few labels.

    Why: in a catalogue of products (a folder each) ten photos of one product fill the first
    page, and when that product is the wrong one the right one is pushed off it. Capping keeps
    Recall@1 and raises Recall@10 (GroceryStore val -> train, SEARCH_RESULTS_PER_LABEL=3: see
    the README's relevance section), at the price of showing fewer photos of the best product
    (mAP@10 falls), which is why it is a setting and off by default."""
    ordered = sorted(hits, key=lambda h: -h.score)
    if len({hit.item.label for hit in ordered if hit.item.label}) < 2:
        return ordered
    counts: dict[str, int] = {}
    kept = []
    for hit in ordered:
        label = hit.item.label
        if label:
            if counts.get(label, 0) >= per_label:
                continue
            counts[label] = counts.get(label, 0) + 1
        kept.append(hit)
    return kept
