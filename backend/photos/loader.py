"""The one image loader: file checks, decoding limits, EXIF orientation, colour modes, metadata.

Every failure becomes a :class:`PhotoError` with a message saying what is wrong with that one photo,
so a batch can record it and go on.

This runs inside QGIS's own process, so nothing a file contains may reach code that can take QGIS down:

- Pillow opens files only as the photo formats in :data:`PHOTO_FORMATS`, whatever their name says (an
  EPS file named .jpg would otherwise start Ghostscript; other plugins parse formats no camera writes).
- HEIC/HEIF (and AVIF) photos, found by their first bytes, are decoded in a short-lived child process
  (:mod:`.heif_child`): pillow-heif's bundled libheif crashes a process that has QGIS's system libheif
  loaded. The child sends back the mode, size, EXIF, XMP and pixels; the photo then goes through the same
  steps (orientation, limits, reduction) as any other, so the result is the one an in-process decode gives.
  A crash, a hang or garbage from the child is that one photo's error.

A photo's sha256 (the key of resuming and of the embedding cache) must be that of the pixels answered,
even when the file changes while it is read (a synced folder, or on purpose). :func:`read_photo` opens a
file once: up to :data:`MAX_IN_MEMORY_BYTES` it keeps the bytes, and the hash, the probe and the decode
all read those same bytes, never the file again. HEIC/HEIF photos (decoded by the child, which opens the
file by its path: the child is kept as it is, and writing the photo to a temporary file for it would
leave a copy of the photo behind on a crash) and larger files are hashed and decoded by path; the file's
identity (device, inode, size, modification and change times) is taken before the probe and checked
after hashing and again after decoding, and a file that changed fails with :data:`CHANGED`. (On Windows,
whose change time Python does not report, an in-place rewrite that restores the modification time would
go unseen on that path; the in-memory path, every photo up to 64 MB that is not HEIC, has no gap.)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import GeoCLIPError, PhotoError
from ..interpreter import python_interpreter
from ..results import PhotoMetadata
from .exif import read_metadata
from .heif_child import MAGIC as HEIF_MAGIC

# The only formats Pillow may open in this process, whatever a file's name says (HEIF/AVIF: the child).
# MPO is a camera JPEG holding several pictures; today's Pillow opens it through JPEG's opener and has
# none of its own. Formats this Pillow lacks (WEBP built without libwebp) are left out when opening.
PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP", "GIF")
HEIF_CHILD = Path(__file__).with_name("heif_child.py")  # decodes HEIC/HEIF/AVIF, in a process of its own
HEIF_TIMEOUT_S = 60
HEIF_MISSING = "HEIC/HEIF photo: install pillow-heif to read it"

PHOTO_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif"}
)
# Photos are decoded at no less than this on the short side (2x CLIP's 224 input): JPEGs through
# draft mode, others by integer reduction. It saves most of the decode time of large photos while the
# final bicubic resize still sees more pixels than it keeps. A reduced picture carries its geometry at
# full size (FULL_GEOMETRY), so CLIP's resize samples the very points it would sample in the full
# picture: without it, sizes rounded after the reduction moved the crop by up to a pixel and changed
# answers 3-4x more than re-saving the photo as a JPEG does (bench/bench_decode_parity.py, README).
DECODE_MIN_SIDE = 448
# image.info key: ((width, height) of the upright picture at full size, (left, top, right, bottom) where
# that full picture lies in the decoded pixels), set on reduced decodes only; read by
# backbone.ClipPreprocessor.
FULL_GEOMETRY = "geoclip_full_geometry"
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970
MAX_ASPECT = 10  # longer sides are cut (around the centre) to this many times the short side
# Files up to this size are read once into memory: hashed, probed and decoded from the same bytes. Every
# camera JPEG, PNG and WebP is far below it; bigger files (scans, huge TIFFs) are hashed and decoded from
# the file with its identity checked, so memory stays bounded by the decode workers.
MAX_IN_MEMORY_BYTES = 64 * 1024 * 1024
CHANGED = "the file changed while it was being read (a synced or edited folder?); run again to answer it"
# Modes Image.reduce averages correctly; others (palette, 1-bit, 16-bit) become RGB before reduction.
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "F"})


# Revision of each way's pixels (Preprocessing.pixels_name). engine 2: reduced decodes keep their
# full-size geometry (FULL_GEOMETRY).
_PIXELS_REVISION = {"engine": 2, "release": 1}


class Preprocessing(str, Enum):
    """How a photo becomes the picture CLIP's own preprocessing (resize, crop, normalise) receives.

    ENGINE: turned upright by its EXIF orientation, transparency shown over white, 16-bit grey scaled to
    8 bits, and large JPEGs decoded at reduced scale (README, "Parity with the official release").
    RELEASE: as the official release's ``GeoCLIP.predict()`` does it, for the paper's protocol: decoded in
    full as the file stores it, then Pillow's ``convert("RGB")`` (EXIF orientation ignored, alpha dropped).
    """

    ENGINE = "engine"
    RELEASE = "release"

    @property
    def pixels_name(self) -> str:
        """Names the pixels this way gives, in the embedding cache's keys: its revision goes up whenever
        they change, so embeddings of the old pixels are never reused."""
        return f"{self.value}-{_PIXELS_REVISION[self.value]}"

    @classmethod
    def parse(cls, value: str | Preprocessing) -> Preprocessing:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise GeoCLIPError(f"unknown preprocessing {value!r}: use one of {choices}") from None


HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")


def is_heif_header(head: bytes) -> bool:
    """True when a file's first 12 bytes are an ISO-BMFF ``ftyp`` box of a HEIF/HEIC/AVIF brand."""
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


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
    image: Image.Image  # RGB; upright unless decoded as the release does (Preprocessing.RELEASE)
    metadata: PhotoMetadata
    original_size: tuple[int, int]


@dataclass(frozen=True)
class PhotoFile:
    """A photo file opened once (:func:`read_photo`): its identity then, and its very bytes when they are
    kept in memory (``data``; None for HEIC/HEIF and files over :data:`MAX_IN_MEMORY_BYTES`, which are
    hashed and decoded by path, each time after checking that the file is still this one)."""

    path: Path
    data: bytes | None
    identity: tuple[int, ...]

    @property
    def sha256(self) -> str | None:
        """The sha256 of the bytes in memory (None when they are not kept)."""
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    def check_unchanged(self) -> None:
        """Raise a PhotoError (:data:`CHANGED`) unless the file at ``path`` is still the one read."""
        try:
            now = file_identity(os.stat(self.path))
        except OSError:
            raise PhotoError(CHANGED) from None
        if now != self.identity:
            raise PhotoError(CHANGED)


def file_identity(info: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or rewritten: device, inode, size, modification and change times."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_photo(path: str | os.PathLike, expect: tuple[int, ...] | None = None) -> PhotoFile:
    """Open a photo file once (see the module's notes): its bytes when it is small enough and no HEIC,
    else only its identity. ``expect``: the identity the file had when it was probed, which it must
    still have (:data:`CHANGED` otherwise)."""
    path = Path(path)
    check_file(path)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a pipe put there since the check cannot hang the run
    except PermissionError:
        raise PhotoError("cannot read: permission denied") from None
    except OSError as exc:
        raise PhotoError(f"cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        try:
            info = os.fstat(fd)
            identity = file_identity(info)
            if not stat.S_ISREG(info.st_mode) or (expect is not None and identity != expect):
                raise PhotoError(CHANGED)
            if info.st_size > MAX_IN_MEMORY_BYTES:
                return PhotoFile(path, None, identity)
            head = handle.read(16)
            if is_heif_header(head):
                return PhotoFile(path, None, identity)
            data = head + _read_all(handle, info.st_size + 1 - len(head))
        except OSError as exc:
            raise PhotoError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) != info.st_size:
        raise PhotoError(CHANGED)
    return PhotoFile(path, data, identity)


def _read_all(handle, limit: int) -> bytes:
    """Up to ``limit`` bytes, in large reads."""
    chunks, left = [], limit
    while left > 0 and (block := handle.read(min(left, 1 << 24))):
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


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


def _shrink(image: Image.Image, min_side: int) -> tuple[Image.Image, int]:
    """The image reduced by the largest whole factor that keeps its short side at ``min_side`` or more,
    and that factor."""
    factor = min(image.size) // min_side
    if factor < 2:
        return image, 1
    if image.mode not in REDUCIBLE_MODES:  # reduce refuses P, 1, I;16 ("wrong mode"), averages PA's indexes
        image = _to_rgb(image)
    return image.reduce(factor), factor  # pixel i covers [factor * i, factor * (i + 1)) of the input


# EXIF orientation -> the turn that makes the picture upright, as ImageOps.exif_transpose chooses it.
_UPRIGHT_TURN = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset(
    (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)
)


def _turned_box(box: tuple[float, ...], size: tuple[int, int], turn: Image.Transpose) -> tuple[float, ...]:
    """``box`` in an image of ``size``: the same region once the image is turned by ``turn``."""
    width, height = size
    moved = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y: (width - x, y),
        Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y: (x, height - y),
        Image.Transpose.ROTATE_180: lambda x, y: (width - x, height - y),
        Image.Transpose.ROTATE_90: lambda x, y: (y, width - x),  # counter-clockwise
        Image.Transpose.ROTATE_270: lambda x, y: (height - y, x),  # clockwise
        Image.Transpose.TRANSPOSE: lambda x, y: (y, x),
        Image.Transpose.TRANSVERSE: lambda x, y: (height - y, width - x),
    }[turn]
    (a, b), (c, d) = moved(box[0], box[1]), moved(box[2], box[3])
    return (min(a, c), min(b, d), max(a, c), max(b, d))


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


def _decode(
    image: Image.Image,
    source: str,
    original_size: tuple[int, int] | None = None,
    preprocessing: Preprocessing = Preprocessing.ENGINE,
    min_side: int | None = DECODE_MIN_SIDE,
) -> Photo:
    """``min_side``: decode reduced down to no less than this short side (None: in full; only the
    benchmarks ask for that)."""
    width, height = original_size or image.size
    if width * height > MAX_PIXELS:
        raise PhotoError(_bomb_message(width * height, f"{width}x{height} pixels, "))
    metadata = read_metadata(image)
    if preprocessing is Preprocessing.RELEASE:
        # The release's predict(): open, then convert("RGB"): every pixel as the file stores it. Only
        # a panorama over MAX_ASPECT:1 is cut (_centre), or its resize would take gigabytes.
        image.load()
        return Photo(source, _centre(image).convert("RGB"), metadata, (width, height))
    drafted = image.draft(None, (min_side, min_side)) if min_side else None  # JPEG: 1/2..1/8 scale
    image.load()
    # Where the full picture lies in the decoded pixels: the draft says so; a HEIC thumbnail is all of it.
    full, box = (width, height), drafted[1] if drafted else (0.0, 0.0, *image.size)
    upright = ImageOps.exif_transpose(image) or image
    turn = _UPRIGHT_TURN.get(image.getexif().get(0x0112))
    if turn is not None:
        box = _turned_box(box, image.size, turn)
        full = (height, width) if turn in _SWAPS_AXES else full
    centred = _centre(upright)
    shrunk, factor = _shrink(centred, min_side) if min_side else (centred, 1)
    rgb = _to_rgb(shrunk)
    box = tuple(v / factor for v in box)
    # A panorama cut around its centre (rare) keeps the geometry of its reduced pixels.
    if centred.size == upright.size and (full != rgb.size or box != (0, 0, *rgb.size)):
        rgb = rgb.copy() if rgb is image else rgb  # never write on the caller's own image
        rgb.info[FULL_GEOMETRY] = (full, box)
    return Photo(source, rgb, metadata, (width, height))


def open_photo(
    item: str | os.PathLike | Image.Image,
    label: str | None = None,
    read: PhotoFile | None = None,
    preprocessing: Preprocessing = Preprocessing.ENGINE,
) -> Photo:
    """Decode a photo path (or take a PIL image) into an RGB image (upright, the engine's way, unless
    ``preprocessing`` says the release's) plus its metadata. With ``read`` (:func:`read_photo` of the same
    path) the pixels are those of the bytes hashed: decoded from them, or from the file checked to be
    unchanged since (:data:`CHANGED` otherwise)."""
    if read is not None:
        if read.data is not None:
            in_memory = io.BytesIO(read.data)
            with _photo_errors(read.path), Image.open(in_memory, formats=_open_formats()) as image:
                return _decode(image, label or str(item), None, preprocessing)
        photo = open_photo(item, label, preprocessing=preprocessing)
        read.check_unchanged()
        return photo
    if isinstance(item, BadPath):
        raise PhotoError(item.reason)
    if isinstance(item, Image.Image):
        source = label or getattr(item, "filename", "") or "<image>"
        try:
            return _decode(item, source, None, preprocessing)
        except PhotoError:
            raise
        except Exception as exc:
            raise PhotoError(f"cannot use this image: {exc}") from exc
    path = Path(item)
    check_file(path)
    with _photo_errors(path):
        if _is_heif(path):
            original_size, image = _heif_child(path, "decode", full=preprocessing is Preprocessing.RELEASE)
            return _decode(image, label or str(item), original_size, preprocessing)
        with Image.open(path, formats=_open_formats()) as image:
            return _decode(image, label or str(item), None, preprocessing)


def probe_photo(path: str | os.PathLike, read: PhotoFile | None = None) -> PhotoMetadata:
    """Check that a file is a photo Pillow reads, within the pixel limit, from its header alone, and
    return its EXIF: cheap, so a large file that is no photo is refused before it is hashed or decoded.
    With ``read`` holding the file's bytes, the header is read from them (the bytes hashed)."""
    path = Path(path)
    if read is not None and read.data is not None:
        source = io.BytesIO(read.data)
    else:
        check_file(path)
        source = path
    with _photo_errors(path):
        if source is path and _is_heif(path):
            return read_metadata(_heif_child(path, "probe")[1])
        with Image.open(source, formats=_open_formats()) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PhotoError(_bomb_message(width * height, f"{width}x{height} pixels, "))
            return read_metadata(image)


@functools.cache
def _open_formats() -> tuple[str, ...]:
    """PHOTO_FORMATS that this Pillow has an opener for (naming another one raises KeyError)."""
    Image.init()
    return tuple(name for name in PHOTO_FORMATS if name in Image.OPEN)


def _is_heif(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_heif_header(handle.read(16))
    except OSError:
        return False  # Pillow's open reports it


def _child_env() -> dict[str, str]:
    """This process's environment, with its sys.path (the folders that exist) as PYTHONPATH: the child
    imports the same Pillow and pillow-heif (QGIS adds folders to sys.path that no variable names)."""
    env = dict(os.environ)
    folders = (os.path.abspath(p) for p in sys.path if p)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in folders if os.path.exists(p)))
    return env


_CHILD_ERRORS = {
    cls.__name__: cls
    for cls in (
        PermissionError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        MemoryError,
        SyntaxError,
        EOFError,
        ValueError,
        OSError,
    )
}
_PIXEL_BYTES = {"L": 1, "LA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "RGB": 3, "RGBA": 4, "RGBa": 4}  # HEIF's modes


def _heif_child(path: Path, task: str, full: bool = False) -> tuple[tuple[int, int], Image.Image]:
    """(size in the file, image with its EXIF and XMP) from heif_child.py run on ``path``: ``task``
    "probe" reads the header only (the image is 1x1), "decode" the pixels too (``full``: never from a
    smaller embedded thumbnail, as the release would if it could read HEIC). The child's own errors are
    raised as the exceptions Pillow would have raised here, so :func:`_photo_errors` words them the same;
    its failures (crash, hang, garbage) are PhotoErrors."""
    command = [
        python_interpreter(),
        "-S",  # no site: PYTHONPATH already holds every folder this process has (~20 ms saved a photo)
        os.fspath(HEIF_CHILD),
        task,
        os.fspath(path.absolute()),
        str(MAX_PIXELS),
        str(Image.MAX_IMAGE_PIXELS or 0),
        "0" if full else str(DECODE_MIN_SIDE),
        "1" if ImageFile.LOAD_TRUNCATED_IMAGES else "0",
    ]
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console window flashing over QGIS
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(),
            creationflags=flags,
        )
    except OSError as exc:
        raise PhotoError(f"HEIC decoder could not start ({command[0]}): {exc.strerror or exc}") from None
    try:
        answer, errors = child.communicate(timeout=HEIF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise PhotoError(f"HEIC decoder timed out after {HEIF_TIMEOUT_S} s") from None
    if child.returncode < 0:
        raise PhotoError(f"HEIC decoder crashed (signal {-child.returncode})")
    if child.returncode >= 0xC0000000:  # Windows: an NTSTATUS such as 0xC0000005 (access violation)
        raise PhotoError(f"HEIC decoder crashed (status {child.returncode:#010X})")
    if child.returncode != 0:
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise PhotoError(f"HEIC decoder failed (exit status {child.returncode}) {last[0]}".strip())
    header, exif, xmp, pixels = _read_answer(answer, task)
    if "error" in header:
        kind, message = header["error"], str(header.get("message", ""))
        if kind == "NoPillowHeif":
            raise PhotoError(HEIF_MISSING)
        if kind == "PixelLimit":
            width, height = header["size"]
            raise PhotoError(_bomb_message(width * height, f"{width}x{height} pixels, "))
        if kind in _CHILD_ERRORS:
            raise _CHILD_ERRORS[kind](message)
        raise PhotoError(f"HEIC decoder failed: {kind}: {message}")
    if task == "probe":
        image = Image.new("L", (1, 1))
    else:
        image = Image.frombytes(header["mode"], tuple(header["decoded_size"]), pixels)
    if exif:
        image.info["exif"] = exif
    if xmp:
        image.info["xmp"] = xmp
    return tuple(header["size"]), image


def _read_answer(answer: bytes, task: str) -> tuple[dict, bytes, bytes, memoryview]:
    """The child's answer, checked piece by piece; anything else is a PhotoError. The pixels stay a view
    into the answer (no copy of tens of megabytes)."""
    garbage = PhotoError("HEIC decoder sent an unreadable answer")
    if not answer.startswith(HEIF_MAGIC):
        raise garbage
    end = answer.find(b"\n", len(HEIF_MAGIC), len(HEIF_MAGIC) + 4096)
    try:
        header = json.loads(answer[len(HEIF_MAGIC) : end]) if end > 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("error", header.get("mode", "")), str):
        raise garbage
    if "error" in header:
        size = header.get("size")
        if header["error"] == "PixelLimit" and not _is_size(size):
            raise garbage
        return header, b"", b"", memoryview(b"")
    lengths = [header.get(key) for key in ("exif", "xmp", "pixels")]
    if not _is_size(header.get("size")) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise garbage
    xmp_at = end + 1 + lengths[0]
    pixels_at = xmp_at + lengths[1]
    if len(answer) != pixels_at + lengths[2]:
        raise garbage
    exif, xmp, pixels = answer[end + 1 : xmp_at], answer[xmp_at:pixels_at], memoryview(answer)[pixels_at:]
    if task == "decode":
        size, mode = header.get("decoded_size"), header.get("mode")
        if not _is_size(size) or mode not in _PIXEL_BYTES or len(pixels) != size[0] * size[1] * _PIXEL_BYTES[mode]:
            raise garbage
    return header, exif, xmp, pixels


def _is_size(size) -> bool:
    return isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)


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
