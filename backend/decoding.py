"""Photos to model input, a batch ahead of the encoder: file checks, content hash, skip rules,
embedding-cache lookups, decoding and CLIP preprocessing.

Decoding runs in worker threads so that reading the next photos overlaps encoding the current ones;
batches come out in input order and at most two batches are decoded ahead, so memory stays bounded
whatever the folder's size.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .embedding_cache import EmbeddingCache, photo_sha256
from .errors import PhotoError
from .exif import PhotoMetadata
from .photos import BadPath, open_photo, probe_photo
from .results import SKIP_ANSWERED, SKIP_GEOTAGGED, PhotoResult, photo_label

DECODE_WORKERS = 1  # one decoder keeps a 2-core CPU busy without starving the encoder's threads


@dataclass
class Prepared:
    """A photo ready for the vision tower, or already encoded (embedding from the cache)."""

    pixels: np.ndarray | None  # (3, H, W) float32 as the checkpoint expects; None when cached
    metadata: PhotoMetadata
    sha256: str | None = None  # of the file's bytes: the key for resuming and caching
    embedding: np.ndarray | None = None  # (768,) CLIP embedding


@dataclass
class PhotoPreparer:
    """Turns one input (a path or a PIL image) into a :class:`Prepared`, a skipped result or an error."""

    preprocess: Callable  # upright RGB PIL image -> (3, H, W) float32 pixels
    embeddings: EmbeddingCache | None = None
    backbone_key: str = ""
    skip: Container[str] = frozenset()  # content hashes of photos answered before
    skip_geotagged: bool = False

    def __call__(self, item, label: str):
        try:
            sha = None
            if isinstance(item, (str, os.PathLike)) and not isinstance(item, BadPath):
                metadata = probe_photo(item)  # a file that is no photo is refused before it is hashed
                sha = photo_sha256(item)
                if sha in self.skip:
                    return PhotoResult(label, metadata=metadata, sha256=sha, skipped=SKIP_ANSWERED)
                if self.skip_geotagged and metadata.has_gps:
                    return PhotoResult(label, metadata=metadata, sha256=sha, skipped=SKIP_GEOTAGGED)
                hit = self.embeddings.get_many(self.backbone_key, [sha]).get(sha) if self.embeddings else None
                if hit is not None:  # a photo seen before: no decoding
                    return Prepared(None, metadata, sha, hit)
            photo = open_photo(item, label)
            if self.skip_geotagged and photo.metadata.has_gps:
                return PhotoResult(label, metadata=photo.metadata, sha256=sha, skipped=SKIP_GEOTAGGED)
            return Prepared(self.preprocess(photo.image), photo.metadata, sha)
        except PhotoError as exc:
            return exc
        except Exception as exc:  # anything unforeseen in one photo stays with that photo
            return PhotoError(f"cannot prepare this photo: {type(exc).__name__}: {exc}")


def prepared_batches(
    photos: Iterable, prepare: Callable, batch_size: int, workers: int = DECODE_WORKERS
) -> Iterator[list[tuple[str, object]]]:
    """Batches of (label, outcome of ``prepare``) in input order; the next batch decodes while the caller
    works on this one. Closing the iterator stops the work within one batch."""
    labelled = ((item, photo_label(item, n)) for n, item in enumerate(photos, 1))
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="geoclip-decode")
    pending: deque[tuple[str, Future]] = deque()

    def submit_until(limit: int) -> None:
        for item, label in itertools.islice(labelled, max(0, limit - len(pending))):
            pending.append((label, pool.submit(prepare, item, label)))

    try:
        submit_until(2 * batch_size)
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            submit_until(2 * batch_size)
            yield [(label, future.result()) for label, future in batch]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
