"""What the web page shows: status texts, result rows, detail and Index-tab texts.

Why a module of its own: ``app.py`` only builds widgets and wires events; everything it shows
is worked out here from :mod:`search_core` objects, without Gradio, so it can be read and
tested apart from the page.
"""

from __future__ import annotations

import html
import math
from typing import Any

from search_core.captions import percent, result_caption
from search_core.crop import box_from_pixels, draw_detections
from search_core.interfaces import EventuallyConsistent
from search_core.pipeline import WHOLE, AnalyzedImage, SearchPipeline
from search_core.query import is_object_number
from search_core.tags import item_category, item_tags, product_name, short_source
from search_core.tempstore import image_file, no_preview_file, preview_file
from search_core.types import Box, ItemMeta, SearchHit

MANUAL = "manual"
AOSS_NOTE = (
    "New images in OpenSearch Serverless become searchable after up to a minute; "
    "results will appear shortly."
)
#: the all-pairs check is O(N²): above this many items the Index tab leaves it to the CLI
UI_NEAR_DUPLICATE_LIMIT = 5_000


# -- Search tab --------------------------------------------------------------------------------


def object_choices(analyzed: AnalyzedImage | None) -> list[tuple[str, str]]:
    """The object dropdown: whole image, each detection (0-based value), manual box."""
    choices = [("Whole image", WHOLE)]
    if analyzed is not None:
        choices += [(analyzed.choice_label(n), str(n)) for n in range(len(analyzed.detections))]
    choices.append(("Manual box (drag on the photo)", MANUAL))
    return choices


def object_label(analyzed: AnalyzedImage, value: str) -> str:
    return {v: label for label, v in object_choices(analyzed)}.get(value, value)


def parse_box(text: str | None) -> Box | None:
    """The manual box the page's drag script wrote: "x0,y0,x1,y1" as fractions."""
    try:
        x0, y0, x1, y1 = (float(v) for v in (text or "").split(","))
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    return box_from_pixels(x0, y0, x1, y1, 1, 1)


def parse_point(text: str | None) -> tuple[float, float] | None:
    """The click the page's pointer script wrote: "x,y" as fractions."""
    try:
        x, y = (float(v) for v in (text or "").split(","))
    except ValueError:
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def search_region(choice: str, box_text: str | None) -> Any:
    """The dropdown value as the region :meth:`SearchPipeline.search` takes."""
    if choice == MANUAL:
        box = parse_box(box_text)
        return WHOLE if box is None else box
    if isinstance(choice, str) and is_object_number(choice):
        # Dropdown values are 0-based detection numbers; as an int the pipeline takes
        # them as such (a digit *string* means the CLI's 1-based --object N).
        return int(choice)
    return choice or WHOLE


def drawn_file(
    pipeline: SearchPipeline, analyzed: AnalyzedImage, choice: str, box_text: str | None
) -> str:
    """The photo with numbered boxes (captioned with the catalogue's best label where it is a
    close match), the searched region lit and the rest dimmed."""
    analyzed = pipeline.label_objects(analyzed)  # cached per upload: cheap after the first
    selected = int(choice) if is_object_number(choice) else None
    region = parse_box(box_text) if choice == MANUAL else None
    captions = [analyzed.box_caption(n) for n in range(len(analyzed.detections))]
    drawing = draw_detections(
        analyzed.image, analyzed.detections, captions, selected=selected, region=region
    )
    return image_file(drawing)


def analyze_status(analyzed: AnalyzedImage, value: str) -> str:
    found = len(analyzed.detections)
    if found:
        return f"{found} object(s) found; searching with **{object_label(analyzed, value)}**."
    return "No objects detected: searching with the whole image (or drag a box on it)."


def search_filters(
    category: str | None, tags: list[str] | None, source: str | None
) -> dict[str, Any]:
    """The filter controls' values as the pipeline's filters (empty ones left out)."""
    filters: dict[str, Any] = {}
    if category:
        filters["category"] = category
    if tags:
        filters["tags"] = list(tags)
    if source and source.strip():
        filters["source_prefix"] = source.strip()
    return filters


def result_rows(
    pipeline: SearchPipeline, hits: list[SearchHit]
) -> tuple[list[tuple[Any, str]], list[dict[str, Any]]]:
    """Gallery items (thumbnail, caption) and, in the same order, the ids and scores the
    detail view needs. Only ids travel through the page: the detail view reads everything
    else from the index again, so an edited page can show nothing but catalogue items. A
    result whose picture may not be shown keeps its place with a stand-in and the reason."""
    gallery, rows = [], []
    for hit in hits:
        caption = result_caption(hit)
        preview = preview_file(hit.uri, hit.item.sha256, pipeline.preview)
        shown = preview is not None
        if not shown:  # never drop a result silently: name it and say why it has no picture
            why = pipeline.preview_refusal(hit.uri) or "the file cannot be read now"
            preview = no_preview_file()
            caption = result_caption(hit, no_preview=why)
        gallery.append((preview, caption))
        rows.append(
            {
                "id": hit.item.sha256,
                "score": hit.score,
                "similar": [[s.item.sha256, s.score] for s in hit.similar],
                "preview": shown,
            }
        )
    return gallery, rows


def text_kind(pipeline: SearchPipeline, short: bool = False) -> str:
    if pipeline.embedder.supports_text:
        return "text" if short else "a text"
    return "keyword" if short else "a keyword (e.g. banana)"


def eventually_consistent(pipeline: SearchPipeline) -> bool:
    """OpenSearch Serverless shows new documents only after up to a minute."""
    index = pipeline.index
    return isinstance(index, EventuallyConsistent) and index.serverless


def nothing_to_search(pipeline: SearchPipeline) -> str:
    return f"Upload a photo or type {text_kind(pipeline)} to search."


def photo_search_what(
    pipeline: SearchPipeline,
    analyzed: AnalyzedImage | None,
    choice: str,
    box_text: str | None,
    text: str | None,
) -> str:
    """What was searched, for the summary ("for **apple** with text “red”")."""
    what = ""
    if analyzed is not None:
        if choice == MANUAL and parse_box(box_text) is not None:
            what = " for **your manual crop**"
        elif choice == MANUAL:
            what = " for **Whole image** (drag on the photo to draw your box)"
        else:
            what = f" for **{object_label(analyzed, choice)}**"
    if text:
        what += f" with {text_kind(pipeline, short=True)} “{html.escape(text[:80])}”"
    return what


def no_objects_note(analyzed: AnalyzedImage | None) -> str:
    if analyzed is not None and not analyzed.detections:
        return "No objects detected: searched the whole photo (drag on it to draw a box). "
    return ""


def like_what(item: ItemMeta | None, item_id: str) -> str:
    """The "more like this" item, for the summary."""
    name = product_name(item.label, item.uri) if item else item_id[:12]
    source_text = f" ({html.escape(short_source(item.uri))})" if item else ""
    return f" like **{html.escape(name)}**{source_text}"


def summary(
    pipeline: SearchPipeline, what: str, filters: dict[str, Any], rows: list[dict[str, Any]]
) -> str:
    """The status line above the results."""
    shown = len(rows)
    unshown = sum(1 for row in rows if not row["preview"])
    count = pipeline.index.count()
    if shown == 0:
        if count == 0:
            return "The index is empty: add images in the Index tab."
        return "No results" + (" with these filters." if filters else ".")
    narrowed = ""
    if filters:
        narrowed = " (filtered: " + ", ".join(f"{k} {v}" for k, v in filters.items()) + ")"
    note = f" {AOSS_NOTE}" if eventually_consistent(pipeline) else ""
    if unshown:
        note += f" {unshown} result(s) shown without a preview (see their captions)."
    return f"Top {shown} of {count} indexed images{what}{narrowed}.{note}"


def detail_text(pipeline: SearchPipeline, item: ItemMeta, row: dict[str, Any]) -> str:
    """The detail view of a result: full source, size, labels, tags, folded near-duplicates."""
    score = float(row.get("score", 0.0))
    lines = [
        f"### {html.escape(product_name(item.label, item.uri))} · {percent(score)} match",
        f"**Source:** `{item.uri}`",
        f"**Size:** {item.width} × {item.height} px · {item.size_bytes / 1024:.0f} KB",
        f"**Label:** {html.escape(item.label or '—')} · **Category:** "
        f"{html.escape(item_category(item) or '—')}",
        f"**Tags:** {html.escape(', '.join(item_tags(item)) or '—')}",
    ]
    similar = [(pipeline.item(str(sha)), float(s)) for sha, s in row.get("similar", [])]
    found = [(other, s) for other, s in similar if other is not None]
    if found:
        lines.append(f"**+{len(found)} near-duplicate(s) folded in:**")
        lines += [f"- `{other.uri}` · {percent(s)}" for other, s in found]
    return "\n\n".join(lines)


# -- Index tab ---------------------------------------------------------------------------------


def progress_html(job: dict[str, Any] | None) -> str:
    if not job:
        return "<div id='index-progress-text'>No indexing job yet.</div>"
    total = max(job["total"], 1)
    done = 100.0 * job["done"] / total if job["total"] else 0.0
    return (
        f"<div id='index-progress-text'>{html.escape(job['state'])}: {job['done']} / "
        f"{job['total']} files ({done:.0f} %) — {html.escape(job['source'])}</div>"
        f"<progress max='100' value='{done:.1f}' style='width:100%'></progress>"
    )


#: Not the previous job's (green) bar when a start was refused: nothing was started.
NOT_STARTED_HTML = "<div id='index-progress-text'>Not started (see below).</div>"


def duplicates_note(pipeline: SearchPipeline, job: dict[str, Any]) -> str:
    """Names the skipped duplicates and what they duplicate (a count alone sends people
    looking through folders)."""
    files = job.get("duplicate_files") or []
    if not files:
        return ""
    lines = []
    for entry in files[:5]:
        original = pipeline.item(entry["sha256"])
        same = f" (same content as `{original.uri}`)" if original else ""
        lines.append(f"- `{entry['uri']}`{same}")
    more = f"\n- … and {len(files) - 5} more" if len(files) > 5 else ""
    return "\n\n**Skipped as duplicate:**\n" + "\n".join(lines) + more


#: near-duplicate pairs found after each finished job (job id -> Markdown), computed once
_NEAR_DUPLICATES: dict[str, str] = {}


def near_duplicates_note(pipeline: SearchPipeline, job: dict[str, Any]) -> str:
    """After a job that added images: the catalogue's near-duplicate pairs (first five)."""
    if job["state"] != "finished" or not job["indexed"]:
        return ""
    if job["id"] not in _NEAR_DUPLICATES:
        pairs = pipeline.near_duplicate_pairs(max_items=UI_NEAR_DUPLICATE_LIMIT)
        lines = [f"- `{a}` ~ `{b}` ({percent(score)})" for a, b, score in pairs[:5]]
        more = f"\n- … and {len(pairs) - 5} more" if len(pairs) > 5 else ""
        _NEAR_DUPLICATES[job["id"]] = (
            f"\n\n**Near-duplicates in the catalogue:** {len(pairs)} pair(s)\n"
            + "\n".join(lines)
            + more
            if pairs
            else ""
        )
    return _NEAR_DUPLICATES[job["id"]]


def job_counts(pipeline: SearchPipeline, job: dict[str, Any]) -> str:
    """The counts under the progress bar, the skipped files named, the job's error."""
    not_an_image = sum(1 for f in job["failures"] if f["reason"].startswith("not an image"))
    failed = f"**failed** {job['failed']}"
    if not_an_image:
        failed += f" ({not_an_image} not an image)"
    counts = (
        f"**Indexed** {job['indexed']} · **unchanged** {job['unchanged']} · "
        f"**skipped as duplicate** {job['duplicates']} · "
        f"**other files skipped** {job['not_images']} · {failed} · "
        f"**pruned** {job['pruned']} · {job['seconds']:.1f} s"
    )
    counts += duplicates_note(pipeline, job) + near_duplicates_note(pipeline, job)
    if job["error"]:
        counts += f"\n\n⚠️ {job['error']}"
    elif job["indexed"] and eventually_consistent(pipeline):
        counts += f"\n\nℹ️ {AOSS_NOTE}"
    return counts


def job_failures(job: dict[str, Any]) -> list[list[str]]:
    return [[f["uri"], f["reason"]] for f in job["failures"]]
