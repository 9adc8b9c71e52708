"""The one image loader: file checks, decoding limits, EXIF orientation, colour modes, metadata.

Every failure becomes a :class:`PhotoError` with a message saying what is wrong with that one photo,
so a batch can record it and go on.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PhotoError
from .exif import PhotoMetadata, read_metadata

try:  # HEIC/HEIF from phones, when the optional pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:
    HEIF_SUPPORT = False

PHOTO_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif"}
)
# Photos are decoded at no less than this on the short side (2x CLIP's 224 input): JPEGs through
# draft mode, others by integer reduction. It saves most of the decode time of large photos while the
# final bicubic resize still sees more pixels than it keeps.
DECODE_MIN_SIDE = 448
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970
MAX_ASPECT = 10  # longer sides are cut (around the centre) to this many times the short side


@dataclass(frozen=True)
class BadPath:
    """A path found unusable before decoding (a link loop, an unlistable folder), carried along so it
    is reported in order with the results."""

    path: str
    reason: str

    def __fspath__(self) -> str:
        return self.path


@dataclass
class Photo:
    source: str  # the path as given, or a label for an in-memory image
    image: Image.Image  # RGB, upright
    metadata: PhotoMetadata
    original_size: tuple[int, int]


def check_file(path: Path) -> None:
    """Raise a PhotoError saying why ``path`` cannot be read as a file, if it cannot."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise PhotoError("broken symbolic link") from None
        raise PhotoError("file not found") from None
    except PermissionError:
        raise PhotoError("cannot read: permission denied") from None
    except OSError as exc:  # ELOOP and friends
        raise PhotoError(f"cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
        raise PhotoError(f"not a regular file ({kind})")
    if info.st_size == 0:
        raise PhotoError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise PhotoError("cannot read: permission denied")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, the way a viewer would show it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale to 8 bits instead of clipping everything above 255.
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] == 255:  # fully opaque: alpha carries nothing
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _bomb_message(pixels: int, size: str = "") -> str:
    return (
        f"image refused: {size}{pixels / 1e6:.0f} MP is over the {MAX_PIXELS / 1e6:.0f} MP "
        "safety limit against decompression bombs"
    )


def _shrink(image: Image.Image) -> Image.Image:
    factor = min(image.size) // DECODE_MIN_SIDE
    return image.reduce(factor) if factor >= 2 else image


def _centre(image: Image.Image) -> Image.Image:
    """Cut an extremely long image to MAX_ASPECT times its short side, around its centre.

    CLIP scales the short side to 224 and keeps the centre square, so the pixels cut here never reach
    the model (the margin left keeps the resize filter's edge far from that square); without the cut a
    1 x 10,000 image would be scaled to 224 x 2,240,000 pixels first.
    """
    width, height = image.size
    short, long_ = min(width, height), max(width, height)
    if long_ <= MAX_ASPECT * short:
        return image
    keep = MAX_ASPECT * short
    start = (long_ - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


def _decode(image: Image.Image, source: str) -> Photo:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise PhotoError(_bomb_message(width * height, f"{width}x{height} pixels, "))
    metadata = read_metadata(image)
    image.draft(None, (DECODE_MIN_SIDE, DECODE_MIN_SIDE))  # JPEG: decode at 1/2..1/8 scale; others: no-op
    image.load()
    upright = ImageOps.exif_transpose(image) or image
    return Photo(source, _to_rgb(_shrink(_centre(upright))), metadata, (width, height))


def open_photo(item: str | os.PathLike | Image.Image, label: str | None = None) -> Photo:
    """Decode a photo path (or take a PIL image) into an upright RGB image plus its metadata."""
    if isinstance(item, BadPath):
        raise PhotoError(item.reason)
    if isinstance(item, Image.Image):
        source = label or getattr(item, "filename", "") or "<image>"
        try:
            return _decode(item, source)
        except PhotoError:
            raise
        except Exception as exc:
            raise PhotoError(f"cannot use this image: {exc}") from exc
    path = Path(item)
    check_file(path)
    with _photo_errors(path), Image.open(path) as image:
        return _decode(image, label or str(item))


def probe_photo(path: str | os.PathLike) -> PhotoMetadata:
    """Check that a file is a photo Pillow reads, within the pixel limit, from its header alone, and
    return its EXIF: cheap, so a large file that is no photo is refused before it is hashed or decoded."""
    path = Path(path)
    check_file(path)
    with _photo_errors(path), Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PhotoError(_bomb_message(width * height, f"{width}x{height} pixels, "))
        return read_metadata(image)


@contextmanager
def _photo_errors(path: Path):
    """Whatever Pillow raises for one file, as a PhotoError saying what is wrong with it."""
    try:
        yield
    except PhotoError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check at open, before ours
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise PhotoError(_bomb_message(int(claimed.group(1)) if claimed else MAX_PIXELS + 1)) from None
    except UnidentifiedImageError:
        if path.suffix.lower() in (".heic", ".heif") and not HEIF_SUPPORT:
            raise PhotoError("HEIC/HEIF photo: install pillow-heif to read it") from None
        raise PhotoError("not an image Pillow can read (unknown or damaged format)") from None
    except PermissionError:
        raise PhotoError("cannot read: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text:
            raise PhotoError(f"truncated image data: {text}") from None
        raise PhotoError(f"damaged image data: {text}") from None
    except MemoryError:
        raise PhotoError("out of memory while decoding this image") from None
