"""The one image-normalisation path used by indexing, queries and every backend.

Everything downstream (detector boxes, crops, embeddings, uploads to AWS) works on the image this
module returns, so a box computed on it is valid for the crop and EXIF rotation cannot split them.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from search_core.errors import ImageError

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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts every mode Pillow may hand us to 8-bit RGB; transparency goes onto white, since
    catalogue images with alpha are almost always products cut out on a light background."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = float(array.max()) if array.size else 0.0
        scale = 255.0 / (65535.0 if high > 255 else 255.0) if high > 0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")  # CMYK, YCbCr, L, 1, LAB, HSV


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
                raise ImageError(
                    f"image is too large: {width}×{height} px is over the limit of "
                    f"{max_pixels:,} pixels"
                )
            if getattr(image, "is_animated", False):
                image.seek(0)  # first frame of GIF/WebP/APNG animations
            if max_side and image.format == "JPEG":
                # Decode big JPEGs at a reduced scale directly: much faster and less memory.
                image.draft("RGB", (max_side, max_side))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            image = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses before we see the size; say it the same way as the check above.
        raise ImageError(
            f"image is too large: over the limit of {max_pixels:,} pixels "
            "(decompression bomb guard)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: the file could not be decoded") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"the image is corrupt or truncated ({exc})") from exc
    if min(image.size) < min_side:
        raise ImageError(
            f"image is too small: {image.width}×{image.height} px (each side needs at least "
            f"{min_side} px)"
        )
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
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
