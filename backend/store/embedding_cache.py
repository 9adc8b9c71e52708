"""On-disk cache of CLIP image embeddings, keyed by the photo's content and the backbone.

CLIP is frozen, so a photo's 768-d projected embedding never changes for a given backbone and
precision: reruns, resumed batches and fine-tuning read it instead of running the vision tower again.
Keys are the sha256 of the photo's bytes (renamed or moved photos are found again) and a backbone
key; values are raw float32 bytes in SQLite (no pickling).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from .cache import cache_dir, max_embeddings_bytes, private_file, private_folder, warn_once

EMBEDDING_DIM = 768


def photo_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def backbone_key(clip_dir: Path, precision: str, pixels: str = "") -> str:
    """Identifies a backbone by its config and weight files' names, sizes and times (hashing a 1.7 GB
    file on every start would cost seconds), plus the precision the tower runs in and ``pixels``, the
    way photos become its input (:attr:`.photos.Preprocessing.pixels_name`): photos decoded another way
    give other embeddings, which the cache must never hand out for these."""
    digest = hashlib.sha256(precision.encode())
    if pixels:
        digest.update(f"pixels={pixels}".encode())
    for path in sorted(Path(clip_dir).glob("*")):
        if path.suffix in (".json", ".safetensors", ".bin"):
            info = path.stat()
            digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update((Path(clip_dir) / "config.json").read_bytes())
    return digest.hexdigest()[:24]


class EmbeddingCache:
    """Thread-safe get/put of embeddings in one SQLite file, small transactions, least recently used
    entries dropped beyond the size cap. Any failure (read-only or full folder, damaged file) logs one
    warning and turns the cache off for the rest of the process: it costs speed, never a run."""

    ROW_BYTES = EMBEDDING_DIM * 4 + 200  # one entry on disk, keys and page overhead included

    def __init__(self, path: Path | None = None, max_bytes: int | None = None):
        self.path = Path(path) if path else cache_dir() / "image-embeddings.sqlite"
        self.max_rows = (max_embeddings_bytes() if max_bytes is None else max_bytes) // self.ROW_BYTES
        self._lock = threading.Lock()
        self._db = None
        try:
            private_folder(self.path.parent)
            private_file(self.path)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (backbone TEXT, photo_sha256 TEXT, embedding BLOB, "
                "used INTEGER DEFAULT 0, PRIMARY KEY (backbone, photo_sha256))"
            )
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(embeddings)")]
            if "used" not in columns:  # a cache from an earlier version
                self._db.execute("ALTER TABLE embeddings ADD COLUMN used INTEGER DEFAULT 0")
            self._db.execute("CREATE INDEX IF NOT EXISTS embeddings_used ON embeddings (used)")
            self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            self._off(exc)

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def _off(self, exc: Exception) -> None:
        warn_once(
            "embeddings",
            f"the photo embedding cache {self.path} cannot be used ({exc}); "
            "running without it (photos are encoded again next time)",
        )
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    def get_many(self, backbone: str, hashes: list[str]) -> dict[str, np.ndarray]:
        if not hashes or self._db is None:
            return {}
        query = "SELECT embedding FROM embeddings WHERE backbone = ? AND photo_sha256 = ?"
        found = {}
        with self._lock:
            try:
                for sha in hashes:
                    row = self._db.execute(query, (backbone, sha)).fetchone()
                    if row is not None and len(row[0]) == EMBEDDING_DIM * 4:
                        found[sha] = np.frombuffer(row[0], dtype=np.float32).copy()
                if found:
                    now = time.time_ns()
                    self._db.executemany(
                        "UPDATE embeddings SET used = ? WHERE backbone = ? AND photo_sha256 = ?",
                        [(now, backbone, sha) for sha in found],
                    )
                    self._db.commit()
            except sqlite3.Error as exc:
                self._off(exc)
        return found

    def put_many(self, backbone: str, items: dict[str, np.ndarray]) -> None:
        if not items or self._db is None:
            return
        now = time.time_ns()
        rows = [(backbone, sha, np.asarray(v, dtype=np.float32).tobytes(), now) for sha, v in items.items()]
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                self._db.commit()
                self._evict()
            except sqlite3.Error as exc:
                self._off(exc)

    def _evict(self) -> None:
        """Drop the least recently used entries beyond the cap (a tenth more, so it is not every put)."""
        count = self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        if count <= self.max_rows:
            return
        excess = count - int(self.max_rows * 0.9)
        self._db.execute(
            "DELETE FROM embeddings WHERE rowid IN (SELECT rowid FROM embeddings ORDER BY used LIMIT ?)", (excess,)
        )
        self._db.commit()

    def __len__(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
