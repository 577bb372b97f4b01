"""The REST API's upload limit (SEARCH_MAX_UPLOAD_MB) holds while the body arrives, over real
HTTP against ``python app.py``: a chunked body past the limit is cut off (the server's memory
and temp folder never hold it), a too-large Content-Length is answered before the body is sent,
and uploads up to the limit still work. The middleware itself is checked in process below."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_server import AppProcess

from search_core.api import create_api
from search_core.config import Settings
from search_core.uploads import MULTIPART_OVERHEAD, BodyLimit

REPO = Path(__file__).resolve().parents[1]
SHELF = REPO / "samples" / "queries" / "shelf-peppers.jpg"
LIMIT = 2**20  # SEARCH_MAX_UPLOAD_MB=1
BIG = 60 * 2**20  # the oversized bodies: 60 x the limit
BOUNDARY = "limit-test-boundary"
HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff"
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


class Server:
    def __init__(self, app: AppProcess, tmpdir: Path) -> None:
        self.app = app
        self.url = app.url
        self.port = app.port
        self.temp_dirs = (tmpdir, Path(app.env["GRADIO_TEMP_DIR"]))

    @property
    def pid(self) -> int:
        assert self.app.proc is not None
        return self.app.proc.pid

    def status(self, key: str) -> int:
        """A /proc/<pid>/status memory figure in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.pid}/status")

    def reset_peak(self) -> None:
        """VmHWM restarts from the current RSS: after a request it is the request's peak."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def temp_bytes(self) -> int:
        """Bytes in the server's temp folders, including files it holds open after deleting
        them (Python's TemporaryFile, which spooled uploads become, has no name)."""
        total = 0
        for folder in self.temp_dirs:
            for root, _, files in os.walk(folder):
                for name in files:
                    with contextlib.suppress(OSError):  # deleted meanwhile
                        total += os.lstat(os.path.join(root, name)).st_size
        fds = Path(f"/proc/{self.pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
                if target.endswith(" (deleted)") and target.startswith(
                        tuple(str(folder) for folder in self.temp_dirs)):
                    total += fd.stat().st_size
            except OSError:
                pass
        return total


class TempWatch:
    """The largest :meth:`Server.temp_bytes` seen while a request runs (sampled)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TempWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.temp_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.temp_bytes())
            self._stop.wait(0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("upload-limit")
    tmpdir = work / "tmp"  # the server's system temp folder, where FastAPI spools uploads
    tmpdir.mkdir()
    app = AppProcess(work, SEARCH_MAX_UPLOAD_MB="1", SEARCH_SAMPLE_CATALOGUE="off",
                     TMPDIR=str(tmpdir)).start()
    try:
        app.wait_for("/healthz", 200)
        yield Server(app, tmpdir)
    finally:
        app.kill()


def _body(size: int, sent: list[int]) -> Iterator[bytes]:
    """A multipart form with an ``image`` of ``size`` bytes, made while it is sent (a generator
    body: httpx sends it chunked unless a Content-Length is given); ``sent`` counts."""
    yield HEAD
    chunk = b"0" * 2**20
    for _ in range(size // len(chunk)):
        sent[0] += len(chunk)
        yield chunk
    yield TAIL


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["status"] == 413 and "SEARCH_MAX_UPLOAD_MB" in body["error"], body
    assert "the limit is 1 MB" in body["error"], body


def test_a_chunked_body_past_the_limit_is_cut_off(server: Server) -> None:
    sent = [0]
    rss = server.status("VmRSS")
    server.reset_peak()
    with TempWatch(server) as temp:
        response = httpx.post(f"{server.url}/api/search", content=_body(BIG, sent),
                              headers=MULTIPART, timeout=300)
    _assert_too_large(response)
    growth = server.status("VmHWM") - rss
    assert growth < 30 * 2**20, f"server memory grew {growth / 2**20:.0f} MB for a refused body"
    assert temp.peak < 3 * LIMIT, f"{temp.peak / 2**20:.1f} MB reached the temp folders"
    # the server closed the connection instead of reading the rest: the client stopped early
    # (what it sent beyond the limit sat in socket buffers)
    assert sent[0] < BIG / 2, f"the client sent {sent[0] / 2**20:.0f} MB"
    assert "more than" in response.json()["error"]
    assert httpx.get(f"{server.url}/ping", timeout=30).status_code == 200


def test_a_declared_length_past_the_limit_is_refused_before_the_body(server: Server) -> None:
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: {MULTIPART['content-type']}\r\nContent-Length: {BIG}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())  # and not one byte of the body
        answer = b""
        while chunk := sock.recv(65536):  # the server answers, then closes
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer
    assert b"connection: close" in headers.lower()
    refused = json.loads(body)
    assert refused["status"] == 413 and "(60.0 MB)" in refused["error"], refused

    # an ordinary client sending an honest Content-Length gets the same JSON answer
    sent = [0]
    with TempWatch(server) as temp:
        response = httpx.post(f"{server.url}/api/search", content=_body(BIG, sent),
                              headers={**MULTIPART, "content-length": str(BIG + len(HEAD + TAIL))},
                              timeout=300)
    _assert_too_large(response)
    assert temp.peak < LIMIT and sent[0] < BIG / 2


def _image_of_about(size: int) -> bytes:
    """The shelf photo as a PNG of a little under ``size`` bytes (scaled up)."""
    photo = Image.open(SHELF).convert("RGB")
    best = b""
    low, high = photo.width, 8 * photo.width
    while low <= high:
        width = (low + high) // 2
        scaled = photo.resize((width, width * photo.height // photo.width))
        buffer = io.BytesIO()
        scaled.save(buffer, format="PNG")
        if buffer.tell() < size:
            best, low = buffer.getvalue(), width + 1
        else:
            high = width - 1
    assert size - 64 * 1024 < len(best) < size, len(best)
    return best


def test_uploads_up_to_the_limit_still_work(server: Server) -> None:
    small = httpx.post(f"{server.url}/api/search", timeout=120,
                       files={"image": ("shelf.jpg", SHELF.read_bytes(), "image/jpeg")})
    assert small.status_code == 200, small.text
    assert small.json()["results"] == []  # the index is empty: no sample catalogue
    near = _image_of_about(LIMIT)
    response = httpx.post(f"{server.url}/api/search", timeout=120, data={"k": "3"},
                          files={"image": ("near.png", near, "image/png")})
    assert response.status_code == 200, (len(near), response.text)
    assert response.json()["searched"] is not None
    # an image just over the limit fits in the form's overhead: the route's own check refuses it
    over = near + b"\0" * (LIMIT + 1 - len(near))
    response = httpx.post(f"{server.url}/api/search", timeout=120,
                          files={"image": ("over.png", over, "image/png")})
    _assert_too_large(response)


# --------------------------------------------------------------------------- in process


class Inner:
    """An ASGI app that reads the whole body, as FastAPI's form parsing does, then answers."""

    def __init__(self, fail_on_disconnect: bool = False) -> None:
        self.received = 0
        self.calls = 0
        self.fail_on_disconnect = fail_on_disconnect

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.fail_on_disconnect:
                    raise RuntimeError("client disconnected")
                break
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _run(app: BodyLimit, chunks: int, chunk: int, headers: list[tuple[bytes, bytes]]
         ) -> tuple[list[dict[str, Any]], int]:
    """Sends ``chunks`` body messages of ``chunk`` bytes; the sent messages and how many body
    messages the middleware took."""
    sent: list[dict[str, Any]] = []
    taken = 0

    async def receive() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        return {"type": "http.request", "body": b"x" * chunk, "more_body": taken < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent, taken


@pytest.mark.parametrize("fail", [False, True], ids=["app-answers", "app-raises"])
def test_the_middleware_cuts_a_chunked_body_off_at_the_cap(fail: bool) -> None:
    inner = Inner(fail_on_disconnect=fail)
    limit = 256 * 1024
    sent, taken = _run(BodyLimit(inner, limit=limit), chunks=100, chunk=64 * 1024, headers=[])
    cap = limit + MULTIPART_OVERHEAD
    assert inner.received <= cap and taken == cap // (64 * 1024) + 1  # one message past it
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["status"] == 413  # the app's own answer was dropped


def test_the_middleware_refuses_a_declared_length_unread_and_passes_the_rest() -> None:
    inner = Inner()
    limit = 256 * 1024
    length = str(limit + MULTIPART_OVERHEAD + 1).encode()
    sent, taken = _run(BodyLimit(inner, limit=limit), chunks=1, chunk=10,
                       headers=[(b"content-length", length)])
    assert inner.calls == 0 and taken == 0 and sent[0]["status"] == 413
    inner = Inner()
    sent, _ = _run(BodyLimit(inner, limit=limit), chunks=4, chunk=limit // 4, headers=[])
    assert inner.received == limit and sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_create_api_applies_the_limit() -> None:
    settings = replace(Settings(), max_upload_bytes=8 * 1024)
    client = TestClient(create_api(settings=settings))
    response = client.post("/search", files={"image": ("a.jpg", b"0" * 100_000, "image/jpeg")})
    assert response.status_code == 413
    body = response.json()
    assert body["status"] == 413 and "SEARCH_MAX_UPLOAD_MB" in body["error"], body
