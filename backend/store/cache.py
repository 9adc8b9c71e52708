"""The cache folder: what is kept there, how it is protected, how it is cleared.

Everything in it can be rebuilt, so the cache is optional: a folder that cannot be created, is
read-only or is full costs speed, never a run (a warning is logged once). It holds:

- ``image-embeddings.sqlite``: the CLIP embedding (768 numbers) of each photo answered, keyed by the
  sha256 of the photo's bytes and the backbone; least recently used entries are dropped beyond a size
  cap (:data:`MAX_EMBEDDINGS_MB_ENV`, default 1024 MB). Off with ``--no-cache`` or the dock's setting.
- ``features/``: location features of the GPS gallery and of the raster world grids, keyed by the
  weights' checksums (no photo data).
- ``regions/``: which country and region each gallery place lies in (no photo data).
- ``checksums.json``: the sha256 of weight files by path, size and time (no photo data).

Folders are created readable by their owner only (0700), files likewise (0600).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..user_folders import user_cache_folder

CACHE_DIR_ENV = "GEOCLIP_CACHE_DIR"
MAX_EMBEDDINGS_MB_ENV = "GEOCLIP_CACHE_MAX_MB"
DEFAULT_MAX_EMBEDDINGS_MB = 1024
LOG = logging.getLogger("geoclip_qgis")
_warned: set[str] = set()


def cache_dir() -> Path:
    """Derived data that can be rebuilt: platformdirs' cache folder, unless $GEOCLIP_CACHE_DIR says otherwise."""
    return Path(os.environ.get(CACHE_DIR_ENV) or user_cache_folder())


def private_folder(path: Path) -> Path:
    """Create ``path`` (and its missing parents, likewise) readable by its owner only."""
    path = Path(path)
    missing = []
    while not path.exists() and path.parent != path and path not in missing:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True, mode=0o700)
    path = missing[0] if missing else path
    if os.name != "nt":
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists and only its owner can read it, before anything is written into it. A
    symbolic link there is neither followed nor changed (OSError)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if os.name != "nt":
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def max_embeddings_bytes() -> int:
    try:
        megabytes = float(os.environ.get(MAX_EMBEDDINGS_MB_ENV) or DEFAULT_MAX_EMBEDDINGS_MB)
    except ValueError:
        megabytes = DEFAULT_MAX_EMBEDDINGS_MB
    return int(max(0.0, megabytes) * 1024 * 1024)


def warn_once(key: str, message: str) -> None:
    """Log a cache problem once per process: the run goes on without that part of the cache."""
    if key not in _warned:
        _warned.add(key)
        LOG.warning(message)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered by path, size and modification time (``checksums.json`` in the
    cache folder), so a 1.7 GB backbone is hashed once, not on every run."""
    path = Path(path).resolve()
    info = path.stat()
    stamp = f"{info.st_size}:{info.st_mtime_ns}"
    index_path = cache_dir() / "checksums.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    except (OSError, ValueError, RecursionError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    entry = index.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    index[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        private_folder(index_path.parent)
        handle, partial = tempfile.mkstemp(dir=index_path.parent, suffix=".partial")  # 0600, a new name
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(json.dumps(index))
            os.replace(partial, index_path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warn_once("checksums", f"cannot remember checksums in {index_path.parent} ({exc})")
    return digest


def cache_report() -> dict:
    """What the cache folder holds: each part's size in bytes."""
    root = cache_dir()
    parts = {}
    for name in ("image-embeddings.sqlite", "features", "regions"):
        paths = [root / name] if name.endswith(".sqlite") else []
        if name.endswith(".sqlite"):
            paths += [root / (name + suffix) for suffix in ("-wal", "-shm")]
        elif (root / name).is_dir():
            paths = [p for p in (root / name).rglob("*") if p.is_file()]
        parts[name] = sum(p.stat().st_size for p in paths if p.is_file())
    return {"folder": str(root), "parts": parts}


def clear_caches(photos_only: bool = False) -> list[str]:
    """Delete the cache's contents (only the photos' embeddings with ``photos_only``); returns what went."""
    root = cache_dir()
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = root / f"image-embeddings.sqlite{suffix}"
        if path.exists():
            path.unlink()
            removed.append(path.name)
    if not photos_only:
        for name in ("features", "regions"):
            path = root / name
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed.append(name)
            elif path.is_dir():
                shutil.rmtree(path)
                removed.append(name + "/")
    return removed
