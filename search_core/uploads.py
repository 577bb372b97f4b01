"""Files reach the web server only as uploads.

An image input of the Gradio API is a ``FileData`` JSON object whose ``path`` the client writes.
Gradio accepts any path there unless the app was started with ``launch()`` (a mounted app is
never marked launched, so its own check returns early), and then copies the named file into its
cache: ``/etc/shadow`` or ``/dev/zero`` were one POST away. Three layers close that, each enough
on its own:

1. :class:`UploadPathGuard`, an ASGI middleware, refuses a request naming any path outside
   Gradio's upload folder before Gradio reads the body (so nothing is opened or copied), with
   one message whatever the path is (no probe of what exists).
2. ``server.create_app`` marks the Blocks launched, so Gradio's own check runs too.
3. :func:`read_upload` (used by the handlers) opens only a regular file inside the upload folder,
   without following links, with the byte cap enforced while reading.

Plain FastAPI routes (the REST API) should take ``UploadFile`` bytes and never a server path;
:func:`read_upload` is there for any route that receives a path to an earlier upload.

:class:`BodyLimit` caps the size of those uploads while they arrive: FastAPI parses a whole
multipart form (into memory, then the temp folder) before a route runs, so a check in the route
comes after an oversized body was stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from search_core.config import Settings
from search_core.errors import ImageError, ImageTooLargeError, SourceError
from search_core.safeio import TooLargeError, read_regular

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOT_AN_UPLOAD = (
    "refused: only images uploaded to this app can be searched (a server path or URL is not "
    "accepted as an image)"
)
GONE = (
    "the uploaded file is no longer on the server (uploads are kept for a limited time): "
    "upload it again"
)


class UploadRefused(ImageError):
    """A file input that is not an upload of this app."""


def upload_folder() -> Path:
    """Gradio's upload folder for this process (GRADIO_TEMP_DIR or <tmp>/gradio), resolved.
    Gradio's own function when it is importable, so the two can never disagree."""
    try:
        from gradio.utils import get_upload_folder

        folder = get_upload_folder()
    except ImportError:  # a server without Gradio (REST only)
        folder = Settings.read("gradio_temp_dir") or str(Path(tempfile.gettempdir()) / "gradio")
    return Path(os.path.realpath(folder))


def check_upload_path(path: str, folder: Path | None = None) -> Path:
    """The path if it names a regular file inside the upload folder; :class:`UploadRefused`
    otherwise. Refuses URLs, relative paths, ``..`` tricks and any symbolic link on the way
    (the path as written must be the real path), without opening anything."""
    folder = folder or upload_folder()
    if not isinstance(path, str) or not path or "\x00" in path or "://" in path or \
            path.startswith("data:") or not os.path.isabs(path):
        raise UploadRefused(NOT_AN_UPLOAD)
    normal = os.path.normpath(path)
    try:
        real = os.path.realpath(normal)
    except (OSError, ValueError):
        raise UploadRefused(NOT_AN_UPLOAD) from None
    if real != normal or not (Path(real).is_relative_to(folder) and Path(real) != folder):
        raise UploadRefused(NOT_AN_UPLOAD)
    try:
        info = os.lstat(real)
    except OSError:
        raise UploadRefused(GONE) from None
    if not stat.S_ISREG(info.st_mode):
        raise UploadRefused(NOT_AN_UPLOAD)
    return Path(real)


def read_upload(path: str, max_bytes: int, folder: Path | None = None) -> bytes:
    """The bytes of an upload of this app (see :func:`check_upload_path`), at most
    ``max_bytes``, opened with ``O_NOFOLLOW``; the file's access time is bumped so that the
    temp-folder sweep (:mod:`search_core.tempstore`) deletes uploads in use last."""
    folder = folder or upload_folder()
    checked = check_upload_path(path, folder)
    try:
        data = read_regular(checked, max_bytes, roots=(folder,), follow_links=False)
    except FileNotFoundError:
        raise UploadRefused(GONE) from None
    except TooLargeError as exc:
        raise ImageTooLargeError(
            str(exc).replace("file is too large", "the upload is too large")
        ) from None
    except (SourceError, OSError) as exc:
        log.warning("upload %s refused: %s", path, exc)
        raise UploadRefused(NOT_AN_UPLOAD) from None
    with contextlib.suppress(OSError):
        os.utime(checked)
    return data


def file_paths(value: Any) -> list[str]:
    """Every ``path`` of a FileData-like object (a dict with a ``path`` key) inside JSON."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if path is not None and ("meta" in item or "orig_name" in item or "url" in item
                                     or len(item) == 1):
                found.append(path if isinstance(path, str) else repr(path))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class UploadPathGuard:
    """ASGI middleware: a request to Gradio's API whose JSON names a file outside the upload
    folder is answered 400 with :data:`NOT_AN_UPLOAD` before Gradio sees it (whatever its
    ``Content-Type`` says; only multipart uploads pass unread).

    ``prefixes``: the URL paths whose JSON bodies carry Gradio file objects. ``max_body``:
    bigger non-multipart bodies are refused (413) instead of being buffered (images come as
    multipart uploads; the JSON of an API call is a few KB).
    """

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...] = ("/gradio_api/",),
                 max_body: int = 1024 * 1024) -> None:
        self.app = app
        self.prefixes = prefixes
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self._watched(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Every body but a multipart upload is read: media types are case-insensitive and
        # FastAPI parses "Application/JSON" (or a body without a type) as JSON, so a check on
        # "json" in the header let such a request past this guard.
        if headers.get("content-type", "").strip().lower().startswith("multipart/"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await json_reply(send, 413, "request body too large")
                return
        try:
            paths = file_paths(json.loads(body)) if body else []
        except ValueError:
            paths = []  # Gradio answers malformed JSON itself
        folder = upload_folder()
        for path in paths:
            try:
                check_upload_path(path, folder)
            except UploadRefused as exc:
                client = scope.get("client") or ("?", 0)
                log.warning("refused file input %r from %s on %s: %s", path[:300], client[0],
                            scope.get("path"), exc)
                await json_reply(send, 400, str(exc))
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _watched(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return any(path.startswith(prefix) for prefix in self.prefixes)


async def json_reply(send: Send, status: int, message: str,
                     headers: dict[str, str] | None = None) -> None:
    """A JSON error answer from ASGI middleware: ``{"error": ..., "detail": ...}`` (Gradio's
    and FastAPI's clients each read one of the two keys)."""
    await _send_json(send, status, {"error": message, "detail": message}, headers)


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


#: Room for the multipart framing around an upload of the limit (boundaries, part headers and
#: the small form fields of POST /api/search).
MULTIPART_OVERHEAD = 64 * 1024


class BodyLimit:
    """ASGI middleware: a request body above ``limit + overhead`` bytes is answered 413 (the
    REST API's JSON ``{"error": ..., "status": 413}``) without being stored.

    - A ``Content-Length`` above it is refused before any byte of the body is read (a client
      sending ``Expect: 100-continue`` never sends it).
    - A body without one (chunked) is counted as it arrives; once past the cap the app gets
      ``http.disconnect`` instead of more bytes, and the 413 goes out unless the app already
      answered. So memory and the temp folder hold at most ~the cap.

    The 413 says ``Connection: close``: the server then closes the connection instead of
    reading and discarding the rest of a body that may be gigabytes long (or endless).
    ``limit`` is ``SEARCH_MAX_UPLOAD_MB`` (:attr:`Settings.max_upload_bytes`); the route still
    checks the image itself against it, the cap here only adds room for the form around it.
    """

    def __init__(self, app: ASGIApp, *, limit: int, overhead: int = MULTIPART_OVERHEAD) -> None:
        self.app = app
        self.limit = limit
        self.cap = limit + overhead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.cap:
            self._log(scope, f"declared {declared} bytes")
            await self._refuse(send, f"{declared / 2**20:.1f} MB")
            return
        received = 0
        started = False  # the response began (the app's or the 413)
        cut = False  # the body was cut off at the cap
        refused = False  # the 413 was sent: the app's own answer is dropped

        async def counted() -> Message:
            nonlocal received, cut, refused, started
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.cap:
                    cut = True
                    self._log(scope, f"over {self.cap} bytes received")
                    if not started:
                        started = refused = True
                        await self._refuse(send, f"more than {self.cap / 2**20:.1f} MB")
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not cut:
                raise
            # the app's reaction to the cut-off body (a parse error, ClientDisconnect): the
            # client already has its answer, and this is no server fault to report
            log.debug("error after cutting off an oversized body", exc_info=True)

    async def _refuse(self, send: Send, size: str) -> None:
        message = (f"the upload is too large ({size}); the limit is {self.limit / 2**20:g} MB "
                   "(SEARCH_MAX_UPLOAD_MB)")
        await _send_json(send, 413, {"error": message, "status": 413}, {"connection": "close"})

    @staticmethod
    def _log(scope: Scope, what: str) -> None:
        client = scope.get("client") or ("?", 0)
        log.warning("request body too large (%s) from %s on %s: refused with 413", what,
                    client[0], scope.get("path"))


def _content_length(scope: Scope) -> int | None:
    """The declared body length, None when there is none (chunked) or it is not a number (the
    HTTP server refuses those itself)."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
