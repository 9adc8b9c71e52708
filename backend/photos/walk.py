"""Turning the paths a user names into photo paths: files as given, folders walked recursively.

Folders are walked lazily (a generator, one folder listing in memory at a time) in sorted order,
following symbolic links but never twice into the same folder; a link that loops back to a folder
being walked is reported instead of followed. In folders, photos are found by extension or, for other
files, by their first bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .loader import PHOTO_EXTENSIONS, BadPath, is_heif_header

# First bytes of the photo formats Pillow (and pillow-heif) read: files without a photo extension
# (camera dumps, scraped files named by hash) are still found.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")


def is_photo_name(name: str) -> bool:
    return Path(name).suffix.lower() in PHOTO_EXTENSIONS


def looks_like_photo(path: Path) -> bool:
    """True when the file starts like a JPEG, PNG, GIF, TIFF, BMP, WebP or HEIF/AVIF image."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    if head.startswith(SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return is_heif_header(head)


def _walk_folder(root: Path, ancestors: tuple[tuple[int, int], ...], seen: set) -> Iterator[str | BadPath]:
    try:
        info = root.stat()
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        yield BadPath(str(root), f"cannot list folder: {exc.strerror or exc}")
        return
    here = (info.st_dev, info.st_ino)
    seen.add(here)
    ancestors = ancestors + (here,)
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            try:
                target = path.stat()
            except OSError as exc:
                yield BadPath(str(path), f"cannot open folder: {exc.strerror or exc}")
                continue
            key = (target.st_dev, target.st_ino)
            if key in ancestors:
                yield BadPath(str(path), f"symbolic link loop back to {os.path.realpath(path)}: not followed")
            elif key not in seen:  # a second link to a folder already walked: its photos are in
                yield from _walk_folder(path, ancestors, seen)
        elif is_photo_name(entry.name) or (entry.is_file() and looks_like_photo(path)):
            yield str(path)


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[str | BadPath]:
    """Files are yielded as given (whatever their extension); folders yield their photos."""
    seen: set = set()
    for raw in paths:
        if not os.fspath(raw).strip():
            yield BadPath(os.fspath(raw), "empty path")  # never read as "the current folder"
            continue
        path = Path(raw)
        if path.is_dir():
            yield from _walk_folder(path, (), seen)
        else:
            yield os.fspath(raw)
