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
from pathlib import Path

import numpy as np

from .weights import cache_dir

EMBEDDING_DIM = 768


def photo_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def backbone_key(clip_dir: Path, precision: str) -> str:
    """Identifies a backbone by its config and weight files' names, sizes and times (hashing a 1.7 GB
    file on every start would cost seconds), plus the precision the tower runs in."""
    digest = hashlib.sha256(precision.encode())
    for path in sorted(Path(clip_dir).glob("*")):
        if path.suffix in (".json", ".safetensors", ".bin"):
            info = path.stat()
            digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update((Path(clip_dir) / "config.json").read_bytes())
    return digest.hexdigest()[:24]


class EmbeddingCache:
    """Thread-safe get/put of embeddings; one SQLite file, written in small transactions."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir() / "image-embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (backbone TEXT, photo_sha256 TEXT, "
            "embedding BLOB, PRIMARY KEY (backbone, photo_sha256))"
        )
        self._db.commit()

    def get_many(self, backbone: str, hashes: list[str]) -> dict[str, np.ndarray]:
        if not hashes:
            return {}
        query = "SELECT embedding FROM embeddings WHERE backbone = ? AND photo_sha256 = ?"
        found = {}
        with self._lock:
            for sha in hashes:
                row = self._db.execute(query, (backbone, sha)).fetchone()
                if row is not None and len(row[0]) == EMBEDDING_DIM * 4:
                    found[sha] = np.frombuffer(row[0], dtype=np.float32).copy()
        return found

    def put_many(self, backbone: str, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        rows = [(backbone, sha, np.asarray(v, dtype=np.float32).tobytes()) for sha, v in items.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
