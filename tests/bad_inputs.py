"""A corpus of hostile and awkward inputs, generated on the spot (nothing is downloaded).

Why generated: the files must be exactly as bad as described (a PNG that really decodes to
20000×20000 pixels, a JPEG really cut in half, a file name that really is not UTF-8), and a
fixture that lives in the repository would have to be re-made every time a library changes.
Every case is cheap: the decompression bombs are a few kilobytes of compressed zeros.

Each :class:`Case` says what the product must do with it:

- ``refuse``: a clear, specific message (``expect`` is a lower-case fragment of it); the index
  is unchanged and the rest of a batch still lands;
- ``accept``: it is a real image in an awkward format; it is indexed and searchable;
- ``skip``: not an image by name and content: folder indexing skips it (counted as "not
  images"), while a search with it is refused with ``expect``. (An SVG is *named* like an
  image, so it is refused and listed with the reason that vector drawings are unsupported.)
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REFUSE, ACCEPT, SKIP = "refuse", "accept", "skip"
UPLOAD_MB = 60
EXIF_ORIENTATION = 0x0112
#: displayed frame of the EXIF-rotated photo: red band on top (this fraction), blue below
ROTATED_SIZE = (240, 320)
ROTATED_RED_FRACTION = 0.25
LONG_TEXT = ("red shoes " * 1000)[:-1] + "!"  # 10,000 characters, none of them trailing space


@dataclass(frozen=True)
class Case:
    name: str  # file name (str); non-UTF-8 names are made with os.fsdecode of bytes
    outcome: str  # REFUSE | ACCEPT | SKIP
    expect: str = ""  # lower-case fragment of the message for REFUSE/SKIP
    why: str = ""


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def bomb_png(width: int, height: int) -> bytes:
    """A *valid* 1-bit grayscale PNG of ``width``×``height`` black pixels. A few KB on disk, but
    a decoder that does not check the size first allocates width×height×3 bytes for RGB."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = []
    block = row * 256
    for _ in range(height // 256):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * (height % 256)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def _pattern(size: tuple[int, int], seed: int) -> Image.Image:
    """A distinct, non-uniform RGB picture per seed (identical bytes would be de-duplicated)."""
    width, height = size
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    step = max(4, min(width, height) // 6)
    for x in range(0, width, step * 2):
        for y in range(0, height, step * 2):
            colour = ((x + seed * 40) % 256, (y + seed * 70) % 256, (x + y) % 256)
            image.paste(colour, (x, y, min(x + step, width), min(y + step, height)))
    return image


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def rotated_phone_jpeg() -> bytes:
    """A JPEG stored landscape with EXIF orientation 6 ("rotate 90° clockwise to display"), as
    phones write them. Displayed it is portrait ``ROTATED_SIZE`` with a red band on top."""
    width, height = ROTATED_SIZE
    displayed = Image.new("RGB", ROTATED_SIZE, (20, 40, 220))
    displayed.paste((220, 20, 20), (0, 0, width, int(height * ROTATED_RED_FRACTION)))
    # exif_transpose applies ROTATE_270 for orientation 6; store the inverse.
    stored = displayed.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    exif[0x010F] = "Phone maker"  # Make
    return _save(stored, "JPEG", quality=92, exif=exif.tobytes())


def non_utf8_name() -> str:
    """``café-ÿ.jpg`` in Latin-1: invalid UTF-8, so Python shows it with surrogate escapes."""
    return os.fsdecode(b"caf\xe9-\xff.jpg")


def write_corpus(folder: Path, *, with_upload: bool = True) -> list[Case]:
    """Writes every file case into ``folder`` and returns the cases. ``with_upload`` adds the
    60 MB file (skip it where the bytes would only be copied around)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[Case, bytes]] = []

    def add(name: str, outcome: str, data: bytes, expect: str = "", why: str = "") -> None:
        cases.append((Case(name, outcome, expect, why), data))

    good_jpeg = _save(_pattern((320, 240), 1), "JPEG", quality=90)
    add("empty.jpg", REFUSE, b"", "empty", "0-byte file")
    add("truncated.jpg", REFUSE, good_jpeg[: len(good_jpeg) // 2], "truncated",
        "JPEG cut in half")
    add("page.jpg", REFUSE, b"<!DOCTYPE html><html><body>Not found</body></html>\n",
        "html", "HTML error page saved as .jpg")
    add("document.jpg", REFUSE, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n",
        "pdf", "PDF renamed .jpg")
    add("drawing.svg", REFUSE,
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" '
        b'height="100"><circle cx="50" cy="50" r="40" fill="red"/></svg>', "svg", "SVG drawing")
    add("bomb-20000.png", REFUSE, bomb_png(20000, 20000), "too large",
        "20000×20000 decompression bomb (400 Mpx)")
    add("bomb-9000.png", REFUSE, bomb_png(9000, 9000), "too large",
        "81 Mpx: above SEARCH_MAX_PIXELS but below Pillow's own hard limit")
    add("tiny-1x1.png", REFUSE, _save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "too small", "1×1 px")
    add("thin-5x4000.png", REFUSE, _save(_pattern((5, 4000), 2), "PNG"), "too small",
        "5×4000 px sliver")
    add("cmyk.jpg", ACCEPT, _save(_pattern((300, 200), 3).convert("CMYK"), "JPEG"),
        why="CMYK JPEG (print workflow)")
    gray16 = Image.new("I;16", (256, 128))
    gray16.putdata([(x * 256 + y * 7) % 65536 for y in range(128) for x in range(256)])
    add("gray16.png", ACCEPT, _save(gray16, "PNG"), why="16-bit grayscale PNG")
    palette = _pattern((200, 200), 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette-alpha.png", ACCEPT, _save(palette, "PNG", transparency=0),
        why="palette PNG with a transparent colour")
    frames = [_pattern((160, 120), 5 + n) for n in range(3)]
    add("animated.gif", ACCEPT,
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        why="animated GIF (3 frames)")
    add("photo.webp", ACCEPT, _save(_pattern((300, 300), 9), "WEBP", quality=80), why="WebP")
    add("phone-rotated.jpg", ACCEPT, rotated_phone_jpeg(), why="EXIF orientation 6 phone JPEG")
    add(non_utf8_name(), ACCEPT, _save(_pattern((240, 240), 10), "JPEG"),
        why="file name that is not UTF-8")
    if with_upload:
        # A real JPEG followed by padding: only the size limit can refuse it.
        padding = UPLOAD_MB * 1024 * 1024 - len(good_jpeg)
        add("huge-60mb.jpg", REFUSE, good_jpeg + b"\x00" * padding, "too large",
            "60 MB upload (limit 50 MB)")
    for case, data in cases:
        (folder / case.name).write_bytes(data)
    return [case for case, _ in cases]


def make_symlink_loops(folder: Path) -> int:
    """Symbolic links that make a naive recursive walk loop forever: ``loop -> .`` and
    ``nested/up -> ..``. Returns how many links were made."""
    nested = folder / "nested"
    nested.mkdir(parents=True, exist_ok=True)
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (nested / "up").symlink_to("..", target_is_directory=True)
    return 2


def file_cases(cases: list[Case], outcome: str) -> list[Case]:
    return [case for case in cases if case.outcome == outcome]
