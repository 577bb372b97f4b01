"""Image sources: a local folder here; ``s3://`` lives in :mod:`search_core.aws.s3_source`.

Folder sources are confined to configured roots because the Index tab lets anybody who can
reach the app type a path: without the check a stranger could index (and then display) /etc.
"""

from __future__ import annotations

import errno
import logging
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from search_core.config import Settings
from search_core.errors import GoneError, SourceError
from search_core.images import IMAGE_SUFFIXES
from search_core.interfaces import ImageSource
from search_core.safeio import describe_os_error, read_regular, under
from search_core.types import SourceEntry

log = logging.getLogger(__name__)

_NON_UTF8_PREFIX = "file://"

#: Why a preview is refused (shown under the result; none names the server's folder layout).
PREVIEW_NOT_INDEXED = "not an item of the index"
PREVIEW_OUTSIDE_ROOTS = (
    "outside the folders this web app may show (the server's SEARCH_FOLDER_ROOTS setting)"
)


def _display_uri(path: str) -> str:
    """The path itself, or a percent-encoded ``file://`` URI for names that are not valid
    UTF-8 (they cannot be stored in SQLite or JSON as they are)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return _NON_UTF8_PREFIX + urllib.parse.quote(os.fsencode(path))


def uri_to_path(uri: str) -> str:
    if uri.startswith(_NON_UTF8_PREFIX):
        return os.fsdecode(urllib.parse.unquote_to_bytes(uri[len(_NON_UTF8_PREFIX) :]))
    return uri


def check_under_roots(path: Path, roots: tuple[Path, ...]) -> Path:
    """The resolved path if it lies under one of ``roots``; SourceError otherwise.

    The message names the path the user typed, not the roots: web users must not learn the
    server's folder layout (the server log has the roots). Unusable names (NUL, too long) get
    a short reason instead of a raw OS error.
    """
    try:
        resolved = path.expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"not a usable folder path: {describe_os_error(exc)}") from None
    if roots and not under(resolved, roots):
        log.info("refused %s: outside the allowed folders %s", resolved,
                 ", ".join(str(root) for root in roots))
        raise SourceError(
            f"{_shown(path)} is outside the allowed folders; the server's SEARCH_FOLDER_ROOTS "
            "setting says which folders may be indexed"
        )
    return resolved


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:117] + "..."


def file_version(stat: os.stat_result) -> str:
    """Size, mtime, ctime and inode: an edit that keeps the modification time (``rsync -t``,
    ``cp --preserve``, ``touch -d``) still moves the ctime, and a file replaced by another
    moves the inode. Any change makes the indexer hash the file again."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


class FolderSource:
    """Every regular file under a folder, recursively, in sorted order. Symbolic links to
    folders are not followed (no loops); linked files are read only if they stay inside the
    allowed roots. Whether a file is an image is decided by the indexer from its content.

    Links that point outside the roots, and dangling links, are still listed so that reading
    them fails with a reason the indexing report shows ("links outside the allowed folders",
    "No such file"); silently leaving them out would look like a lost image."""

    def __init__(
        self, folder: Path | str, roots: tuple[Path, ...] = (), max_bytes: int | None = None
    ) -> None:
        self.roots = roots
        self.max_bytes = max_bytes
        if "\x00" in str(folder):
            raise SourceError("not a usable folder path: the path contains a NUL character")
        if any(len(os.fsencode(part)) > 255 for part in Path(folder).parts):
            raise SourceError("not a usable folder path: the path or one of its names is too long")
        self.folder = check_under_roots(Path(folder), roots)
        try:
            if not self.folder.is_dir():
                exists = self.folder.exists()
                raise SourceError(
                    f"{'not a folder' if exists else 'folder not found'}: {_shown(Path(folder))}"
                )
        except OSError as exc:
            raise SourceError(
                f"folder cannot be opened: {_shown(Path(folder))} ({describe_os_error(exc)})"
            ) from None
        self.uri = str(self.folder)

    def list(self) -> Iterator[SourceEntry]:
        def on_error(error: OSError) -> None:  # unreadable sub-folder: skip it, keep going
            return None

        for directory, dirnames, filenames in os.walk(self.folder, onerror=on_error):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(directory, name)
                if os.path.islink(path) and not self._link_allowed(path):
                    yield SourceEntry(uri=_display_uri(path))  # read() says why
                    continue
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                # A FIFO or device would block or never end: read() refuses it. One named like
                # an image is listed so that the run reports it (left out, it would look like a
                # lost image); others are skipped like any non-image.
                if not os.path.isfile(path):
                    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                        yield SourceEntry(uri=_display_uri(path))
                    continue
                yield SourceEntry(
                    uri=_display_uri(path), size_bytes=stat.st_size, version=file_version(stat)
                )

    def _link_allowed(self, path: str) -> bool:
        """False for links that leave the roots or point nowhere."""
        try:
            check_under_roots(Path(path), self.roots)
        except (SourceError, OSError, RuntimeError):
            return False
        return os.path.exists(path)

    def read(self, entry: SourceEntry) -> bytes:
        """The file's bytes. Confinement is checked on the file actually opened (the kernel's
        path of the descriptor), so a folder swapped for a link after listing reads nothing
        from outside; FIFOs and devices are refused, and the size cap holds while reading."""
        path = uri_to_path(entry.uri)
        if os.path.islink(path) and not os.path.exists(path):
            try:
                os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise GoneError("broken link: the link leads back to itself (a loop)") \
                        from None
            raise GoneError(f"broken link: {os.readlink(path)} does not exist")
        return read_regular(path, self.max_bytes, roots=self.roots)


def _s3_source(uri: str, settings: Settings) -> ImageSource:
    """``S3Source(uri, settings)``; imported lazily so folder-only installs need no boto3."""
    try:
        from search_core.aws.s3_source import S3Source
    except ImportError as exc:
        raise SourceError(f"S3 sources need boto3 (pip install -r requirements.txt): {exc}") \
            from exc
    return S3Source(uri, settings)


def open_source(uri: str, settings: Settings) -> ImageSource:
    """A source for a folder path or an ``s3://bucket/prefix`` URI."""
    uri = uri.strip()
    if not uri:
        raise SourceError("no source given: enter a folder path or s3://bucket/prefix")
    if uri.startswith("s3://"):
        return _s3_source(uri, settings)  # validates bucket and prefix before any request
    if "://" in uri:
        raise SourceError(f"unsupported source {uri!r}: use a folder path or s3://bucket/prefix")
    return FolderSource(uri, settings.folder_roots, settings.max_upload_bytes)


def preview_policy(uri: str, settings: Settings) -> str | None:
    """Why an indexed item may not be shown on the web (None: it may), without opening it.

    ``s3://`` items pass: the index holds them, so they come from a bucket somebody indexed
    with the server's credentials. A local path must be absolute and its real path must lie
    under ``settings.folder_roots`` (the CLI may have indexed other folders).
    """
    if uri.startswith("s3://"):
        return None
    try:
        path = uri_to_path(uri)
        if not os.path.isabs(path):
            return "not an indexed file path"
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return "not an indexed file path"
    if settings.folder_roots and not under(real, settings.folder_roots):
        return PREVIEW_OUTSIDE_ROOTS
    return None


def read_uri(uri: str, settings: Settings) -> bytes:
    """Bytes of an indexed item, for result previews (local path or ``s3://``).

    Callers pass URIs from the index only (search hits); a local one must still lie under
    ``settings.folder_roots`` (checked on the opened file) and be a regular file within the
    size cap, so a preview can never become a way to read other server files.
    """
    if uri.startswith("s3://"):
        return _s3_source(uri, settings).read(SourceEntry(uri=uri))
    path = uri_to_path(uri)
    if not os.path.isabs(path):
        raise SourceError("not an indexed file path")
    return read_regular(path, settings.max_upload_bytes, roots=settings.folder_roots)
