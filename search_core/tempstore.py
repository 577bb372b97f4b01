"""Bounded temporary storage: result images written once, and a size cap on the whole upload
folder (uploads, Gradio's cache copies, our result images), least recently used deleted first.

Why: every analysis left one file in the app's folder and three in Gradio's cache, and nothing
ever deleted them (120 uploads kept 141 MB). Gradio's ``delete_cache`` only ages files out; the
cap here bounds the footprint whatever the traffic. Reading an upload bumps its times
(:func:`search_core.uploads.read_upload`), so files in use are the last to go; a user whose
upload was swept gets "upload it again".
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_once(folder: Path, name: str, data: bytes) -> Path:
    """``folder/name`` holding ``data``, written to a unique name and renamed into place, so a
    concurrent reader never sees it half-written."""
    path = folder / name
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
    return path


def jpeg_file(folder: Path, image: Any, name: str | None = None) -> Path:
    """The PIL image as a JPEG in ``folder`` (named by ``name`` or by a hash of its bytes)."""
    if name is not None and (folder / f"{name}.jpg").exists():
        path = folder / f"{name}.jpg"
        os.utime(path)
        return path
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=88)
    data = buffer.getvalue()
    return write_once(folder, f"{name or hashlib.sha256(data).hexdigest()[:40]}.jpg", data)


class TempSweeper:
    """Keeps the files under ``folder`` at most ``max_bytes`` in total.

    ``protect()`` names files that must stay (Gradio's example copies). :meth:`sweep` is cheap
    (one ``os.walk`` of a folder the cap keeps small); the server runs it after every upload,
    and :meth:`start` runs it every ``interval_s`` in a daemon thread.
    """

    def __init__(self, folder: Path, max_bytes: int, *,
                 protect: Callable[[], Iterable[str]] = tuple, interval_s: float = 30.0) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.protect = protect
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, wait: bool = False) -> tuple[int, int]:
        """Deletes least recently used files until the total fits; returns (files, bytes) left,
        or (-1, -1) when another sweep is running and ``wait`` is false."""
        if not self._lock.acquire(blocking=wait):
            return -1, -1
        try:
            return self._sweep()
        finally:
            self._lock.release()

    def _sweep(self) -> tuple[int, int]:
        keep = {os.path.realpath(p) for p in self.protect()}
        entries: list[tuple[float, int, str]] = []
        total = 0
        for directory, _dirs, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                total += info.st_size
                if path not in keep:
                    entries.append((max(info.st_atime, info.st_mtime), info.st_size, path))
        count = len(entries)
        if total > self.max_bytes:
            entries.sort()
            for _used, size, path in entries:
                if total <= self.max_bytes:
                    break
                try:
                    os.unlink(path)
                except OSError:
                    continue
                total -= size
                count -= 1
            self._remove_empty_dirs()
            log.info("temp folder swept: %d files, %.1f MB kept", count, total / 2**20)
        return count, total

    def _remove_empty_dirs(self) -> None:
        for directory, dirs, names in os.walk(self.folder, topdown=False):
            if not dirs and not names and Path(directory) != self.folder:
                try:
                    if time.time() - os.stat(directory).st_mtime < 60:
                        continue  # Gradio may be about to move an upload into it
                    os.rmdir(directory)
                except OSError:
                    pass

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="temp-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep(wait=True)
            except Exception:  # never let housekeeping kill the server
                log.exception("temp sweep failed")


# -- Result images for the web page ------------------------------------------------------------


def image_folder() -> Path:
    """Where result images go: in Gradio's upload folder, so that Gradio serves them without
    copying them and the temp-folder cap (SEARCH_TEMP_MAX_MB) covers them."""
    from search_core.uploads import upload_folder

    return upload_folder() / "visual-search-images"


def image_file(image: Any, name: str | None = None) -> str:
    """The image as a JPEG file for an output component, written atomically.

    Why not return the PIL image: Gradio saves it to its cache under a hash of the bytes and
    rewrites that file in place every time, so when two users get the same preview at once, a
    download of it can be cut short ("peer closed connection without sending complete message
    body", seen with 20 users in bench/load.py). A file renamed into place is never seen
    half-written. ``name`` (a content hash) lets callers skip the encoding when the file
    already exists.
    """
    return str(jpeg_file(image_folder(), image, name))


def preview_file(uri: str, sha256: str, render: Callable[[str], Any]) -> str | None:
    """A result's thumbnail, made once per catalogue image (keyed by its content hash) with
    ``render(uri)`` (None: may not be shown): a search shows a dozen results, and re-reading,
    decoding and re-encoding each of them on every search cost more CPU than the search
    itself under load."""
    cached = image_folder() / f"preview-{sha256[:40]}.jpg"
    if cached.exists():
        return str(cached)
    preview = render(uri)
    return None if preview is None else image_file(preview, f"preview-{sha256[:40]}")


def no_preview_file() -> str:
    """The neutral stand-in thumbnail of a result whose image may not be shown."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((48, 72, 208, 184), outline=(170, 170, 170), width=4)
    draw.text((92, 196), "no preview", fill=(120, 120, 120))
    return image_file(image, "no-preview")
