"""The Gradio app driven through its API with gradio_client, as a user's browser drives it:
analyse a photo, switch objects, search, text on an image-only model, the Index tab."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server import AppProcess

from search_core.config import Settings
from search_core.factory import build_embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_and_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("app")
    catalogue = tmp / "catalogue"
    server = AppProcess(
        tmp,
        SEARCH_SAMPLE_CATALOGUE="off",
        SEARCH_FOLDER_ROOTS=f"{tmp},{Path(__file__).resolve().parents[2]}",
    ).start()
    try:
        server.wait_for("/healthz", 200)
        yield Client(server.url + "/", verbose=False), catalogue
    finally:
        server.kill()


def _json(value: object) -> dict:
    """gradio_client hands a JSON component's value back as a file path or a JSON string."""
    if isinstance(value, dict):
        return value
    text = str(value)
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON: {value!r}") from exc


def _poll_job(client: object, timeout: float = 180) -> tuple:
    deadline = time.monotonic() + timeout
    view: tuple = ()
    while time.monotonic() < deadline:
        view = client.predict(api_name="/index_status")  # type: ignore[attr-defined]
        if any(state in view[0] for state in ("finished", "failed", "stopped")):
            return view
        time.sleep(0.5)
    pytest.fail(f"indexing did not finish: {view[:2]}")


def test_index_tab_then_search_objects(client_and_dirs: tuple, grocery: Path, scenes: Path) -> None:
    from gradio_client import handle_file

    client, catalogue = client_and_dirs
    for name in ("Banana", "Lemon", "Arla-Standard-Milk"):
        (catalogue / name).mkdir(parents=True)
        for photo in sorted(next(grocery.glob(f"train/**/{name}")).glob("*.jpg"))[:6]:
            shutil.copy(photo, catalogue / name / photo.name)
    (catalogue / "Lemon" / "page.jpg").write_text("<html>not an image</html>")
    (catalogue / "Lemon" / "notes.txt").write_text("a note, skipped quietly")
    first_banana = sorted((catalogue / "Banana").glob("*.jpg"))[0]
    shutil.copy(first_banana, catalogue / "Banana" / "again.jpg")
    from PIL import Image

    with Image.open(first_banana) as photo:  # a near-duplicate: the same photo, re-encoded
        photo.save(catalogue / "Banana" / "reencoded.jpg", quality=60)

    # Empty index: a search says what to do instead of failing.
    query = scenes / "grocery_Banana.jpg"
    gallery, status = client.predict(
        handle_file(str(query)), "whole", 5, "", 0, 0, 100, 100, api_name="/search"
    )
    assert gallery == [] and "index is empty" in status

    client.predict(str(catalogue), False, api_name="/start_index")
    progress, counts, failures, stats, _ = _poll_job(client)
    assert "finished" in progress
    assert "**Indexed** 19" in counts
    # The counts agree with the failure list, and the skipped duplicate is named.
    assert "**other files skipped** 1" in counts and "**failed** 1 (1 not an image)" in counts
    assert "**Skipped as duplicate:**" in counts and "again.jpg" in counts, counts
    assert f"same content as `{first_banana}`" in counts, counts
    assert "**Near-duplicates in the catalogue:**" in counts, counts
    assert f"`{first_banana}` ~ `{catalogue / 'Banana' / 'reencoded.jpg'}`" in counts, counts
    assert [row[1] for row in failures["data"]] == ["not an image: an HTML page"]
    stats = _json(stats)
    # 19 photos plus the copy, which the index keeps as a second name of the same content
    # the app runs the embedder its environment selects (by default Lite0 + Lite2)
    embedder = build_embedder(Settings.from_env())
    assert stats["count"] == 20 and stats["embedder"] == embedder.model_id

    # Analyse: boxes drawn, dropdown with numbered objects plus whole image and manual crop.
    drawn, dropdown, message = client.predict(
        handle_file(str(scenes / "darknet_dog.jpg")), api_name="/analyze"
    )
    assert Path(drawn).is_file()
    values = [value for _, value in dropdown["choices"]]
    assert values[0] == "whole" and values[-1] == "manual" and len(values) >= 4
    assert "object(s) found" in message
    labels = [label for label, _ in dropdown["choices"]]
    assert any(label.startswith("Dog") for label in labels), labels

    # Search the banana photo: whole image, then a manual crop.
    gallery, status = client.predict(
        handle_file(str(query)), "whole", 5, "", 0, 0, 100, 100, api_name="/search"
    )
    assert len(gallery) == 5 and "Top 5 of 20" in status
    assert gallery[0]["caption"].startswith("Banana · ")  # name · score % · short source
    # a tag that only repeats the name ("banana", "Banana") is not repeated on the caption
    assert "tags: " not in gallery[0]["caption"] or "banana" not in gallery[0]["caption"].split(
        "tags: ", 1)[1].lower(), gallery[0]["caption"]
    gallery, status = client.predict(
        handle_file(str(query)), "manual", 3, "", 10, 10, 90, 90, api_name="/search"
    )
    assert len(gallery) == 3 and "manual crop" in status

    # A text query on an image-only embedder explains what to do.
    gallery, status = client.predict(
        None, "whole", 5, "a yellow banana", 0, 0, 100, 100, api_name="/search"
    )
    assert gallery == [] and "SEARCH_EMBEDDER=clip or titan" in status

    # Reset needs the confirmation tick.
    stats, _, message = client.predict(False, api_name="/reset")
    stats = _json(stats)
    assert stats["count"] == 20 and "confirm" in message
    stats, _, message = client.predict(True, api_name="/reset")
    stats = _json(stats)
    assert stats["count"] == 0 and "Removed 20" in message
