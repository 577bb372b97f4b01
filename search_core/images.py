"""The one image-normalisation path used by indexing, queries and every backend.

Everything downstream (detector boxes, crops, embeddings, uploads to AWS) works on the image this
module returns, so a box computed on it is valid for the crop and EXIF rotation cannot split them.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from search_core.budget import decode_slot
from search_core.errors import ImageError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_SIDE = 2048
MIN_SIDE = 16

# Magic numbers of the formats Pillow decodes here; used to recognise images by content.
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),
    (0, b"II*\x00"),  # TIFF little-endian
    (0, b"MM\x00*"),  # TIFF big-endian
)


# Files with these names that turn out not to be usable images are reported as failures (a
# user expects them indexed); other non-images (notes, descriptions) are skipped quietly.
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".jfif",
    ".svg",
    ".heic",
}

def looks_like_image(head: bytes) -> bool:
    """True when the first bytes carry a raster image signature we can decode."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head[offset : offset + len(sig)] == sig for offset, sig in _SIGNATURES)


def describe_non_image(head: bytes) -> str:
    """A short guess at what a non-image file is, for error messages."""
    sample = head[:512].lstrip().lower()
    if sample.startswith(b"%pdf"):
        return "a PDF document"
    if b"<svg" in sample:
        return "an SVG drawing (vector images are not supported)"
    if sample.startswith((b"<!doctype html", b"<html")) or b"<html" in sample:
        return "an HTML page"
    if sample.startswith(b"<?xml"):
        return "an XML document"
    if not sample:
        return "empty"
    return "not a supported image format"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Pixels converted per strip: a few MB of temporary buffers, whatever the image size.
_STRIP_PIXELS = 1 << 20
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _grey_scale(image: Image.Image) -> float:
    """The factor that maps a 16-bit / 32-bit / float image to 0..255 (from its maximum)."""
    low_high = image.getextrema()
    high = float(low_high[1]) if isinstance(low_high, tuple) else 0.0  # type: ignore[arg-type]
    return 255.0 / (65535.0 if high > 255 else 255.0) if high > 0 else 1.0


def _convert_strip(strip: Image.Image, scale: float) -> Image.Image:
    """One strip to 8-bit "L" (grey sources) or "RGB"; transparency goes onto white, since
    catalogue images with alpha are almost always products cut out on a light background."""
    mode = strip.mode
    if mode in _GREY_MODES:
        array = np.asarray(strip, dtype=np.float64)
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if mode in ("L", "1"):
        return strip.convert("L")
    if mode == "P":
        strip = strip.convert("RGBA" if "transparency" in strip.info else "RGB")
        mode = strip.mode
    if mode in _ALPHA_MODES:
        rgba = strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return strip if mode == "RGB" else strip.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size ``Image.thumbnail((max_side, max_side))`` would give (same rounding)."""
    if width <= max_side and height <= max_side:
        return width, height
    aspect = width / height
    if aspect <= 1:
        y = max_side
        candidates = (math.floor(y * aspect), math.ceil(y * aspect))
        x = max(min(candidates, key=lambda n: abs(aspect - n / y)), 1)
        return x, y
    x = max_side
    candidates = (math.floor(x / aspect), math.ceil(x / aspect))
    y = max(min(candidates, key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


def _normalise(image: Image.Image, max_side: int | None) -> Image.Image:
    """Decoded image -> EXIF-oriented 8-bit RGB, long side at most ``max_side``.

    Same pixels as converting the whole image and then ``thumbnail`` (LANCZOS, reducing gap 2),
    but the conversion runs strip by strip, each strip box-reduced at once, so the only
    full-size buffer is the decoded image itself: a 7000x7000 RGBA used to take five full-size
    copies (about 1 GB) and now takes one plus a reduced result.
    """
    orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    target = _thumbnail_size(width, height, max_side) if max_side else (width, height)
    fx = int(width / target[0] / 2) or 1
    fy = int(height / target[1] / 2) or 1
    if max_side and -(-width // fx) * -(-height // fy) > (2 * max_side) ** 2:
        # Thumbnail's reducing gap of 2 would still leave a huge intermediate (7000x7000 at
        # max_side 2048): reduce further, to just above the target, before LANCZOS.
        fx = int(width / target[0]) or 1
        fy = int(height / target[1]) or 1
    mode = image.mode
    if mode in ("RGB", "L") and fx == fy == 1:
        out = image
    else:
        scale = _grey_scale(image) if mode in _GREY_MODES else 1.0
        out_mode = "L" if mode in (*_GREY_MODES, "L", "1") else "RGB"
        out = Image.new(out_mode, (-(-width // fx), -(-height // fy)))
        rows = max(fy, (_STRIP_PIXELS // max(width, 1)) // fy * fy)
        for top in range(0, height, rows):
            strip = _convert_strip(image.crop((0, top, width, min(height, top + rows))), scale)
            if fx > 1 or fy > 1:
                strip = strip.reduce((fx, fy))
            out.paste(strip, (0, top // fy))
            del strip
        image.close()
        del image
    if out.size != target:
        out = out.resize(target, Image.Resampling.LANCZOS, box=(0, 0, width / fx, height / fy))
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    return out if out.mode == "RGB" else out.convert("RGB")


def load_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Decodes bytes into an EXIF-oriented RGB image whose long side is at most ``max_side``.

    Raises :class:`ImageError` with a message a user can act on for anything else: empty or
    truncated files, non-images, decompression bombs, images too small to search with.
    Memory: one decoded full-size image at most (see :func:`_normalise`), and at most
    :func:`search_core.budget.decode_slot` decodes at once.
    """
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    if not looks_like_image(data[:16]):
        raise ImageError(f"not an image: {describe_non_image(data[:512])}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is too large: {width}×{height} px is over the limit of "
                    f"{max_pixels:,} pixels"
                )
            if getattr(image, "is_animated", False):
                image.seek(0)  # first frame of GIF/WebP/APNG animations
            if max_side and image.format == "JPEG":
                # Decode big JPEGs at a reduced scale directly: much faster and less memory.
                image.draft("RGB", (max_side, max_side))
            with decode_slot():
                image.load()
                decoded = image.size
                if min(decoded) < min_side:
                    raise ImageError(
                        f"image is too small: {decoded[0]}×{decoded[1]} px (each side needs at "
                        f"least {min_side} px)"
                    )
                image = _normalise(image, max_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses before we see the size; say it the same way as the check above.
        raise ImageTooLargeError(
            f"image is too large: over the limit of {max_pixels:,} pixels "
            "(decompression bomb guard)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: the file could not be decoded") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"the image is corrupt or truncated ({exc})") from exc
    return image


def resize_within(image: Image.Image, max_side: int | None, min_side: int | None) -> Image.Image:
    """Scales so the long side is ≤ ``max_side`` and the short side ≥ ``min_side`` (the
    second wins for extreme aspect ratios, since services reject sides below their minimum)."""
    width, height = image.size
    scale = 1.0
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
    if min_side and min(width, height) * scale < min_side:
        scale = min_side / min(width, height)
    if abs(scale - 1.0) < 1e-9:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def encode_image(
    image: Image.Image,
    *,
    fmt: str = "JPEG",
    max_bytes: int = 5 * 1024 * 1024,
    max_side: int | None = None,
    min_side: int | None = None,
    quality: int = 90,
) -> bytes:
    """Re-encodes for a backend with a byte limit (Rekognition and Titan take 5 MB), lowering
    JPEG quality first and then the size, so a huge photo still gets through."""
    image = resize_within(image.convert("RGB"), max_side, min_side)
    fmt = fmt.upper()
    for _ in range(12):
        buffer = io.BytesIO()
        if fmt == "PNG":
            image.save(buffer, format="PNG", optimize=True)
        else:
            image.save(buffer, format="JPEG", quality=quality, optimize=True)
        encoded = buffer.getvalue()
        if len(encoded) <= max_bytes:
            return encoded
        if fmt != "PNG" and quality > 60:
            quality -= 10
            continue
        new_size = (max(1, int(image.width * 0.8)), max(1, int(image.height * 0.8)))
        if min_side and min(new_size) < min_side:
            break
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    raise ImageError(f"could not encode the image under {max_bytes:,} bytes")
