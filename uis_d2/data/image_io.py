"""Robust image decoding: every image in the project goes through ``read_image``.

Web-scale image folders contain every oddity Pillow can open: grayscale, 16-bit, palette and
CMYK files, alpha channels, EXIF rotations, truncated downloads and files that are not images at
all. ``read_image`` turns the good ones into one canonical HxWx3 uint8 array and the bad ones into a
``BadImageError`` naming the file and the reason, so that callers can apply their bad-image policy
(``INPUT.BAD_IMAGE_POLICY``) instead of crashing deep inside a data loader worker.

Conventions (chosen so that results do not depend on how a file happened to be encoded):

- EXIF orientation is applied, so shapes match what image viewers (and COCO annotators) show.
- Alpha (RGBA, LA, PA, palette with transparency) is composited on black: fully transparent pixels
  often hold arbitrary colours, and black is a fixed, neutral background.
- 16-bit data is scaled to 8 bits (v * 255 / 65535, rounded), never clipped; 32-bit integer ("I")
  images are assumed to hold 16-bit values (how Pillow delivers 16-bit PNG and TIFF data).
  Float ("F") images follow Pillow's own convention: values are 0..255 intensities, clipped.
- Truncated files are errors: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False and the
  full decode is forced inside the ``try`` so the error surfaces here, not later.
- Very large images are downscaled, not rejected: above ``Image.MAX_IMAGE_PIXELS`` Pillow's
  decompression-bomb warning is suppressed and the result is shrunk to fit that many pixels even
  without ``max_side``. JPEGs are decoded at a reduced scale (``draft``), which keeps memory
  bounded. Other formats must be decoded in full, so above Pillow's hard limit
  (2 x ``MAX_IMAGE_PIXELS``) they are rejected instead of exhausting memory.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# EXIF orientations 5..8 include a 90-degree rotation, i.e. they swap height and width.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_bomb_limit_lock = threading.Lock()


# INPUT.BAD_IMAGE_POLICY: "skip" warns and goes on without the image, "fail" stops the run.
BAD_IMAGE_POLICIES = ("skip", "fail")


class BadImageError(ValueError):
    """An image file that cannot be used: missing, empty, truncated, not an image, degenerate."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image(
    path: str | Path, fmt: str = "RGB", max_side: int | None = None, min_side: int = 1
) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 array in ``fmt`` ("RGB" or "BGR").

    ``max_side`` bounds the long side (high-quality downscaling, aspect ratio kept); images whose
    short side is below ``min_side`` pixels raise ``BadImageError``.
    """
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"read_image: fmt must be 'RGB' or 'BGR', got {fmt!r}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"read_image: max_side must be a positive int or None, got {max_side}")
    path = Path(path)
    opened = _open_checked(path)
    try:
        _check_min_side(path, opened.size, min_side)
        _draft_jpeg(opened, max_side)
        _check_decodable_size(path, opened)
        try:
            # Force the full decode here: Pillow decodes lazily, and a truncated or corrupt file
            # must fail inside this try, not in a later numpy conversion.
            opened.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors...
            raise BadImageError(path, f"cannot decode image data ({exc})") from exc
        rgb = _to_rgb_array(path, _apply_exif_orientation(path, opened))
    finally:
        opened.close()
    rgb = _downscale(rgb, _effective_max_side(rgb.shape[0], rgb.shape[1], max_side))
    if fmt == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only (no pixel decode).

    Cheap enough to index large folders; a truncated file can still pass here and fail later in
    ``read_image``.
    """
    path = Path(path)
    with _open_checked(path) as image:
        width, height = image.size
        if _exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def _open_checked(path: Path) -> Image.Image:
    """Open lazily (header only), mapping every failure to a BadImageError."""
    if not path.exists():
        raise BadImageError(path, "image file not found")
    if not path.is_file():
        raise BadImageError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return Image.open(path)
            except Image.DecompressionBombError:
                # Open the header anyway: _check_decodable_size decides after a possible draft.
                with _bomb_limit_lock:
                    saved = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = None
                    try:
                        return Image.open(path)
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
    except Image.UnidentifiedImageError as exc:
        raise BadImageError(path, "not an image file Pillow can identify") from exc
    except Exception as exc:
        raise BadImageError(path, f"cannot open image ({exc})") from exc


def _check_min_side(path: Path, size: tuple[int, int], min_side: int) -> None:
    if min(size) < max(min_side, 1):
        raise BadImageError(
            path, f"image is {size[0]}x{size[1]} (WxH), smaller than min_side={min_side}"
        )


def _pixel_limit() -> int | None:
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else None


def _draft_jpeg(image: Image.Image, max_side: int | None) -> None:
    """Let the JPEG decoder skip detail we would throw away (scale 1/2, 1/4 or 1/8)."""
    if image.format != "JPEG":
        return
    width, height = image.size
    target = _effective_max_side(height, width, max_side)
    if target is None:
        return
    scale = target / max(width, height)
    # draft never goes below the requested size, so the final resize still sets the exact size.
    image.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))


def _check_decodable_size(path: Path, image: Image.Image) -> None:
    limit = _pixel_limit()
    pixels = image.size[0] * image.size[1]
    if limit is not None and pixels > 2 * limit:
        raise BadImageError(
            path,
            f"{image.size[0]}x{image.size[1]} pixels exceed twice PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit}); too large to decode safely (raise that limit to allow it)",
        )


def _effective_max_side(height: int, width: int, max_side: int | None) -> int | None:
    """The requested long-side bound, tightened so the result fits Pillow's pixel limit."""
    limit = _pixel_limit()
    if limit is not None and height * width > limit:
        fit = math.floor(max(height, width) * math.sqrt(limit / (height * width)))
        max_side = fit if max_side is None else min(max_side, fit)
    if max_side is None or max(height, width) <= max_side:
        return None
    return max_side


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # malformed EXIF blocks must not make an otherwise good image unreadable
        return 1


def _apply_exif_orientation(path: Path, image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
        return image


def _to_rgb_array(path: Path, image: Image.Image) -> np.ndarray:
    """Map any Pillow mode to HxWx3 uint8 RGB following the module's conventions."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 255)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        mode = "RGBA"
        image = image.convert("RGBA")
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        composited = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255
        return composited.astype(np.uint8)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise BadImageError(path, f"unsupported image mode {mode!r} ({exc})") from exc


def _downscale(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Resize so the long side equals ``max_side`` (Lanczos; ``reducing_gap`` for speed)."""
    if max_side is None:
        return rgb
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)
