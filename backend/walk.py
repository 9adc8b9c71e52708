"""Turning the paths a user names into photo paths: files as given, folders walked recursively.

Folders are walked lazily in sorted order, following symbolic links but never twice into the same
folder; a link that loops back to a folder being walked is reported instead of followed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from .photos import PHOTO_EXTENSIONS, BadPath


def is_photo_name(name: str) -> bool:
    return Path(name).suffix.lower() in PHOTO_EXTENSIONS


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
        elif is_photo_name(entry.name):
            yield str(path)


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[str | BadPath]:
    """Files are yielded as given (whatever their extension); folders yield their photos."""
    seen: set = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from _walk_folder(path, (), seen)
        else:
            yield os.fspath(raw)
