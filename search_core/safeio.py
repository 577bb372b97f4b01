"""Reading files whose name came from somebody else: regular files only, a byte cap enforced
while reading, and confinement checked on the file actually opened.

Why not ``open(path).read()``: a FIFO or ``/dev/zero`` blocks or never ends (one request used
to hang the whole server), a sparse 2 GiB file is read whole before any size check, and a path
checked first and opened afterwards can be swapped for a symbolic link in between. Here the
descriptor is opened without blocking, ``fstat`` decides (regular file or refusal) and, when
roots are given, the path the kernel reports for the descriptor must lie under one of them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from search_core.errors import SourceError

_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(
    os, "O_CLOEXEC", 0
)


class TooLargeError(SourceError):
    """The file is bigger than the cap (a message fit for users)."""


def describe_os_error(exc: BaseException) -> str:
    """A short reason without the server's paths or a raw ``[Errno N]`` (for users)."""
    if isinstance(exc, ValueError):  # "embedded null byte" from os functions
        return "the path contains a NUL character"
    code = getattr(exc, "errno", None)
    return {
        errno.ENOENT: "no such file or folder",
        errno.ENAMETOOLONG: "the path or one of its names is too long",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EISDIR: "it is a folder, not a file",
    }.get(code or -1, "it cannot be read")


def fd_path(fd: int) -> Path | None:
    """The path the kernel holds for an open descriptor (Linux ``/proc``); None elsewhere."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def read_regular(
    path: str | os.PathLike[str],
    max_bytes: int | None,
    *,
    roots: tuple[Path, ...] = (),
    follow_links: bool = True,
) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` (read in chunks, never more).

    ``roots``: the opened file's real path must lie under one of them (checked on the open
    descriptor, so a folder swapped for a link after any earlier check is still caught).
    ``follow_links=False`` refuses a link as the last path part (``O_NOFOLLOW``).
    Raises :class:`SourceError` (or :class:`TooLargeError`) with a message fit for users, or
    the ``OSError`` of the open (missing file, permissions) for the caller to word.
    """
    flags = _FLAGS | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except ValueError:
        raise SourceError("the path contains a NUL character") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise SourceError("refused: the file is a symbolic link") from None
        raise  # callers word it ("cannot read: No such file or directory")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError("refused: not a regular file")
        if roots:
            real = fd_path(fd) or Path(os.path.realpath(path))
            if not under(real, roots):
                raise SourceError("the link points outside the allowed folders")
        if max_bytes is not None and info.st_size > max_bytes:
            raise TooLargeError(_too_large(info.st_size, max_bytes))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        limit = None if max_bytes is None else max_bytes + 1
        while True:
            want = _CHUNK if limit is None else min(_CHUNK, limit - total)
            if want <= 0:
                break
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if max_bytes is not None and total > max_bytes:  # grew while we read it
            raise TooLargeError(_too_large(total, max_bytes))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(size: int, limit: int) -> str:
    return (
        f"file is too large: {size / 1024 / 1024:.1f} MB; the limit is "
        f"{limit / 1024 / 1024:.0f} MB (SEARCH_MAX_UPLOAD_MB)"
    )
