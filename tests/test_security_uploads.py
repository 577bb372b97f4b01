"""Security over real HTTP against ``python app.py``: server files named as image inputs are
refused through the plain HTTP API and through gradio_client (nothing copied, /ping answering
throughout), with and without auth; uploads keep the temp folder under its cap; every route but
the health checks and the login page needs a session; login brute force ends in 429s."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import GROCERY, REPO, require

sys.path.insert(0, str(REPO / "bench"))
from attacks import (
    PASSWORD,
    USER,
    call,
    copies_of,
    file_payload,
    make_targets,
    search_args,
    secret_contents,
    tree_bytes,
)
from load import AppServer, default_detector

from search_core.uploads import NOT_AN_UPLOAD

TEMP_CAP_MB = 1


class Target:
    def __init__(self, server: AppServer, auth: bool, targets: dict[str, str]) -> None:
        self.server = server
        self.auth = auth
        self.targets = targets
        self.cookies = _login(server.url) if auth else None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def temp(self) -> Path:
        return Path(self.server.env["GRADIO_TEMP_DIR"])


def _login(url: str) -> httpx.Cookies:
    got = httpx.post(f"{url}/login", data={"username": USER, "password": PASSWORD}, timeout=30)
    assert got.status_code == 200, got.text
    return got.cookies


@pytest.fixture(scope="module", params=["auth", "no-auth"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Target]:
    if not GROCERY.is_dir():
        pytest.skip(f"shared test data not found: {GROCERY}")
    auth = request.param == "auth"
    work = tmp_path_factory.mktemp(f"sec-{request.param}")
    env = {"SEARCH_TEMP_MAX_MB": str(TEMP_CAP_MB), "SEARCH_LOGIN_LOCKOUT_S": "3",
           "SEARCH_LOGIN_MAX_FAILURES": "10", "SEARCH_DETECTOR": default_detector(),
           "SEARCH_FOLDER_ROOTS": str(work / "roots")}
    if auth:
        env["SEARCH_AUTH"] = f"{USER}:{PASSWORD}"
    server = AppServer(work, **env)
    server.start()
    targets = make_targets(work / "targets")
    temp = Path(server.env["GRADIO_TEMP_DIR"])
    link = temp / "planted" / "link.jpg"  # a link inside the upload folder pointing out
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(targets["outside image"])
    targets["symlink in upload folder"] = str(link)
    try:
        yield Target(server, auth, targets)
    finally:
        server.stop()


class PingWatch:
    """Pings every 0.2 s in a thread while the attacks run; each ping must answer in 1 s (an
    httpx timeout, not a timed assertion on speed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                httpx.get(f"{self.url}/ping", timeout=1.0).raise_for_status()
                self.count += 1
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))


def test_server_files_are_refused_over_http(app: Target) -> None:
    with PingWatch(app.url) as watch:
        for name, path in app.targets.items():
            for api, data in (("analyze", [file_payload(path)]), ("search", search_args(path))):
                got = call(app.url, api, data, app.cookies, timeout=30)
                assert got.event == "http" and got.text.startswith("400"), (name, api, got)
                assert NOT_AN_UPLOAD in got.text, (name, got.text)  # one message for all
        # URLs and a path without the FileData marker are refused the same way
        for payload in ({"path": "http://169.254.169.254/latest/meta-data"},
                        {"path": "/etc/shadow"}):
            got = call(app.url, "analyze", [payload], app.cookies, timeout=30)
            assert got.text.startswith("400") and NOT_AN_UPLOAD in got.text, got
        big = httpx.post(f"{app.url}/gradio_api/call/analyze", cookies=app.cookies, timeout=30,
                         json={"data": [{"path": "x", "url": "data:," + "A" * 2**21}]})
        assert big.status_code == 413  # JSON bodies are a few KB; images come as uploads
    assert not watch.failures and watch.count > 0, watch.failures
    assert copies_of([app.temp], secret_contents(app.targets)) == []
    log = app.server.log()
    assert "refused file input" in log and "Traceback" not in log


def test_the_content_type_cannot_route_around_the_guard(app: Target) -> None:
    """Media types are case-insensitive and FastAPI parses a JSON body whatever case its type
    is written in: "Application/Json" once reached Gradio past the upload guard."""
    body = {"data": [file_payload(app.targets["outside image"])]}
    import json

    for content_type in ("Application/Json;charset=utf-8", "APPLICATION/JSON",
                         "application/vnd.api+json", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        got = httpx.post(f"{app.url}/gradio_api/call/analyze", cookies=app.cookies,
                         content=json.dumps(body).encode(), headers=headers, timeout=30)
        assert got.status_code in (400, 422), (content_type, got.status_code, got.text)
        if got.status_code == 400:
            assert NOT_AN_UPLOAD in got.text, (content_type, got.text)
    assert copies_of([app.temp], secret_contents(app.targets)) == []


def test_server_files_are_refused_through_gradio_client(app: Target,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.client import Endpoint

    auth = (USER, PASSWORD) if app.auth else None
    client = Client(app.url, auth=auth, verbose=False)
    try:
        # the legitimate way first: the client uploads the file's bytes, the search works
        photo = next(GROCERY.glob("val/**/*.jpg"))
        drawn, _choice, status = client.predict(handle_file(str(photo)), api_name="/analyze")
        assert drawn and not status.startswith("⚠️"), status
        # an attacker's client sends server paths as they are (no upload)
        monkeypatch.setattr(Endpoint, "_upload_file", lambda self, f, index: f)
        with PingWatch(app.url) as watch:
            for name, path in app.targets.items():
                with pytest.raises(Exception) as refused:
                    client.predict(file_payload(path), api_name="/analyze")
                assert "Traceback" not in str(refused.value), name
    finally:
        client.close()
    assert not watch.failures, watch.failures
    assert copies_of([app.temp], secret_contents(app.targets)) == []


def test_uploads_stay_under_the_temp_cap(app: Target) -> None:
    photos = sorted(GROCERY.glob("train/**/*.jpg"))[:200]
    total = sum(p.stat().st_size for p in photos)
    assert total > 3 * TEMP_CAP_MB * 2**20  # the uploads alone would overflow the cap
    with httpx.Client(cookies=app.cookies, timeout=60) as http:
        for photo in photos:
            with photo.open("rb") as handle:
                got = http.post(f"{app.url}/gradio_api/upload",
                                files={"files": (photo.name, handle, "image/jpeg")})
            assert got.status_code == 200, got.text
    files, size = tree_bytes(app.temp)
    print(f"\n200 uploads ({total / 2**20:.1f} MB): temp folder {size / 2**20:.2f} MB in "
          f"{files} files (cap {TEMP_CAP_MB} MB)")
    assert size <= TEMP_CAP_MB * 2**20


def test_every_route_but_health_and_login_needs_a_session(app: Target) -> None:
    if not app.auth:
        pytest.skip("auth is off")
    for route in ("/ping", "/healthz", "/"):
        assert httpx.get(app.url + route, timeout=30).status_code == 200, route
    for route in ("/openapi.json", "/docs", "/redoc", "/gradio_api/user", "/gradio_api/info",
                  "/gradio_api/openapi.json", "/config", "/gradio_api/queue/status",
                  "/gradio_api/file=/etc/passwd", "/api/anything"):
        got = httpx.get(app.url + route, timeout=30)
        assert got.status_code == 401, (route, got.status_code)
    upload = httpx.post(f"{app.url}/gradio_api/upload", files={"files": ("a.jpg", b"x")},
                        timeout=30)
    assert upload.status_code == 401
    assert call(app.url, "analyze", [None]).text.startswith("401")
    assert httpx.get(app.url + "/gradio_api/info", cookies=app.cookies,
                     timeout=30).status_code == 200


def test_index_tab_errors_name_the_problem_not_the_server(app: Target) -> None:
    from gradio_client import Client

    client = Client(app.url, auth=(USER, PASSWORD) if app.auth else None, verbose=False)
    try:
        roots = app.server.env["SEARCH_FOLDER_ROOTS"]
        for source, reason in (("/etc", "outside the allowed folders"),
                               (f"{roots}/{'x' * 300}", "too long"),
                               (f"{roots}/bad\x00name", "NUL character")):
            counts = client.predict(source, False, api_name="/start_index")[1]
            assert counts.startswith("⚠️") and reason in counts, (source[-20:], counts)
            assert "Errno" not in counts
            if reason.startswith("outside"):
                assert roots not in counts  # the server's layout stays private
    finally:
        client.close()
    assert "Traceback" not in app.server.log()


def test_login_page_works_behind_the_wall(app: Target) -> None:
    """A real browser: the login form loads (nothing it needs is walled off), logging in
    shows the app, and an example image is analysed."""
    if not app.auth:
        pytest.skip("auth is off")
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium not installed")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_page()
            page.goto(app.url + "/")
            page.wait_for_selector("input[type=password]", timeout=60_000)
            page.fill("input[type=text]", USER)
            page.fill("input[type=password]", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_selector("#query-image", timeout=60_000)
            # an example image is a file Gradio cached at start: it must pass the upload guard
            page.locator(".gallery-item").first.click()
            page.wait_for_function(
                "() => /object\\(s\\) found|No objects detected|⚠️/.test("
                "document.querySelector('#search-status')?.innerText ?? '')", timeout=90_000)
            assert "⚠️" not in page.inner_text("#search-status")
        finally:
            browser.close()


def test_login_brute_force_ends_in_429_and_the_owner_gets_back_in(app: Target) -> None:
    """Last in the module: it locks 127.0.0.1 out for SEARCH_LOGIN_LOCKOUT_S."""
    if not app.auth:
        pytest.skip("auth is off")
    answers: list[Any] = []
    for attempt in range(50):
        got = httpx.post(f"{app.url}/login",
                         data={"username": USER, "password": f"guess-{attempt}"}, timeout=30)
        answers.append((got.status_code, got.headers.get("retry-after")))
    codes = [code for code, _ in answers]
    assert set(codes[:9]) == {400} and set(codes[10:]) == {429}, codes
    retry = int(answers[-1][1])
    assert 1 <= retry <= 3
    locked = httpx.post(f"{app.url}/login", data={"username": USER, "password": PASSWORD},
                        timeout=30)
    assert locked.status_code == 429  # even the right password waits out the lock
    time.sleep(retry + 0.5)
    assert _login(app.url)  # after the window the owner gets in
    log = app.server.log()
    assert "login failed" in log and "guess-" not in log and PASSWORD not in log


def test_a_forged_forwarded_for_does_not_escape_the_client_lock_out(tmp_path: Path) -> None:
    """Behind the load balancer (FORWARDED_ALLOW_IPS=*, as in the container) the client writes
    the left of X-Forwarded-For and the balancer appends the address it saw. Guessing with a
    new user name and a new forged address each time once never locked the client out; the
    address the balancer appended is the one that counts, and another client still gets in."""
    server = AppServer(tmp_path / "app", SEARCH_AUTH=f"{USER}:{PASSWORD}",
                       FORWARDED_ALLOW_IPS="*", SEARCH_LOGIN_MAX_FAILURES="3",
                       SEARCH_LOGIN_LOCKOUT_S="60", SEARCH_DETECTOR="none")
    server.start()
    try:
        codes = []
        for attempt in range(8):
            got = httpx.post(f"{server.url}/login", timeout=30,
                             data={"username": f"guess{attempt}", "password": "x"},
                             headers={"X-Forwarded-For": f"10.9.0.{attempt}, 203.0.113.7"})
            codes.append(got.status_code)
        assert codes[-1] == 429 and codes.count(429) >= 4, codes
        other = httpx.post(f"{server.url}/login", timeout=30,
                           data={"username": USER, "password": PASSWORD},
                           headers={"X-Forwarded-For": "198.51.100.4"})
        assert other.status_code == 200, other.text
        log = server.log()
        assert "from 203.0.113.7" in log and "from 10.9.0." not in log
    finally:
        server.stop()


def test_cli_needs_no_allow_list(tmp_path: Path) -> None:
    """The owner's command line indexes any folder without SEARCH_FOLDER_ROOTS."""
    import json
    import shutil
    import subprocess

    folder = tmp_path / "Pictures"
    folder.mkdir()
    for photo in sorted(require(GROCERY).glob("train/Fruit/Banana/*.jpg"))[:2]:
        shutil.copy(photo, folder / photo.name)
    env = {k: v for k, v in os.environ.items() if k != "SEARCH_FOLDER_ROOTS"}
    env.update(SEARCH_DATA_DIR=str(tmp_path / "data"), SEARCH_DETECTOR="none",
               SEARCH_SAMPLE_CATALOGUE="off")
    run = subprocess.run([sys.executable, "-m", "search_core", "index", str(folder)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["indexed"] == 2


def test_results_outside_the_roots_keep_their_place_without_a_preview(tmp_path: Path) -> None:
    """The owner indexes ~/Pictures with the CLI (no allow-list), then searches in the web app
    whose SEARCH_FOLDER_ROOTS does not include it: every result is still listed, with a
    placeholder thumbnail and the reason in its caption, and nothing of the folder is read
    for the web (the previews stay out of the temp folder)."""
    from gradio_client import Client, handle_file
    from load import run_cli

    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    photos = sorted(require(GROCERY).glob("train/Fruit/Banana/*.jpg"))[:3]
    for photo in photos:
        shutil.copy(photo, pictures / photo.name)
    server = AppServer(tmp_path / "app", SEARCH_FOLDER_ROOTS=str(tmp_path / "app" / "roots"))
    env = {k: v for k, v in server.env.items() if k != "SEARCH_FOLDER_ROOTS"}
    run = run_cli(["index", str(pictures)], env)
    assert run.returncode == 0, run.stderr
    server.start()
    try:
        client = Client(server.url, verbose=False)
        try:
            gallery, status = client.predict(handle_file(str(photos[0])), "whole", 5, "", 0, 0,
                                             100, 100, api_name="/search")
        finally:
            client.close()
    finally:
        server.stop()
    assert len(gallery) == 3, (gallery, status)
    for item in gallery:
        assert "no preview: outside the folders this web app may show" in item["caption"]
        assert str(pictures) in item["caption"]  # the result itself is named
    assert "3 result(s) shown without a preview" in status, status
    assert "Top 3 of 3" in status, status
    assert str(tmp_path / "app" / "roots") not in status  # no server layout in messages


def test_share_mode_serves_the_same_locked_down_app(tmp_path: Path) -> None:
    """``--share`` serves :func:`search_core.server.create_app` (auth wall, upload guard, health
    routes) and points Gradio's tunnel at it. The tunnel needs the internet; here its client
    binary is a stand-in that fails Gradio's checksum, so the link is refused at once, the
    failure is logged, and the local port (what the tunnel would forward) is attacked."""
    from gradio import tunneling

    hf_home = tmp_path / "hf"
    fake_frpc = hf_home / "gradio" / "frpc" / tunneling.BINARY_FILENAME
    fake_frpc.parent.mkdir(parents=True)
    fake_frpc.write_text("#!/bin/sh\nexit 1\n")
    fake_frpc.chmod(0o755)
    server = AppServer(tmp_path / "app", GRADIO_SHARE="1", SEARCH_AUTH=f"{USER}:{PASSWORD}",
                       HF_HOME=str(hf_home))
    server.start()
    try:
        secret = tmp_path / "secret.txt"
        secret.write_text("share-mode-secret")
        assert httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
        robots = httpx.get(f"{server.url}/robots.txt", timeout=10).text
        assert "Disallow: /" in robots  # Gradio's share behaviour: not for search engines
        for route in ("/openapi.json", "/gradio_api/user", "/gradio_api/info", "/api/anything",
                      "/gradio_api/file=/etc/passwd"):
            assert httpx.get(server.url + route, timeout=30).status_code == 401, route
        cookies = _login(server.url)
        for path in ("/etc/shadow", str(secret), "/dev/zero"):
            got = call(server.url, "analyze", [file_payload(path)], cookies, timeout=30)
            assert got.text.startswith("400") and NOT_AN_UPLOAD in got.text, (path, got)
        deadline = time.monotonic() + 60
        while "no share link" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = server.log()
        assert "no share link" in log and "served at http://127.0.0.1" in log
        assert "Traceback" not in log
    finally:
        server.stop()
    assert copies_of([Path(server.env["GRADIO_TEMP_DIR"])], [b"share-mode-secret"]) == []


def test_near_limit_images_four_at_once_come_back(tmp_path: Path) -> None:
    """The memory-hungry kinds (RGBA, 16-bit grey, float TIFF, palette + transparency), four
    searches at once against the real server: every one gets results. The peak RSS is printed
    (goals and the 7000² figures: ``bench/memory.py``)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from load import wait_job
    from memory import near_limit_images

    folder = tmp_path / "near-limit"
    folder.mkdir()
    paths = []
    for name, data in near_limit_images(4200).items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    server = AppServer(tmp_path / "app", SEARCH_SAMPLE_CATALOGUE=str(REPO / "samples" /
                                                                    "catalogue"))
    server.start()
    try:
        first = Client(server.url, verbose=False)
        wait_job(first)
        first.close()

        def search(path: Path) -> tuple[list[Any], str]:
            client = Client(server.url, verbose=False)
            try:
                return client.predict(handle_file(str(path)), "whole", 5, "", 0, 0, 100, 100,
                                      api_name="/search")
            finally:
                client.close()

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(search, paths))
        print(f"\nserver peak RSS with 4 near-limit (4200²) searches at once: "
              f"{server.hwm_mb():.0f} MB; now {server.rss_mb():.0f} MB")
    finally:
        server.stop()
    for path, (gallery, status) in zip(paths, results, strict=True):
        assert len(gallery) == 5 and not status.startswith("⚠️"), (path.name, status)
