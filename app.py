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

from search_core.crop import box_from_pixels, draw_detections
from search_core.errors import SearchError
from search_core.factory import get_pipeline
from search_core.pipeline import WHOLE, AnalyzedImage
from search_core.sources import open_source
from search_core.tempstore import jpeg_file
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


def _choices(analyzed: AnalyzedImage) -> list[tuple[str, str]]:
    choices = [("Whole image", WHOLE)]
    choices += [(analyzed.choice_label(n), str(n)) for n in range(len(analyzed.detections))]
    choices.append(("Manual crop (sliders below)", MANUAL))
    return choices


def on_image(path: str | None) -> tuple[Any, Any, str]:
    """New query image: detect objects, draw them, fill the dropdown with the preselection."""
    if not path:
        return None, gr.update(choices=[("Whole image", WHOLE)], value=WHOLE), ""
    try:
        analyzed = _analyze(path)
        assert analyzed is not None
        # each object's best catalogue label in the dropdown, and the object (or whole image)
        # that matches the catalogue best preselected
        analyzed = get_pipeline().label_objects(analyzed)
        preselected = get_pipeline().auto_object(analyzed)
    except SearchError as exc:
        gr.Warning(str(exc))
        return None, gr.update(choices=[("Whole image", WHOLE)], value=WHOLE), f"⚠️ {exc}"
    value = WHOLE if preselected is None else str(preselected)
    found = len(analyzed.detections)
    status = (
        f"{found} object(s) found; searching with **{_label(analyzed, value)}**."
        if found
        else "No objects detected: searching with the whole image (or draw a manual crop)."
    )
    return (
        image_file(draw_detections(
            analyzed.image, analyzed.detections,
            [analyzed.box_caption(n) for n in range(len(analyzed.detections))],
        )),
        gr.update(choices=_choices(analyzed), value=value),
        status,
    )


def _label(analyzed: AnalyzedImage, value: str) -> str:
    return {v: label for label, v in _choices(analyzed)}.get(value, value)


def run_search(
    path: str | None,
    choice: str,
    k: float,
    text: str,
    left: float,
    top: float,
    right: float,
    bottom: float,
) -> tuple[list[tuple[Any, str]], str]:
    """Crop the chosen object, embed it, and show the top K with score and source."""
    pipeline = get_pipeline()
    try:
        analyzed = _analyze(path)
        region: Any = choice or WHOLE
        if analyzed is not None and choice == MANUAL:
            region = box_from_pixels(left, top, right, bottom, 100, 100)
        elif isinstance(choice, str) and choice.isdigit():
            # Dropdown values are 0-based detection numbers; as an int the pipeline takes
            # them as such (a digit *string* means the CLI's 1-based --object N).
            region = int(choice)
        hits = pipeline.search(analyzed, region, k=int(k), text=text or None)
    except SearchError as exc:
        gr.Warning(str(exc))
        return [], f"⚠️ {exc}"
    gallery = []
    unshown = 0
    for rank, hit in enumerate(hits, start=1):
        caption = f"{rank}. {hit.score:.3f} · {hit.item.label} · {hit.uri}"
        preview = preview_file(hit.uri, hit.item.sha256)
        if preview is None:  # never drop a result silently: say why it has no picture
            unshown += 1
            why = pipeline.preview_refusal(hit.uri) or "the file cannot be read now"
            preview, caption = no_preview_file(), f"{caption} · no preview: {why}"
        gallery.append((preview, caption))
    if not hits:
        count = pipeline.index.count()
        message = (
            "The index is empty: add images in the Index tab." if count == 0 else "No results."
        )
        return [], message
    note = f" {AOSS_NOTE}" if _eventually_consistent() else ""
    if unshown:
        note += f" {unshown} result(s) shown without a preview (see their captions)."
    what = ""
    if analyzed is not None:
        what = (
            " for **manual crop**" if choice == MANUAL else f" for **{_label(analyzed, choice)}**"
        )
    if text:
        what += f" with text “{html.escape(text[:80])}”"
    return gallery, f"Top {len(gallery)} of {pipeline.index.count()} indexed images{what}.{note}"


def _eventually_consistent() -> bool:
    """OpenSearch Serverless shows new documents only after up to a minute."""
    return bool(getattr(get_pipeline().index, "serverless", False))


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


def _job_view() -> tuple[str, str, list[list[str]], dict[str, Any], Any]:
    pipeline = get_pipeline()
    latest = pipeline.jobs.latest()
    job = latest.to_dict() if latest else None
    if job:
        counts = (
            f"**Indexed** {job['indexed']} · **unchanged** {job['unchanged']} · "
            f"**skipped as duplicate** {job['duplicates']} · **not images** {job['not_images']}"
            f" · **failed** {job['failed']} · **pruned** {job['pruned']} · "
            f"{job['seconds']:.1f} s"
        )
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
        progress, _, failures, stats, timer = _job_view()
        return progress, f"⚠️ {exc}", failures, stats, timer
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


def build_demo() -> gr.Blocks:
    pipeline = get_pipeline()
    pipeline.bootstrap_sample()  # first start: a catalogue to search right away
    supports_text = pipeline.embedder.supports_text
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))
    with gr.Blocks(title="Visual search") as demo:
        gr.Markdown(
            "# Visual search\nUpload a photo, pick an object, find similar catalogue images."
        )
        with gr.Tab("Search", id="search-tab", elem_id="search-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = QueryImage(
                        type="filepath",
                        label="Photo",
                        sources=["upload", "clipboard", "webcam"],
                        elem_id="query-image",
                        height=360,
                    )
                    choice = gr.Dropdown(
                        label="Object",
                        choices=[("Whole image", WHOLE)],
                        value=WHOLE,
                        elem_id="object-choice",
                        interactive=True,
                    )
                    with gr.Accordion("Manual crop (percent of the image)", open=False):
                        with gr.Row():
                            left = gr.Slider(0, 100, 0, step=1, label="Left", elem_id="crop-left")
                            right = gr.Slider(
                                0, 100, 100, step=1, label="Right", elem_id="crop-right"
                            )
                        with gr.Row():
                            top = gr.Slider(0, 100, 0, step=1, label="Top", elem_id="crop-top")
                            bottom = gr.Slider(
                                0, 100, 100, step=1, label="Bottom", elem_id="crop-bottom"
                            )
                    text = gr.Textbox(
                        label="Text (optional)",
                        elem_id="query-text",
                        max_lines=2,
                        interactive=supports_text,
                        placeholder="e.g. 'this, but in red'"
                        if supports_text
                        else "Text queries need SEARCH_EMBEDDER=clip or titan",
                    )
                    k = gr.Slider(1, 50, 12, step=1, label="Results (K)", elem_id="k-slider")
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                    if examples:
                        gr.Examples(examples=examples, inputs=[image], label="Examples")
                with gr.Column(scale=2):
                    detections = gr.Image(
                        label="Detected objects",
                        interactive=False,
                        elem_id="detections-image",
                        height=360,
                    )
                    status = gr.Markdown(elem_id="search-status")
                    gallery = gr.Gallery(
                        label="Similar images",
                        columns=4,
                        height="auto",
                        elem_id="results",
                        object_fit="contain",
                    )
            search_inputs = [image, choice, k, text, left, top, right, bottom]
            image.change(
                on_image,
                [image],
                [detections, choice, status],
                api_name="analyze",
                concurrency_id="search",
            ).then(
                run_search,
                search_inputs,
                [gallery, status],
                api_visibility="private",
                concurrency_id="search",
            )
            search_button.click(
                run_search,
                search_inputs,
                [gallery, status],
                api_name="search",
                concurrency_id="search",
            )
            for trigger in (choice.input, text.submit):
                trigger(
                    run_search,
                    search_inputs,
                    [gallery, status],
                    api_visibility="private",
                    concurrency_id="search",
                )
        with gr.Tab("Index", id="index-tab", elem_id="index-tab"):
            default_source = str(pipeline.settings.sample_catalogue or "")
            with gr.Row():
                source = gr.Textbox(
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
            start.click(start_index, [source, prune], view, api_name="start_index")
            stop.click(stop_index, None, view, api_name="stop_index")
            timer.tick(_job_view, None, view, api_name="index_status", show_progress="hidden")
            reset.click(reset_index, [confirm], [stats, confirm, reset_status], api_name="reset")
        demo.load(_job_view, None, view, api_visibility="private")
    return demo


if __name__ == "__main__":
    from search_core.server import main

    raise SystemExit(main(build_demo))
