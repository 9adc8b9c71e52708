"""Decodes one HEIC/HEIF (or AVIF) photo in a short-lived process of its own; run by backend/photos/loader.py.

pillow-heif's wheel bundles its own libheif. Inside QGIS the system libheif (GDAL's HEIF driver) is
already loaded, and the two in one process crash it (a null call, signal 11), taking QGIS down with the
photo. So the engine never imports pillow_heif itself: this script does, in a child process, and sends
back what the engine's loader needs to go on exactly as if it had decoded the photo itself.

Run as a script, never imported by the engine (it imports nothing of the engine, only the standard
library, Pillow and pillow-heif)::

    python heif_child.py probe|decode PATH MAX_PIXELS PIL_MAX_IMAGE_PIXELS DRAFT_SIDE LOAD_TRUNCATED

Answer, on stdout: the MAGIC line, one line of JSON, then the bytes it announces in this order: EXIF,
XMP, pixels. The JSON is either ``{"error": kind, "message": text}`` (plus ``"size"`` when the pixel
limit refused the photo) or ``{"format", "size"}`` and, when decoding, ``{"mode", "decoded_size"}``,
with the byte counts ``"exif"``, ``"xmp"`` and ``"pixels"``. The pixel limit is checked from the
header, before any pixel is decoded. Exit status 0 whenever an answer was written.
"""

import json
import os
import sys

MAGIC = b"GEOCLIP-HEIF 1\n"


def _forget_own_folder() -> None:
    """Run as a script, this file's folder (the engine's modules) comes first on sys.path: drop it, so
    only the packages the parent passes in PYTHONPATH are seen."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]


def _error_kind(exc: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    for cls in (
        PermissionError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        MemoryError,
        SyntaxError,
        EOFError,
        ValueError,
        OSError,
    ):
        if isinstance(exc, cls):
            return cls.__name__
    return type(exc).__name__


def _answer(out, header: dict, *blobs: bytes) -> None:
    out.write(MAGIC)
    out.write(json.dumps(header).encode("ascii") + b"\n")
    for blob in blobs:
        out.write(blob)
    out.flush()


def _blob(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value) if isinstance(value, (bytes, bytearray)) else b""


def decode(task: str, path: str, max_pixels: int, pil_limit: int, draft_side: int, truncated: bool):
    """(header, exif, xmp, pixels) for one file; errors come back as a header too."""
    from PIL import Image, ImageFile

    Image.MAX_IMAGE_PIXELS = pil_limit or None  # the parent's, so its bomb check is the same one
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        heif = True
    except ImportError:
        heif = False
    try:  # Pillow's own AVIF opener (Pillow 11.3+); not Image.init(), which imports every plugin (~0.1 s)
        from PIL import AvifImagePlugin  # noqa: F401
    except ImportError:
        pass
    formats = [name for name in ("HEIF", "AVIF") if name in Image.OPEN]
    try:
        if not formats:
            raise ImportError("pillow_heif")
        with Image.open(path, formats=formats) as image:
            width, height = image.size
            if width * height > max_pixels:
                return {"error": "PixelLimit", "message": "", "size": [width, height]}, b"", b"", b""
            header = {"format": image.format, "size": [width, height]}
            exif = _blob(image.info.get("exif"))
            xmp = _blob(image.info.get("xmp") or image.info.get("XML:com.adobe.xmp"))
            pixels = b""
            if task == "decode":
                if draft_side > 0:  # 0: every pixel (a draft of 0x0 would pick the smallest thumbnail)
                    image.draft(None, (draft_side, draft_side))
                image.load()
                pixels = image.tobytes()
                header.update(mode=image.mode, decoded_size=list(image.size))
    except ImportError:
        return {"error": "NoPillowHeif", "message": "pillow_heif is not installed"}, b"", b"", b""
    except Exception as exc:
        if not heif and _error_kind(exc) == "UnidentifiedImageError":
            return {"error": "NoPillowHeif", "message": "pillow_heif is not installed"}, b"", b"", b""
        return {"error": _error_kind(exc), "message": str(exc)}, b"", b"", b""
    header.update(exif=len(exif), xmp=len(xmp), pixels=len(pixels))
    return header, exif, xmp, pixels


def main(argv: list[str]) -> None:
    # The answer gets its own copy of stdout; whatever a library prints on fd 1 goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _forget_own_folder()
    task, path, max_pixels, pil_limit, draft_side, truncated = argv
    header, *blobs = decode(task, path, int(max_pixels), int(pil_limit), int(draft_side), truncated == "1")
    _answer(out, header, *blobs)
    out.close()
    os._exit(0)  # no interpreter teardown: native libraries' exit handlers cannot spoil a written answer


if __name__ == "__main__":
    main(sys.argv[1:])
