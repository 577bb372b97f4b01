"""The REST API a shop's own site calls: plain HTTP + JSON beside the Gradio UI.

Mounted by :mod:`search_core.server` at ``/api`` (its OpenAPI document is
``/api/openapi.json``, the interactive page ``/api/docs``), under the same credentials as the
UI, sent as HTTP Basic auth. Every error is JSON ``{"error": message, "status": code}``:
400 bad input, 401 no or wrong credentials, 404 unknown item, 413 upload too large, 429 too
many searches waiting, 503 index or models unavailable.

Why a gate instead of letting every request run: ONNX Runtime already spreads one inference
over every core, so more searches at once than cores only add latency; beyond a bounded number
of waiting requests a fast 429 with ``Retry-After`` beats a request that outlives the client's
or the load balancer's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from search_core.config import Settings
from search_core.errors import (
    BackendError,
    ConfigError,
    ImageTooLargeError,
    ItemNotFoundError,
    SearchError,
)
from search_core.filters import parse_filters
from search_core.pipeline import AUTO, WHOLE, AnalyzedImage, SearchPipeline, auto_choice
from search_core.query import is_object_number
from search_core.tags import item_category, item_tags, product_name
from search_core.types import Box, SearchHit
from search_core.uploads import BodyLimit

Auth = list[tuple[str, str]]
T = TypeVar("T")

#: searches allowed to wait for a free slot before new ones get 429
MAX_WAITING = 32
MAX_K = 100
THUMBNAIL_CACHE = 512  # thumbnails kept in memory (~15 KB each)


def _pipeline() -> SearchPipeline:
    from search_core.factory import get_pipeline

    return get_pipeline()


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def status_of(exc: SearchError) -> int:
    """The HTTP status for a library error."""
    if isinstance(exc, ItemNotFoundError):
        return 404
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, BackendError | ConfigError):
        return 503
    return 400


class Gate:
    """At most ``active`` searches run at once, at most ``waiting`` more wait; the rest get 429."""

    def __init__(self, active: int, waiting: int) -> None:
        self.active = max(1, active)
        self.waiting = waiting
        self._semaphore: asyncio.Semaphore | None = None
        self._queued = 0

    async def run(self, work: Callable[[], T]) -> T:
        if self._semaphore is None:  # created inside the server's event loop
            self._semaphore = asyncio.Semaphore(self.active)
        if self._semaphore.locked() and self._queued >= self.waiting:
            raise ApiError(429, "too many searches at once; retry shortly", {"Retry-After": "1"})
        self._queued += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._queued -= 1
        try:
            return await run_in_threadpool(work)
        finally:
            self._semaphore.release()


def parse_region(text: str | None, analyzed: AnalyzedImage) -> str | int | Box:
    """``auto`` | ``whole`` | ``N`` (1-based object number) | ``x,y,w,h`` (fractions of the
    image, or pixels when any value is above 1)."""
    value = (text or AUTO).strip().lower()
    if value in {AUTO, WHOLE}:
        return value
    if value.isdigit():
        if not is_object_number(value):  # "²", "①", 5,000 digits
            raise SearchError(f"object must be auto, whole, an object number or x,y,w,h; got "
                              f"{(text or '')[:40]!r}")
        number = int(value)
        if not 1 <= number <= len(analyzed.detections):
            raise SearchError(
                f"object {number} does not exist: {len(analyzed.detections)} object(s) were "
                "detected (numbers start at 1)"
            )
        return number - 1
    try:
        x, y, w, h = (float(p) for p in value.split(","))
    except ValueError as exc:
        raise SearchError(
            f"object must be auto, whole, an object number or x,y,w,h; got {(text or '')[:40]!r}"
        ) from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)):  # NaN passes every comparison below
        raise SearchError("object x,y,w,h must be finite numbers")
    if min(x, y, w, h) < 0 or w == 0 or h == 0:
        raise SearchError("object x,y,w,h must be non-negative with a non-zero width and height")
    if max(x, y, w, h) > 1:
        width, height = analyzed.image.size
        x, y, w, h = x / width, y / height, w / width, h / height
    return Box(x, y, w, h).clamped()


def hit_json(hit: SearchHit, thumbnail: Callable[[str], str]) -> dict[str, Any]:
    item = hit.item
    return {
        "id": item.sha256,
        "uri": hit.uri,
        "name": product_name(item.label, hit.uri),
        "score": round(float(hit.score), 6),
        "label": item.label,
        "category": item_category(item),
        "tags": item_tags(item),
        "width": item.width,
        "height": item.height,
        "size_bytes": item.size_bytes,
        "thumbnail": thumbnail(item.sha256),
        "similar": [
            {"id": s.item.sha256, "uri": s.uri, "score": round(float(s.score), 6)}
            for s in hit.similar
        ],
    }


def _objects(analyzed: AnalyzedImage) -> list[dict[str, Any]]:
    return [
        {
            "number": n,
            "label": d.label,
            "confidence": round(d.confidence, 2),
            "box": asdict(d.box),
        }
        for n, d in enumerate(analyzed.detections, start=1)
    ]


def _searched(analyzed: AnalyzedImage, region: str | int | Box) -> dict[str, Any]:
    if isinstance(region, Box):
        return {"object": "box", "number": None, "label": "manual box", "box": asdict(region)}
    number = auto_choice(analyzed.detections) if region == AUTO else region
    if isinstance(number, int):
        detection = analyzed.detections[number]
        return {
            "object": "auto" if region == AUTO else str(number + 1),
            "number": number + 1,
            "label": detection.label,
            "box": asdict(detection.box),
        }
    return {"object": str(region), "number": None, "label": "whole image", "box": None}


def basic_auth(auth: Auth | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency checking HTTP Basic credentials against the UI's (no-op without auth).

    Behind the server's auth wall (:class:`search_core.webauth.AuthWall`, which also rate-limits
    logins and accepts a browser session) the request arrives with ``state.user`` set and
    passes; the check here covers the API mounted without the wall (tests, embedding)."""

    async def check(request: Request) -> None:
        if not auth or getattr(request.state, "user", None):
            return
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        user = password = ""
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        ok = False
        for known_user, known_password in auth:  # compare all: no early exit to time
            ok |= secrets.compare_digest(user.encode(), known_user.encode()) and (
                secrets.compare_digest(password.encode(), known_password.encode())
            )
        if not ok:
            raise ApiError(
                401,
                "authentication required: HTTP Basic with the app's user:password",
                {"WWW-Authenticate": 'Basic realm="visual-search"'},
            )

    return check


@dataclass
class ApiContext:
    """What the routes share, one per API app (kept on ``app.state``): one gate, one thumbnail
    cache and one pipeline factory per mounted API, so two apps in one process (tests) never
    share a queue or a cache."""

    settings: Settings
    pipeline: Callable[[], SearchPipeline]
    gate: Gate
    thumbnails: OrderedDict[str, bytes] = field(default_factory=OrderedDict)


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def _api_error(_: Request, exc: ApiError) -> Response:
    return _error(exc.status, exc.message, exc.headers)


async def _search_error(_: Request, exc: SearchError) -> Response:
    return _error(status_of(exc), str(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _invalid(_: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return _error(400, f"{where}: {first.get('msg', 'invalid input')}")


#: every error leaves as JSON {error, status}, FastAPI's own (404, 405, validation) included
EXCEPTION_HANDLERS: dict[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {
    ApiError: _api_error,
    SearchError: _search_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _invalid,
}

router = APIRouter()


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    return {**request.app.openapi(), "servers": [{"url": _root(request) or "/"}]}


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> Response:
    openapi_url = f"{_root(request)}/openapi.json"
    return get_swagger_ui_html(openapi_url=openapi_url, title=request.app.title)


def thumbnail_url(request: Request) -> Callable[[str], str]:
    return lambda sha: str(request.url_for("thumbnail", item_id=sha))


def filters_of(values: list[str]) -> dict[str, Any]:
    return parse_filters(v for v in values if v.strip())


def _search_work(
    engine: SearchPipeline,
    data: bytes,
    *,
    text: str | None,
    choice: str,
    k: int,
    filters: dict[str, Any],
) -> dict[str, Any]:
    """The blocking part of POST /search (runs in the gate's thread pool)."""
    engine.check_text(text)
    analyzed = engine.analyze(data) if data else None
    region = parse_region(choice, analyzed) if analyzed is not None else WHOLE
    hits = engine.search(analyzed, region, k=k, text=text, filters=filters or None)
    return {
        "objects": _objects(analyzed) if analyzed is not None else [],
        "searched": _searched(analyzed, region) if analyzed is not None else None,
        "results": hits,
        "count": engine.index.count(),
    }


@router.post("/search", summary="Search with an image (and/or text)")
async def search(
    request: Request,
    context: Context,
    image: Annotated[UploadFile | None, File(description="the query photo")] = None,
    text: Annotated[str | None, Form(description="text (CLIP/Titan) or tag keyword")] = None,
    k: Annotated[int, Form(ge=1, le=MAX_K, description="number of results")] = 10,
    object: Annotated[
        str, Form(description="auto | whole | N (1-based) | x,y,w,h (fractions or pixels)")
    ] = AUTO,
    filter: Annotated[
        list[str], Form(description="key=value: category, label, tag, source (prefix)")
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
) -> dict[str, Any]:
    """Detects the objects in ``image``, searches with the chosen one and returns the
    detected objects, the object searched and the results (best first)."""
    filters = filters_of(filter)
    data = await image.read() if image is not None else b""
    if image is not None and not data:
        raise ApiError(400, "the uploaded image is empty (0 bytes)")
    if not data and not (text or "").strip():
        raise ApiError(400, "send an image (multipart field 'image'), a text, or both")
    started = time.perf_counter()
    answer = await context.gate.run(
        lambda: _search_work(
            context.pipeline(), data, text=text, choice=object, k=k, filters=filters
        )
    )
    to_url = thumbnail_url(request)
    answer["results"] = [hit_json(h, to_url) for h in answer["results"]]
    answer["took_ms"] = round(1000 * (time.perf_counter() - started), 1)
    return answer


@router.get("/items/{item_id}", summary="One catalogue item")
def item(request: Request, context: Context, item_id: str) -> dict[str, Any]:
    found = context.pipeline().item(item_id)
    if found is None:
        raise ItemNotFoundError(f"no catalogue item has the id {item_id[:80]!r}")
    hit = SearchHit(uri=found.uri, score=1.0, item=found)
    body = hit_json(hit, thumbnail_url(request))
    body.pop("score")
    return body


@router.get("/items/{item_id}/similar", summary="More like this catalogue item")
async def similar(
    request: Request,
    context: Context,
    item_id: str,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    filter: Annotated[list[str], Query(description="key=value, repeatable")] = [],  # noqa: B006
) -> dict[str, Any]:
    """Searches with the item's stored vector: nothing is uploaded or embedded again."""
    filters = filters_of(filter)
    hits = await context.gate.run(
        lambda: context.pipeline().search_by_item(item_id, k, filters or None)
    )
    to_url = thumbnail_url(request)
    return {"id": item_id, "results": [hit_json(h, to_url) for h in hits]}


def _thumbnail_bytes(context: ApiContext, item_id: str) -> bytes:
    """The item's JPEG thumbnail, from the cache or made now (and cached)."""
    thumbnails = context.thumbnails
    data = thumbnails.get(item_id)
    if data is not None:
        return data
    engine = context.pipeline()
    found = engine.item(item_id)
    preview = None if found is None else engine.preview(found.uri)
    if preview is None:
        raise ItemNotFoundError(f"no catalogue image for the id {item_id[:80]!r}")
    buffer = io.BytesIO()
    preview.convert("RGB").save(buffer, format="JPEG", quality=85)
    data = buffer.getvalue()
    thumbnails[item_id] = data
    while len(thumbnails) > THUMBNAIL_CACHE:
        thumbnails.popitem(last=False)
    return data


@router.get("/items/{item_id}/thumbnail", name="thumbnail", summary="A result's thumbnail")
def thumbnail(context: Context, item_id: str) -> Response:
    """JPEG, long side 384 px; made once per item and kept in memory."""
    return Response(
        _thumbnail_bytes(context, item_id),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/stats", summary="Index statistics, categories and tags")
def stats(context: Context) -> dict[str, Any]:
    engine = context.pipeline()
    return {**engine.stats(), "facets": engine.facets()}


def create_api(
    *,
    auth: Auth | None = None,
    settings: Settings | None = None,
    pipeline: Callable[[], SearchPipeline] = _pipeline,
) -> FastAPI:
    """The ``/api`` sub-application (mount it with ``app.mount("/api", create_api(...))``).
    Request bodies are capped while they arrive (:class:`BodyLimit`): FastAPI would otherwise
    store a whole multipart body before the route could look at its size."""
    settings = settings or Settings.from_env()
    api = FastAPI(
        title="Visual search API",
        version="1",
        description="Search a catalogue by image (and text or keyword), continue from any "
        "result, and read index statistics. Errors are JSON {error, status}.",
        docs_url=None,  # served by the router, behind the same auth as everything else
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(basic_auth(auth))],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    api.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    api.state.context = ApiContext(
        settings=settings,
        pipeline=pipeline,
        gate=Gate(active=min(4, os.cpu_count() or 1), waiting=MAX_WAITING),
    )
    api.include_router(router)
    return api
