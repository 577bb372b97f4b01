"""Gradio web app: wires the UI to :mod:`search_core` and nothing else.

Run ``python app.py`` (see README). Serving (FastAPI, health checks, auth, share link, SIGTERM)
lives in :mod:`search_core.server`.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import html
from pathlib import Path
from typing import Any

import gradio as gr

from search_core.captions import percent, result_caption
from search_core.crop import box_from_pixels, draw_detections, object_at
from search_core.errors import SearchError
from search_core.factory import get_pipeline
from search_core.interfaces import EventuallyConsistent
from search_core.pipeline import WHOLE, AnalyzedImage
from search_core.sources import open_source
from search_core.tags import item_category, item_tags, product_name, short_source
from search_core.tempstore import jpeg_file
from search_core.types import Box, SearchHit
from search_core.uploads import check_upload_path, read_upload, upload_folder

MANUAL = "manual"
EXAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "queries"
AOSS_NOTE = (
    "New images in OpenSearch Serverless become searchable after up to a minute; "
    "results will appear shortly."
)


class QueryImage(gr.Image):
    """``gr.Image(type="filepath")`` that hands the uploaded file over undecoded.

    Why: Gradio's own preprocessing opens every upload with Pillow and converts anything not
    RGB itself before our code sees it. That fails with a raw "Could not preprocess input"
    on HTML/PDF/empty files and on big decompression bombs, decodes smaller bombs in full
    (hundreds of MB) past SEARCH_MAX_PIXELS, clips 16-bit PNGs to white and puts transparent
    backgrounds on black. :func:`search_core.images.load_image` does all of it properly and
    with messages a user can act on, so the file goes straight there — but only a file inside
    Gradio's upload folder (:mod:`search_core.uploads`: a client writes this path).
    """

    is_template = True  # rendered by the stock Image front-end component

    def preprocess(self, payload: Any) -> Any:
        if payload is None:
            return None
        try:
            return str(check_upload_path(str(getattr(payload, "path", None) or "")))
        except SearchError as exc:
            raise gr.Error(str(exc), print_exception=False) from None


#: Result images, in Gradio's upload folder so that Gradio serves them without copying them and
#: the temp-folder cap (SEARCH_TEMP_MAX_MB) covers them.
IMAGE_FILES = upload_folder() / "visual-search-images"


def image_file(image: Any, name: str | None = None) -> str:
    """The image as a JPEG file for an output component, written atomically.

    Why not return the PIL image: Gradio saves it to its cache under a hash of the bytes and
    rewrites that file in place every time, so when two users get the same preview at once, a
    download of it can be cut short ("peer closed connection without sending complete message
    body", seen with 20 users in bench/load.py). A file renamed into place is never seen
    half-written. ``name`` (a content hash) lets callers skip the encoding when the file
    already exists.
    """
    return str(jpeg_file(IMAGE_FILES, image, name))


def preview_file(uri: str, sha256: str) -> str | None:
    """A result's thumbnail, made once per catalogue image (keyed by its content hash): a
    search shows a dozen results, and re-reading, decoding and re-encoding each of them on
    every search cost more CPU than the search itself under load."""
    cached = IMAGE_FILES / f"preview-{sha256[:40]}.jpg"
    if cached.exists():
        return str(cached)
    preview = get_pipeline().preview(uri)
    return None if preview is None else image_file(preview, f"preview-{sha256[:40]}")


def no_preview_file() -> str:
    """The neutral stand-in thumbnail of a result whose image may not be shown."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((48, 72, 208, 184), outline=(170, 170, 170), width=4)
    draw.text((92, 196), "no preview", fill=(120, 120, 120))
    return image_file(image, "no-preview")


def _analyze(path: str | None) -> AnalyzedImage | None:
    if not path:
        return None
    pipeline = get_pipeline()
    return pipeline.analyze(read_upload(path, pipeline.settings.max_upload_bytes))


def _choices(analyzed: AnalyzedImage | None) -> list[tuple[str, str]]:
    choices = [("Whole image", WHOLE)]
    if analyzed is not None:
        choices += [(analyzed.choice_label(n), str(n)) for n in range(len(analyzed.detections))]
    choices.append(("Manual box (drag on the photo)", MANUAL))
    return choices


def _parse_box(text: str | None) -> Box | None:
    """The manual box the page's drag script wrote: "x0,y0,x1,y1" as fractions."""
    try:
        x0, y0, x1, y1 = (float(v) for v in (text or "").split(","))
    except ValueError:
        return None
    return box_from_pixels(x0, y0, x1, y1, 1, 1)


def _drawn(analyzed: AnalyzedImage, choice: str, box_text: str | None) -> str:
    """The photo with numbered boxes (captioned with the catalogue's best label where it is a
    close match), the searched region lit and the rest dimmed."""
    analyzed = get_pipeline().label_objects(analyzed)  # cached per upload: cheap after the first
    selected = int(choice) if choice.isdigit() else None
    region = _parse_box(box_text) if choice == MANUAL else None
    captions = [analyzed.box_caption(n) for n in range(len(analyzed.detections))]
    drawing = draw_detections(
        analyzed.image, analyzed.detections, captions, selected=selected, region=region
    )
    return image_file(drawing)


def analyze(path: str | None) -> tuple[Any, Any, str]:
    """New query image: detect objects, draw them, preselect the likeliest one (the public
    ``/analyze`` endpoint; the page uses :func:`on_image`)."""
    if not path:
        return None, gr.update(choices=_choices(None), value=WHOLE), ""
    try:
        analyzed = _analyze(path)
        assert analyzed is not None
        # each object's best catalogue label in the dropdown, and the object (or whole image)
        # that matches the catalogue best preselected
        analyzed = get_pipeline().label_objects(analyzed)
        preselected = get_pipeline().auto_object(analyzed)
    except SearchError as exc:
        gr.Warning(str(exc))
        return None, gr.update(choices=_choices(None), value=WHOLE), f"⚠️ {exc}"
    value = WHOLE if preselected is None else str(preselected)
    found = len(analyzed.detections)
    status = (
        f"{found} object(s) found; searching with **{_label(analyzed, value)}**."
        if found
        else "No objects detected: searching with the whole image (or drag a box on it)."
    )
    return (
        _drawn(analyzed, value, None),
        gr.update(choices=_choices(analyzed), value=value),
        status,
    )


def on_image(path: str | None) -> tuple[Any, Any, str, bool, str, str]:
    """:func:`analyze`, plus whether it worked, so the search chained after it runs only then
    (the error is shown once, here, not a second time by the search), and the manual box and
    "more like this" item of the previous photo forgotten."""
    drawn, dropdown, status = analyze(path)
    return drawn, dropdown, status, drawn is not None, "", ""


def on_photo_click(path: str | None, point: str) -> tuple[Any, Any, str]:
    """A click on the photo ("x,y" fractions from the page script) picks the smallest detected
    box under it, or the whole image when it hits none."""
    analyzed = _analyze(path)
    try:
        x, y = (float(v) for v in (point or "").split(","))
    except ValueError:
        return gr.skip(), gr.skip(), gr.skip()
    if analyzed is None:
        return gr.skip(), gr.skip(), gr.skip()
    number = object_at(analyzed.detections, x, y)
    value = WHOLE if number is None else str(number)
    return _drawn(analyzed, value, None), gr.update(value=value), ""


def on_drag(path: str | None, box_text: str) -> tuple[Any, Any, str, str]:
    """A drag on the photo is a manual box ("x0,y0,x1,y1" fractions from the page script);
    it is kept in the hidden field so K, filters and the dropdown reuse it."""
    analyzed = _analyze(path)
    if analyzed is None or _parse_box(box_text) is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return _drawn(analyzed, MANUAL, box_text), gr.update(value=MANUAL), "", box_text


def on_choice(path: str | None, choice: str, box_text: str) -> tuple[Any, str]:
    """Keyboard path: the dropdown moves the highlight like a click does."""
    analyzed = _analyze(path)
    if analyzed is None:
        return gr.skip(), ""
    return _drawn(analyzed, choice, box_text), ""


def _filters(category: str | None, tags: list[str] | None, source: str | None) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if category:
        filters["category"] = category
    if tags:
        filters["tags"] = list(tags)
    if source and source.strip():
        filters["source_prefix"] = source.strip()
    return filters


def _result_rows(hits: list[SearchHit]) -> tuple[list[tuple[Any, str]], list[dict[str, Any]]]:
    """Gallery items (thumbnail, caption) and, in the same order, the ids and scores the
    detail view needs. Only ids travel through the page: the detail view reads everything
    else from the index again, so an edited page can show nothing but catalogue items. A
    result whose picture may not be shown keeps its place with a stand-in and the reason."""
    pipeline = get_pipeline()
    gallery, rows = [], []
    for hit in hits:
        caption = result_caption(hit)
        preview = preview_file(hit.uri, hit.item.sha256)
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


def _search_view(
    path: str | None,
    choice: str,
    box_text: str,
    k: float,
    text: str,
    category: str | None,
    tags: list[str] | None,
    source: str | None,
    *,
    toast: bool,
) -> tuple[Any, str, list[dict[str, Any]], Any]:
    """Crop the chosen object, embed it, show the top K with name, score and source."""
    pipeline = get_pipeline()
    hide_detail = gr.update(visible=False)
    try:
        analyzed = _analyze(path)
        if analyzed is None and not (text or "").strip():
            return [], f"Upload a photo or type {_text_kind()} to search.", [], hide_detail
        region: Any = choice or WHOLE
        if choice == MANUAL:
            region = _parse_box(box_text)
            if region is None:
                region = WHOLE
        elif isinstance(choice, str) and choice.isdigit():
            # Dropdown values are 0-based detection numbers; as an int the pipeline takes
            # them as such (a digit *string* means the CLI's 1-based --object N).
            region = int(choice)
        filters = _filters(category, tags, source)
        hits = pipeline.search(analyzed, region, k=int(k), text=text or None, filters=filters)
    except SearchError as exc:
        if toast:
            gr.Warning(str(exc))
        return [], f"⚠️ {exc}", [], hide_detail
    gallery, rows = _result_rows(hits)
    what = ""
    if analyzed is not None:
        if choice == MANUAL and _parse_box(box_text) is not None:
            what = " for **your manual crop**"
        elif choice == MANUAL:
            what = " for **Whole image** (drag on the photo to draw your box)"
        else:
            what = f" for **{_label(analyzed, choice)}**"
    if text:
        what += f" with {_text_kind(short=True)} “{html.escape(text[:80])}”"
    note = ""
    if analyzed is not None and not analyzed.detections:
        note = "No objects detected: searched the whole photo (drag on it to draw a box). "
    unshown = sum(1 for row in rows if not row["preview"])
    return gallery, note + _summary(len(gallery), what, filters, unshown), rows, hide_detail


def _text_kind(short: bool = False) -> str:
    if get_pipeline().embedder.supports_text:
        return "text" if short else "a text"
    return "keyword" if short else "a keyword (e.g. banana)"


def _summary(shown: int, what: str, filters: dict[str, Any], unshown: int = 0) -> str:
    pipeline = get_pipeline()
    count = pipeline.index.count()
    if shown == 0:
        if count == 0:
            return "The index is empty: add images in the Index tab."
        return "No results" + (" with these filters." if filters else ".")
    narrowed = ""
    if filters:
        narrowed = " (filtered: " + ", ".join(f"{k} {v}" for k, v in filters.items()) + ")"
    note = f" {AOSS_NOTE}" if _eventually_consistent() else ""
    if unshown:
        note += f" {unshown} result(s) shown without a preview (see their captions)."
    return f"Top {shown} of {count} indexed images{what}{narrowed}.{note}"


def run_search(
    path: str | None,
    choice: str,
    box_text: str,
    k: float,
    text: str,
    category: str | None,
    tags: list[str] | None,
    source: str | None,
) -> tuple[Any, str, list[dict[str, Any]], Any]:
    return _search_view(path, choice, box_text, k, text, category, tags, source, toast=True)


def search(
    path: str | None,
    choice: str,
    k: float,
    text: str,
    left: float,
    top: float,
    right: float,
    bottom: float,
) -> tuple[Any, str]:
    """The public ``/search`` endpoint (scripts, bench/load.py): a manual crop is given in
    percent of the image by ``left, top, right, bottom``."""
    box = f"{left / 100},{top / 100},{right / 100},{bottom / 100}"
    gallery, status, _, _ = _search_view(path, choice, box, k, text, None, None, None, toast=True)
    return gallery, status


def search_after_upload(
    ok: bool,
    path: str | None,
    choice: str,
    box_text: str,
    k: float,
    text: str,
    category: str | None,
    tags: list[str] | None,
    source: str | None,
) -> tuple[Any, str, list[dict[str, Any]], Any]:
    """The automatic search after an upload; nothing when the upload was refused (its
    message is already shown)."""
    if not ok:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return _search_view(path, choice, box_text, k, text, category, tags, source, toast=False)


def search_again(
    item_id: str,
    path: str | None,
    choice: str,
    box_text: str,
    k: float,
    text: str,
    category: str | None,
    tags: list[str] | None,
    source: str | None,
) -> tuple[Any, str, list[dict[str, Any]], Any]:
    """Filters or K changed: redo what is on screen (the photo search or "more like this")."""
    if item_id:
        return more_like_this(item_id, k, category, tags, source)
    return _search_view(path, choice, box_text, k, text, category, tags, source, toast=False)


def more_like_this(
    item_id: str,
    k: float,
    category: str | None,
    tags: list[str] | None,
    source: str | None,
) -> tuple[Any, str, list[dict[str, Any]], Any]:
    """Searches with the catalogue item's stored vector: no upload, no embedding."""
    pipeline = get_pipeline()
    filters = _filters(category, tags, source)
    try:
        item = pipeline.item(item_id)
        hits = pipeline.search_by_item(item_id, int(k), filters or None)
    except SearchError as exc:
        gr.Warning(str(exc))
        return gr.skip(), f"⚠️ {exc}", gr.skip(), gr.skip()
    gallery, rows = _result_rows(hits)
    name = product_name(item.label, item.uri) if item else item_id[:12]
    source_text = f" ({html.escape(short_source(item.uri))})" if item else ""
    what = f" like **{html.escape(name)}**{source_text}"
    unshown = sum(1 for row in rows if not row["preview"])
    summary = _summary(len(gallery), what, filters, unshown)
    return gallery, summary, rows, gr.update(visible=False)


def open_result(rows: Any, evt: gr.SelectData) -> tuple[Any, Any, str, str]:
    """A click on a result opens its detail view: full source, size, labels, tags."""
    index = evt.index if isinstance(evt.index, int) else -1
    if not isinstance(rows, list) or not 0 <= index < len(rows):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    row = rows[index]
    pipeline = get_pipeline()
    item = pipeline.item(str(row.get("id", "")))
    if item is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    preview = preview_file(item.uri, item.sha256) or no_preview_file()
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
    similar = [(other, s) for other, s in similar if other is not None]
    if similar:
        lines.append(f"**+{len(similar)} near-duplicate(s) folded in:**")
        lines += [f"- `{other.uri}` · {percent(s)}" for other, s in similar]
    return gr.update(visible=True), preview, "\n\n".join(lines), item.sha256


def close_detail() -> Any:
    return gr.update(visible=False)


def refresh_filters() -> tuple[Any, Any]:
    """Filter choices from what the index holds (it grows while the sample is indexed)."""
    facets = get_pipeline().facets()
    return gr.update(choices=facets["category"]), gr.update(choices=facets["tags"])


def _label(analyzed: AnalyzedImage, value: str) -> str:
    return {v: label for label, v in _choices(analyzed)}.get(value, value)


def _eventually_consistent() -> bool:
    """OpenSearch Serverless shows new documents only after up to a minute."""
    index = get_pipeline().index
    return isinstance(index, EventuallyConsistent) and index.serverless


# -- Index tab ---------------------------------------------------------------------------------


def _progress_html(job: dict[str, Any] | None) -> str:
    if not job:
        return "<div id='index-progress-text'>No indexing job yet.</div>"
    total = max(job["total"], 1)
    percent = 100.0 * job["done"] / total if job["total"] else 0.0
    return (
        f"<div id='index-progress-text'>{html.escape(job['state'])}: {job['done']} / "
        f"{job['total']} files ({percent:.0f} %) — {html.escape(job['source'])}</div>"
        f"<progress max='100' value='{percent:.1f}' style='width:100%'></progress>"
    )


def _duplicates_note(job: dict[str, Any]) -> str:
    """Names the skipped duplicates and what they duplicate (a count alone sends people
    looking through folders)."""
    files = job.get("duplicate_files") or []
    if not files:
        return ""
    pipeline = get_pipeline()
    lines = []
    for entry in files[:5]:
        original = pipeline.item(entry["sha256"])
        same = f" (same content as `{original.uri}`)" if original else ""
        lines.append(f"- `{entry['uri']}`{same}")
    more = f"\n- … and {len(files) - 5} more" if len(files) > 5 else ""
    return "\n\n**Skipped as duplicate:**\n" + "\n".join(lines) + more


#: near-duplicate pairs found after each finished job (job id -> Markdown), computed once
_NEAR_DUPLICATES: dict[str, str] = {}
#: the all-pairs check is O(N²): above this many items the Index tab leaves it to the CLI
UI_NEAR_DUPLICATE_LIMIT = 5_000


def _near_duplicates_note(job: dict[str, Any]) -> str:
    """After a job that added images: the catalogue's near-duplicate pairs (first five)."""
    if job["state"] != "finished" or not job["indexed"]:
        return ""
    if job["id"] not in _NEAR_DUPLICATES:
        pairs = get_pipeline().near_duplicate_pairs(max_items=UI_NEAR_DUPLICATE_LIMIT)
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


def _job_view() -> tuple[str, str, list[list[str]], dict[str, Any], Any]:
    pipeline = get_pipeline()
    latest = pipeline.jobs.latest()
    job = latest.to_dict() if latest else None
    if job:
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
        counts += _duplicates_note(job) + _near_duplicates_note(job)
        if job["error"]:
            counts += f"\n\n⚠️ {job['error']}"
        elif job["indexed"] and _eventually_consistent():
            counts += f"\n\nℹ️ {AOSS_NOTE}"
        failures = [[f["uri"], f["reason"]] for f in job["failures"]]
    else:
        counts, failures = "", []
    running = bool(latest and latest.running)
    return _progress_html(job), counts, failures, pipeline.stats(), gr.update(active=running)


def start_index(source: str, prune: bool) -> tuple[str, str, list[list[str]], dict, Any]:
    pipeline = get_pipeline()
    try:
        open_source(source, pipeline.settings)  # refuse a bad path at once, not in the job
        pipeline.jobs.start(source.strip(), prune=prune)
    except SearchError as exc:  # outside the roots, bad S3 URI, a job already running
        gr.Warning(str(exc))
        # Not the previous job's (green) bar: nothing was started.
        refused = (
            _progress_html(None)
            if pipeline.jobs.latest() is None
            else "<div id='index-progress-text'>Not started (see below).</div>"
        )
        return refused, f"⚠️ {exc}", [], pipeline.stats(), gr.update(active=False)
    return _job_view()


def stop_index() -> tuple[str, str, list[list[str]], dict, Any]:
    get_pipeline().jobs.stop()
    return _job_view()


def reset_index(confirmed: bool) -> tuple[dict[str, Any], Any, str]:
    pipeline = get_pipeline()
    if not confirmed:
        return pipeline.stats(), gr.update(), "Tick the box to confirm the reset."
    if pipeline.jobs.active() is not None:
        return pipeline.stats(), gr.update(value=False), "Stop the running job first."
    removed = pipeline.index.count()
    pipeline.index.reset()
    return pipeline.stats(), gr.update(value=False), f"Removed {removed} item(s)."


#: The page's styles and pointer script live in search_core/ui/ (see pointer.js for why a
#: script). The styles go in through a gr.HTML block: the server mounts the app with
#: gr.mount_gradio_app, which replaces any css given to Blocks.
UI_DIR = Path(__file__).resolve().parent / "search_core" / "ui"
CSS = "<style>\n" + (UI_DIR / "page.css").read_text(encoding="utf-8") + "</style>"
POINTER_JS = (UI_DIR / "pointer.js").read_text(encoding="utf-8")

#: Replace the [photo, box] inputs of the hidden buttons' events with what the pointer did.
BOX_JS = "(path, box) => [path, window.__visualSearchBox || box]"
POINT_JS = "(path, point) => [path, window.__visualSearchPoint || point]"


def build_demo() -> gr.Blocks:
    pipeline = get_pipeline()
    pipeline.bootstrap_sample()  # first start: a catalogue to search right away
    supports_text = pipeline.embedder.supports_text
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))
    with gr.Blocks(title="Visual search") as demo:
        gr.HTML(CSS, padding=False, elem_id="page-style")
        gr.Markdown(
            "# Visual search\nUpload a photo, **click an object** (or drag a box around it) "
            "and find similar catalogue images. Click a result for details and "
            "*More like this*."
        )
        with gr.Tab("Search", id="search-tab", elem_id="search-tab"):
            # Hidden fields, not gr.State: any State makes Gradio hold a heartbeat stream
            # open per client, which a SIGTERM then has to cut (and log) after the grace time.
            photo_ok = gr.Checkbox(False, visible="hidden", elem_id="photo-ok")
            rows = gr.JSON([], visible="hidden", elem_id="result-ids")
            item_id = gr.Textbox("", visible="hidden", elem_id="detail-id")  # open in detail
            like_item = gr.Textbox("", visible="hidden", elem_id="like-id")  # filters redo it
            with gr.Row():
                with gr.Column(scale=2):
                    image = QueryImage(
                        type="filepath",
                        label="Photo",
                        sources=["upload", "clipboard", "webcam"],
                        elem_id="query-image",
                        height=200,
                    )
                    gr.Markdown(
                        "**Click an object** on the photo to search it · **drag** to draw "
                        "your own box",
                        elem_id="photo-hint",
                    )
                    detections = gr.Image(
                        label="Detected objects",
                        show_label=False,
                        interactive=False,
                        elem_id="detections-image",
                        height=420,
                        buttons=["fullscreen"],
                    )
                    box_text = gr.Textbox(visible="hidden", elem_id="crop-box")
                    apply_point = gr.Button(
                        "Pick the clicked object", visible="hidden", elem_id="apply-point"
                    )
                    apply_box = gr.Button(
                        "Use the dragged box", visible="hidden", elem_id="apply-box"
                    )
                    choice = gr.Dropdown(
                        label="Object (or click it on the photo)",
                        choices=_choices(None),
                        value=WHOLE,
                        elem_id="object-choice",
                        interactive=True,
                    )
                    text = gr.Textbox(
                        label="Text (optional)" if supports_text else "Keyword (optional)",
                        elem_id="query-text",
                        max_lines=2,
                        placeholder="e.g. 'this, but in red'"
                        if supports_text
                        else "e.g. banana, shoe: matches the automatic tags",
                    )
                    with gr.Accordion("Filters", open=False, elem_id="filters"):
                        category = gr.Dropdown(
                            label="Category (top folder)",
                            choices=[],
                            value=None,
                            elem_id="filter-category",
                            interactive=True,
                        )
                        tags = gr.Dropdown(
                            label="Tags (any of)",
                            choices=[],
                            value=[],
                            multiselect=True,
                            elem_id="filter-tags",
                            interactive=True,
                        )
                        source = gr.Textbox(
                            label="Source starts with",
                            elem_id="filter-source",
                            placeholder="e.g. s3://bucket/shoes/ or /data/catalogue/Fruit",
                        )
                    k = gr.Slider(1, 50, 12, step=1, label="Results (K)", elem_id="k-slider")
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                    if examples:
                        gr.Examples(
                            examples=examples,
                            inputs=[image],
                            label="Examples: shelf photos with several products",
                            examples_per_page=8,
                        )
                with gr.Column(scale=3):
                    status = gr.Markdown(elem_id="search-status")
                    with gr.Group(visible=False, elem_id="detail") as detail:
                        with gr.Row():
                            detail_image = gr.Image(
                                label="Result",
                                interactive=False,
                                elem_id="detail-image",
                                height=300,
                                scale=1,
                            )
                            detail_info = gr.Markdown(elem_id="detail-info")
                        with gr.Row():
                            more = gr.Button(
                                "More like this", variant="primary", elem_id="more-like-this"
                            )
                            close = gr.Button("Close", elem_id="detail-close")
                    gallery = gr.Gallery(
                        label="Similar images",
                        columns=4,
                        height=None,
                        elem_id="results",
                        object_fit="contain",
                        allow_preview=False,
                    )
            query = [image, choice, box_text, k, text, category, tags, source]
            shown = [gallery, status, rows, detail]
            image.change(
                on_image,
                [image],
                [detections, choice, status, photo_ok, box_text, like_item],
                api_visibility="private",
                concurrency_id="search",
            ).success(
                search_after_upload,
                [photo_ok, *query],
                shown,
                api_visibility="private",
                concurrency_id="search",
            )
            search_button.click(
                run_search, query, shown, api_visibility="private", concurrency_id="search"
            ).then(lambda: "", None, like_item, api_visibility="private")
            apply_point.click(
                on_photo_click,
                [image, box_text],
                [detections, choice, like_item],
                js=POINT_JS,
                api_visibility="private",
                concurrency_id="search",
            ).success(run_search, query, shown, api_visibility="private", concurrency_id="search")
            apply_box.click(
                on_drag,
                [image, box_text],
                [detections, choice, like_item, box_text],
                js=BOX_JS,
                api_visibility="private",
                concurrency_id="search",
            ).success(run_search, query, shown, api_visibility="private", concurrency_id="search")
            choice.input(
                on_choice,
                [image, choice, box_text],
                [detections, like_item],
                api_visibility="private",
            ).success(run_search, query, shown, api_visibility="private", concurrency_id="search")
            text.submit(
                run_search, query, shown, api_visibility="private", concurrency_id="search"
            ).then(lambda: "", None, like_item, api_visibility="private")
            for control in (category, tags):
                control.input(
                    search_again,
                    [like_item, *query],
                    shown,
                    api_visibility="private",
                    concurrency_id="search",
                )
            source.submit(
                search_again,
                [like_item, *query],
                shown,
                api_visibility="private",
                concurrency_id="search",
            )
            for control in (category, tags):
                control.focus(refresh_filters, None, [category, tags], api_visibility="private")
            gallery.select(
                open_result,
                [rows],
                [detail, detail_image, detail_info, item_id],
                api_visibility="private",
            )
            more.click(
                more_like_this,
                [item_id, k, category, tags, source],
                shown,
                api_name="more_like_this",
                concurrency_id="search",
            ).then(lambda i: i, item_id, like_item, api_visibility="private")
            close.click(close_detail, None, detail, api_visibility="private")
            # The public endpoints of earlier versions, unchanged for scripts and bench/load.py
            # (hidden buttons: their inputs differ from the page's controls).
            with gr.Row(visible="hidden"):
                crop = [
                    gr.Number(value=v, visible="hidden", elem_id=f"crop-{name}")
                    for name, v in (("left", 0), ("top", 0), ("right", 100), ("bottom", 100))
                ]
                api_analyze = gr.Button(visible="hidden", elem_id="api-analyze")
                api_search = gr.Button(visible="hidden", elem_id="api-search")
            api_analyze.click(
                analyze,
                [image],
                [detections, choice, status],
                api_name="analyze",
                concurrency_id="search",
            )
            api_search.click(
                search,
                [image, choice, k, text, *crop],
                [gallery, status],
                api_name="search",
                concurrency_id="search",
            )
        with gr.Tab("Index", id="index-tab", elem_id="index-tab"):
            default_source = str(pipeline.settings.sample_catalogue or "")
            with gr.Row():
                source_path = gr.Textbox(
                    label="Source: folder path or s3://bucket/prefix",
                    value=default_source,
                    elem_id="index-source",
                    scale=4,
                )
                prune = gr.Checkbox(label="Remove items whose file is gone", elem_id="index-prune")
            with gr.Row():
                start = gr.Button("Start indexing", variant="primary", elem_id="index-start")
                stop = gr.Button("Stop", elem_id="index-stop")
            progress = gr.HTML(_progress_html(None), elem_id="index-progress")
            counts = gr.Markdown(elem_id="index-counts")
            failures = gr.Dataframe(
                headers=["file", "reason"],
                label="Failed files",
                elem_id="index-failures",
                interactive=False,
                wrap=True,
            )
            stats = gr.JSON(label="Index", elem_id="index-stats")
            with gr.Row():
                confirm = gr.Checkbox(
                    label="Yes, remove every item from the index", elem_id="reset-confirm"
                )
                reset = gr.Button("Reset index", variant="stop", elem_id="index-reset")
            reset_status = gr.Markdown(elem_id="reset-status")
            timer = gr.Timer(1.0, active=False)
            view = [progress, counts, failures, stats, timer]
            start.click(start_index, [source_path, prune], view, api_name="start_index")
            stop.click(stop_index, None, view, api_name="stop_index")
            timer.tick(_job_view, None, view, api_name="index_status", show_progress="hidden")
            reset.click(reset_index, [confirm], [stats, confirm, reset_status], api_name="reset")
        demo.load(_job_view, None, view, api_visibility="private")
        demo.load(refresh_filters, None, [category, tags], api_visibility="private")
        demo.load(None, None, None, js=POINTER_JS)
    return demo


if __name__ == "__main__":
    from search_core.server import main

    raise SystemExit(main(build_demo))
