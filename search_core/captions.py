"""What a result says under its picture in the gallery.

A person scans a grid of results: the product's name, how close it is and a short source tell
which one to open; the first few automatic tags (search_core.tags) tell *why* it is there
("banana", "running shoe") without opening the detail view, which lists all of them. Kept here,
not in ``app.py``, so every surface that lists results words them alike.
"""

from __future__ import annotations

from search_core.tags import item_tags, product_name, short_source
from search_core.types import SearchHit

#: tags shown under a result: more wraps the caption onto extra lines in a narrow grid cell
CAPTION_TAGS = 3


def percent(score: float) -> str:
    """A cosine as a match percentage (negative cosines read as 0 %, not as a minus sign)."""
    return f"{max(score, 0.0) * 100:.0f} %"


def caption_tags(hit: SearchHit, limit: int = CAPTION_TAGS) -> list[str]:
    """The item's first ``limit`` tags, leaving out the one that only repeats its name."""
    name = product_name(hit.item.label, hit.uri).casefold()
    return [tag for tag in item_tags(hit.item) if tag.casefold() != name][:limit]


def result_caption(hit: SearchHit, no_preview: str | None = None) -> str:
    """``name · score · +N similar``, the short source and the first tags, one per line; a
    result shown without its picture names its full source and the reason instead."""
    badge = f" · +{len(hit.similar)} similar" if hit.similar else ""
    lines = [f"{product_name(hit.item.label, hit.uri)} · {percent(hit.score)}{badge}",
             hit.uri if no_preview is not None else short_source(hit.uri)]
    tags = caption_tags(hit)
    if tags:
        lines.append("tags: " + ", ".join(tags))
    if no_preview is not None:
        lines.append(f"no preview: {no_preview}")
    return "\n".join(lines)
