"""Gradio web app: wires the UI to :mod:`search_core` and nothing else.

Run ``python app.py`` (see README). Serving (FastAPI, health checks, auth, share link, SIGTERM)
lives in :mod:`search_core.server`.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path
from typing import Any

import gradio as gr

from search_core import presenters as show
from search_core.crop import object_at
from search_core.errors import SearchError
from search_core.factory import get_pipeline
from search_core.pipeline import WHOLE, AnalyzedImage
from search_core.presenters import MANUAL
from search_core.sources import open_source
from search_core.tempstore import no_preview_file, preview_file
from search_core.uploads import check_upload_path, read_upload

EXAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "queries"


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


def _analyze(path: str | None) -> AnalyzedImage | None:
    if not path:
        return None
    pipeline = get_pipeline()
    return pipeline.analyze(read_upload(path, pipeline.settings.max_upload_bytes))


def analyze(path: str | None) -> tuple[Any, Any, str]:
    """New query image: detect objects, draw them, preselect the likeliest one (the public
    ``/analyze`` endpoint; the page uses :func:`on_image`)."""
    if not path:
        return None, gr.update(choices=show.object_choices(None), value=WHOLE), ""
    pipeline = get_pipeline()
    try:
        analyzed = _analyze(path)
        assert analyzed is not None
        # each object's best catalogue label in the dropdown, and the object (or whole image)
        # that matches the catalogue best preselected
        analyzed = pipeline.label_objects(analyzed)
        preselected = pipeline.auto_object(analyzed)
    except SearchError as exc:
        gr.Warning(str(exc))
        return None, gr.update(choices=show.object_choices(None), value=WHOLE), f"⚠️ {exc}"
    value = WHOLE if preselected is None else str(preselected)
    return (
        show.drawn_file(pipeline, analyzed, value, None),
        gr.update(choices=show.object_choices(analyzed), value=value),
        show.analyze_status(analyzed, value),
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
    xy = show.parse_point(point)
    if xy is None or analyzed is None:
        return gr.skip(), gr.skip(), gr.skip()
    number = object_at(analyzed.detections, *xy)
    value = WHOLE if number is None else str(number)
    return show.drawn_file(get_pipeline(), analyzed, value, None), gr.update(value=value), ""


def on_drag(path: str | None, box_text: str) -> tuple[Any, Any, str, str]:
    """A drag on the photo is a manual box ("x0,y0,x1,y1" fractions from the page script);
    it is kept in the hidden field so K, filters and the dropdown reuse it."""
    analyzed = _analyze(path)
    if analyzed is None or show.parse_box(box_text) is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    drawn = show.drawn_file(get_pipeline(), analyzed, MANUAL, box_text)
    return drawn, gr.update(value=MANUAL), "", box_text


def on_choice(path: str | None, choice: str, box_text: str) -> tuple[Any, str]:
    """Keyboard path: the dropdown moves the highlight like a click does."""
    analyzed = _analyze(path)
    if analyzed is None:
        return gr.skip(), ""
    return show.drawn_file(get_pipeline(), analyzed, choice, box_text), ""


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
            return [], show.nothing_to_search(pipeline), [], hide_detail
        region = show.search_region(choice, box_text)
        filters = show.search_filters(category, tags, source)
        hits = pipeline.search(analyzed, region, k=int(k), text=text or None, filters=filters)
    except SearchError as exc:
        if toast:
            gr.Warning(str(exc))
        return [], f"⚠️ {exc}", [], hide_detail
    gallery, rows = show.result_rows(pipeline, hits)
    what = show.photo_search_what(pipeline, analyzed, choice, box_text, text)
    status = show.no_objects_note(analyzed) + show.summary(pipeline, what, filters, rows)
    return gallery, status, rows, hide_detail


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
    filters = show.search_filters(category, tags, source)
    try:
        item = pipeline.item(item_id)
        hits = pipeline.search_by_item(item_id, int(k), filters or None)
    except SearchError as exc:
        gr.Warning(str(exc))
        return gr.skip(), f"⚠️ {exc}", gr.skip(), gr.skip()
    gallery, rows = show.result_rows(pipeline, hits)
    summary = show.summary(pipeline, show.like_what(item, item_id), filters, rows)
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
    preview = preview_file(item.uri, item.sha256, pipeline.preview) or no_preview_file()
    return gr.update(visible=True), preview, show.detail_text(pipeline, item, row), item.sha256


def close_detail() -> Any:
    return gr.update(visible=False)


def refresh_filters() -> tuple[Any, Any]:
    """Filter choices from what the index holds (it grows while the sample is indexed)."""
    facets = get_pipeline().facets()
    return gr.update(choices=facets["category"]), gr.update(choices=facets["tags"])


# -- Index tab ---------------------------------------------------------------------------------


def _job_view() -> tuple[str, str, list[list[str]], dict[str, Any], Any]:
    pipeline = get_pipeline()
    latest = pipeline.jobs.latest()
    job = latest.to_dict() if latest else None
    counts = show.job_counts(pipeline, job) if job else ""
    failures = show.job_failures(job) if job else []
    running = bool(latest and latest.running)
    return show.progress_html(job), counts, failures, pipeline.stats(), gr.update(active=running)


def start_index(source: str, prune: bool) -> tuple[str, str, list[list[str]], dict, Any]:
    pipeline = get_pipeline()
    try:
        open_source(source, pipeline.settings)  # refuse a bad path at once, not in the job
        pipeline.jobs.start(source.strip(), prune=prune)
    except SearchError as exc:  # outside the roots, bad S3 URI, a job already running
        gr.Warning(str(exc))
        first = pipeline.jobs.latest() is None
        refused = show.progress_html(None) if first else show.NOT_STARTED_HTML
        return refused, f"⚠️ {exc}", [], pipeline.stats(), gr.update(active=False)
    return _job_view()


def stop_index() -> tuple[str, str, list[list[str]], dict, Any]:
    get_pipeline().jobs.stop()
    return _job_view()


def reset_index(confirmed: bool) -> tuple[dict[str, Any], Any, str]:
    pipeline = get_pipeline()
    if not confirmed:
        return pipeline.stats(), gr.update(), "Tick the box to confirm the reset."
    try:
        removed = pipeline.reset()
    except SearchError as exc:  # a job is running
        return pipeline.stats(), gr.update(value=False), str(exc)
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
                        choices=show.object_choices(None),
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
            progress = gr.HTML(show.progress_html(None), elem_id="index-progress")
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
