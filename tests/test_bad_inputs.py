"""Hostile and awkward inputs through the real CLI and the real web app (see bad_inputs.py).

For every case: a clear message (CLI: one ``error:`` line on stderr and a non-zero exit for
``search``; ``index`` exits 0 and lists each failure with its reason; app: a "⚠️" status, no
crash), the index is unchanged by the bad item, and the rest of the batch still lands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from bad_inputs import (
    ACCEPT,
    LONG_TEXT,
    REFUSE,
    ROTATED_RED_FRACTION,
    ROTATED_SIZE,
    SKIP,
    Case,
    make_symlink_loops,
    non_utf8_name,
    write_corpus,
)
from helpers import GROCERY, REPO
from PIL import Image

from search_core.crop import crop
from search_core.errors import ImageError
from search_core.images import load_image
from search_core.types import Box

sys.path.insert(0, str(REPO / "bench"))
from load import AppServer, default_detector, json_output, wait_job

GOOD_PHOTOS = 3  # real grocery photos beside the bad files: the "rest of the batch"
LINK_FAILURES = {"outside.jpg": "outside the allowed folders", "dangling.jpg": "broken link"}
# The command line is the owner's tool: no folder allow-list, so the link out is read there.
CLI_LINK_FAILURES = {"dangling.jpg": "broken link"}


def _uri(case_name: str, folder: Path) -> str:
    """The URI the index shows for a file (non-UTF-8 names become percent-encoded file://)."""
    path = str(folder / case_name)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        from search_core.sources import _display_uri

        return _display_uri(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    """The bad files, symlink loops, a link out of the roots, a dangling link, and three real
    photos in a sub-folder, inside a root (``root``) that the tests configure as allowed."""
    if not GROCERY.is_dir():
        pytest.skip(f"shared test data not found: {GROCERY}")
    root = tmp_path_factory.mktemp("bad")
    folder = root / "corpus"
    cases = write_corpus(folder)
    make_symlink_loops(folder)
    outside = tmp_path_factory.mktemp("outside") / "secret.jpg"
    shutil.copy(next(GROCERY.glob("train/**/*.jpg")), outside)
    (folder / "outside.jpg").symlink_to(outside)
    (folder / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    photos = sorted(GROCERY.glob("train/Fruit/Banana/*.jpg"))[:GOOD_PHOTOS]
    for photo in photos:
        shutil.copy(photo, folder / "nested" / photo.name)
    return folder, cases


def _env(root: Path, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SEARCH_DATA_DIR": str(data),
        "SEARCH_SAMPLE_CATALOGUE": "off",
        "SEARCH_DETECTOR": default_detector(),
        "SEARCH_FOLDER_ROOTS": f"{root}",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, errors="replace")


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- library level


def test_every_file_case_decodes_or_is_refused_clearly(corpus: tuple[Path, list[Case]]) -> None:
    folder, cases = corpus
    for case in cases:
        data = (folder / case.name).read_bytes()
        if case.outcome == ACCEPT:
            image = load_image(data)
            assert image.mode == "RGB" and min(image.size) >= 16, case.why
        elif case.name.startswith("huge-"):
            load_image(data)  # a valid JPEG: only the upload limit may refuse it (tested below)
        else:
            with pytest.raises(ImageError) as info:
                load_image(data)
            assert case.expect in str(info.value).lower(), (case.why, str(info.value))


def test_awkward_formats_keep_their_content(corpus: tuple[Path, list[Case]]) -> None:
    folder, _ = corpus
    gray = load_image((folder / "gray16.png").read_bytes())
    values = {gray.getpixel((x, 64))[0] for x in range(0, 256, 32)}
    assert len(values) > 4, "16-bit PNG was clipped to a few levels"
    palette = load_image((folder / "palette-alpha.png").read_bytes())
    colours = palette.getcolors(1 << 16) or []
    assert (255, 255, 255) in {c for _, c in colours}, "transparency should land on white"
    rotated = load_image((folder / "phone-rotated.jpg").read_bytes())
    assert rotated.size == ROTATED_SIZE  # portrait, as the phone displayed it
    band = crop(rotated, Box(0.0, 0.0, 1.0, ROTATED_RED_FRACTION * 0.8), pad=0.0)
    red, _green, blue = band.resize((1, 1)).getpixel((0, 0))
    assert red > 180 and blue < 80, "the box must select the same region in the rotated frame"


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_indexed(corpus: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    folder, _ = corpus
    env = _env(folder.parent, tmp_path_factory.mktemp("cli-data"))
    return env, _cli("index", str(folder), env=env)


def test_cli_index_lists_each_failure_and_lands_the_rest(
    corpus: tuple[Path, list[Case]], cli_indexed: tuple[dict[str, str], subprocess.CompletedProcess]
) -> None:
    folder, cases = corpus
    env, run = cli_indexed
    assert run.returncode == 0, run.stderr
    summary = _last_json(run.stdout)
    refused = [c for c in cases if c.outcome == REFUSE]
    accepted = [c for c in cases if c.outcome == ACCEPT]
    failures = [line for line in run.stderr.splitlines() if line.startswith("failed: ")]
    for case in refused:
        line = next((f for f in failures if f.startswith(f"failed: {folder / case.name}: ")), "")
        assert line, f"{case.name} not listed in:\n{run.stderr}"
        reason = line.split(": ", 2)[2].lower()
        assert case.expect in reason or (case.name.startswith("huge-") and "too large" in reason)
    for name, reason in CLI_LINK_FAILURES.items():
        assert any(f.startswith(f"failed: {folder / name}: ") and reason in f for f in failures)
    assert summary["failed"] == len(refused) + len(CLI_LINK_FAILURES) == len(failures)
    assert summary["not_images"] == 0  # an SVG is named like an image: listed as a failure
    # symlink loops: each file once; the link out of the folder is indexed by the CLI
    assert summary["indexed"] == len(accepted) + GOOD_PHOTOS + 1

    stats = _last_json(_cli("stats", env=env).stdout)
    assert stats["count"] == summary["indexed"]
    again = _cli("index", str(folder / "loop" / "loop" / "nested" / "up"), env=env)
    assert again.returncode == 0, again.stderr
    repeat = _last_json(again.stdout)  # same folder through the loops: nothing new
    assert repeat["indexed"] == 0 and repeat["unchanged"] == summary["indexed"]
    assert _last_json(_cli("stats", env=env).stdout)["count"] == summary["indexed"]


def test_cli_search_refuses_each_bad_file_with_one_line(
    corpus: tuple[Path, list[Case]], cli_indexed: tuple[dict[str, str], subprocess.CompletedProcess]
) -> None:
    folder, cases = corpus
    env, _ = cli_indexed
    bad = [c for c in cases if c.outcome in (REFUSE, SKIP)]

    def search(case: Case) -> tuple[Case, subprocess.CompletedProcess[str]]:
        return case, _cli("search", str(folder / case.name), "--k", "3", env=env)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(search, bad))
    for case, run in results:
        assert run.returncode != 0, (case.name, run.stdout)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case.name, run.stderr)
        assert case.expect in lines[0].lower(), (case.name, lines[0])
        assert "Traceback" not in run.stderr
    count = _last_json(_cli("stats", env=env).stdout)["count"]
    assert count == len([c for c in cases if c.outcome == ACCEPT]) + GOOD_PHOTOS + 1  # + link out


def test_cli_search_finds_each_awkward_image_itself(
    corpus: tuple[Path, list[Case]], cli_indexed: tuple[dict[str, str], subprocess.CompletedProcess]
) -> None:
    folder, cases = corpus
    env, _ = cli_indexed
    accepted = [c for c in cases if c.outcome == ACCEPT]

    def search(case: Case) -> tuple[Case, subprocess.CompletedProcess[str]]:
        return case, _cli("search", str(folder / case.name), "--k", "3", "--object", "whole",
                          env=env)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(search, accepted))
    for case, run in results:
        assert run.returncode == 0, (case.name, run.stderr)
        top = _last_json(run.stdout)["results"][0]
        assert top["uri"] == _uri(case.name, folder) and top["score"] > 0.99, (case.name, top)


def test_cli_long_text_query_is_refused(
    corpus: tuple[Path, list[Case]], cli_indexed: tuple[dict[str, str], subprocess.CompletedProcess]
) -> None:
    folder, _ = corpus
    env, _ = cli_indexed
    assert len(LONG_TEXT) == 10_000
    run = _cli("search", str(folder / "photo.webp"), "--text", LONG_TEXT, env=env)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "error: the text query is too long (10,000 characters; at most 1,000)"
    ]


# ----------------------------------------------------------------------------- web app


@pytest.fixture(scope="module")
def app(corpus: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[AppServer]:
    folder, _ = corpus
    server = AppServer(tmp_path_factory.mktemp("app"), SEARCH_FOLDER_ROOTS=str(folder.parent))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app: AppServer):
    from gradio_client import Client

    client = Client(app.url, verbose=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def app_indexed(client, corpus: tuple[Path, list[Case]]) -> dict:
    folder, _ = corpus
    client.predict(str(folder), False, api_name="/start_index")
    return wait_job(client)


def _upload_raw(app: AppServer, name: bytes, data: bytes) -> httpx.Response:
    """A multipart upload with the file name as raw bytes (a browser on a Latin-1 system);
    gradio_client cannot send names that are not UTF-8."""
    boundary = "----bad-inputs-boundary"
    body = (f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="files"; filename="' + name + b'"\r\n'
            + b"Content-Type: image/jpeg\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode())
    return httpx.post(f"{app.url}/gradio_api/upload", content=body, timeout=120,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_app_index_tab_lists_failures_and_lands_the_rest(
    app_indexed: dict, corpus: tuple[Path, list[Case]]
) -> None:
    _folder, cases = corpus
    assert "finished" in app_indexed["progress"], app_indexed
    failures = app_indexed["failures"]
    rows = failures.get("data", []) if isinstance(failures, dict) else failures
    reasons = {Path(row[0]).name: row[1].lower() for row in rows}
    for case in cases:
        if case.outcome == REFUSE:
            assert case.name in reasons, (case.name, reasons)
    for name, reason in LINK_FAILURES.items():
        assert reason in reasons[name]
    accepted = len([c for c in cases if c.outcome == ACCEPT]) + GOOD_PHOTOS
    assert app_indexed["stats"]["count"] == accepted


def test_app_shows_a_clear_message_for_each_bad_upload(
    app: AppServer, client, app_indexed: dict, corpus: tuple[Path, list[Case]]
) -> None:
    from gradio_client import handle_file

    folder, cases = corpus
    count = app_indexed["stats"]["count"]
    for case in cases:
        if case.outcome not in (REFUSE, SKIP) or case.name.startswith("huge-"):
            continue
        path = handle_file(str(folder / case.name))
        _image, _choice, status = client.predict(path, api_name="/analyze")
        assert status.startswith("⚠️") and case.expect in status.lower(), (case.name, status)
        gallery, status = client.predict(path, "whole", 5, "", 0, 0, 100, 100,
                                         api_name="/search")
        assert gallery == [] and case.expect in status.lower(), (case.name, status)
    stats = json_output(client.predict(api_name="/index_status")[3])
    assert stats["count"] == count  # nothing added, nothing lost
    assert app.alive() and httpx.get(f"{app.url}/ping").status_code == 200
    assert "Traceback" not in app.log(), app.log()[-3000:]


def test_app_finds_each_awkward_image_itself(
    client, app_indexed: dict, corpus: tuple[Path, list[Case]]
) -> None:
    from gradio_client import handle_file

    folder, cases = corpus
    for case in cases:
        if case.outcome != ACCEPT or case.name == non_utf8_name():
            continue
        path = handle_file(str(folder / case.name))
        image, _choice, status = client.predict(path, api_name="/analyze")
        assert image and not status.startswith("⚠️"), (case.name, status)
        gallery, status = client.predict(path, "whole", 3, "", 0, 0, 100, 100,
                                         api_name="/search")
        assert gallery, (case.name, status)
        caption = gallery[0]["caption"]
        # "name · score %\n…/folder/file\ntags: …": the very file, at 100 %
        source_line = caption.split("\n")[1]
        assert " · 100 %" in caption and source_line.endswith(f"{folder.name}/{case.name}"), (
            case.name, caption)


def test_app_shows_the_phone_photo_upright(client, app_indexed: dict,
                                           corpus: tuple[Path, list[Case]]) -> None:
    from gradio_client import handle_file

    folder, _ = corpus
    image, _choice, _status = client.predict(handle_file(str(folder / "phone-rotated.jpg")),
                                             api_name="/analyze")
    with Image.open(image) as shown:
        assert shown.width < shown.height  # portrait, like the phone showed it
        red, _green, blue = shown.convert("RGB").getpixel((shown.width // 2, 4))
        assert red > 180 and blue < 80, "red band should be on top"


def test_app_non_utf8_file_name(app: AppServer, client, app_indexed: dict,
                                corpus: tuple[Path, list[Case]]) -> None:
    folder, _ = corpus
    name = non_utf8_name()
    uploaded = _upload_raw(app, os.fsencode(name), (folder / name).read_bytes())
    assert uploaded.status_code == 200, uploaded.text
    payload = {"path": uploaded.json()[0], "orig_name": "photo.jpg",
               "meta": {"_type": "gradio.FileData"}}
    gallery, status = client.predict(payload, "whole", 3, "", 0, 0, 100, 100, api_name="/search")
    assert gallery, status
    caption = gallery[0]["caption"]  # "name · score %\n…/folder/file\ntags: …"
    assert caption.split("\n")[1].endswith(_uri(name, folder).rsplit("/", 2)[-1]), caption


def test_app_refuses_a_60_mb_upload(app: AppServer, client,
                                    corpus: tuple[Path, list[Case]]) -> None:
    from gradio_client import handle_file

    folder, _ = corpus
    huge = folder / "huge-60mb.jpg"
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # client-side check
        client.predict(handle_file(str(huge)), api_name="/analyze")
    # and the server enforces it for clients that do not check first
    refused = _upload_raw(app, b"huge.jpg", huge.read_bytes())
    assert refused.status_code == 413 and "maximum allowed size" in refused.text
    assert app.alive()


def test_app_long_text_query(client, app_indexed: dict,
                             corpus: tuple[Path, list[Case]]) -> None:
    from gradio_client import handle_file

    folder, _ = corpus
    gallery, status = client.predict(handle_file(str(folder / "photo.webp")), "whole", 3,
                                     LONG_TEXT, 0, 0, 100, 100, api_name="/search")
    assert gallery == [] and "too long" in status
    gallery, status = client.predict(None, "whole", 3, LONG_TEXT, 0, 0, 100, 100,
                                     api_name="/search")
    assert gallery == [] and "too long" in status
