"""Photos to model input, ahead of the encoder: file checks, content hash, skip rules, embedding-cache
lookups, decoding and CLIP preprocessing.

Preparation runs in a pool of worker threads so that reading the next photos overlaps encoding the
current ones. Threads, not processes: JPEG decoding, resizing, hashing and the pixel arithmetic run in
C with the GIL released (the Python between those calls holds it for a few percent of a photo's time,
measured by bench/bench_pipeline.py), a thread pool starts instantly and needs no picklable state or
second copy of the libraries, and QGIS's Python cannot start worker processes reliably everywhere.

How many: on a GPU one per core (the thread feeding the GPU mostly waits), on a CPU few, since the
vision tower needs the cores and costs 10 to 30 times what preparing a photo does. Batches come out in
input order and the photos prepared ahead are bounded (:func:`read_ahead`), so memory stays flat
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

from ..errors import PhotoError
from ..results import SKIP_ANSWERED, SKIP_GEOTAGGED, PhotoMetadata, PhotoResult, photo_label
from ..store.embedding_cache import EmbeddingCache, photo_sha256
from .loader import BadPath, Preprocessing, file_identity, open_photo, probe_photo, read_photo

DECODE_WORKERS = 1  # the least: on a CPU one preparer keeps up with the vision tower on up to ~16 cores
CPU_CORES_PER_WORKER = 16  # beyond that, one more preparer per 16 cores (the tower is ~25x a photo's preparation)
MAX_DECODE_WORKERS = 64


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one, e.g. in a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_decode_workers(device_type: str, cores: int | None = None) -> int:
    """Preparation workers for an encoder on ``device_type``: one per core feeding a GPU (which encodes
    far faster than one core prepares photos), one per 16 cores on a CPU (never fewer than one)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    if device_type == "cpu":
        return max(DECODE_WORKERS, cores // CPU_CORES_PER_WORKER)
    return min(MAX_DECODE_WORKERS, cores)


def read_ahead(batch_size: int, workers: int) -> int:
    """Photos submitted for preparation beyond those handed out: two batches, and at least enough to keep
    every worker busy while the consumer holds a batch. This bounds the memory of a run."""
    return max(2 * batch_size, batch_size + 2 * workers)


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

    preprocess: Callable  # RGB PIL image -> (3, H, W) float32 pixels
    embeddings: EmbeddingCache | None = None
    backbone_key: str = ""  # the cache's key: must name the preprocessing too (Engine.backbone_key does)
    skip: Container[str] = frozenset()  # content hashes of photos answered before
    skip_geotagged: bool = False
    preprocessing: Preprocessing = Preprocessing.ENGINE  # how photos are decoded before ``preprocess``

    def __call__(self, item, label: str):
        try:
            sha = read = None
            if isinstance(item, (str, os.PathLike)) and not isinstance(item, BadPath):
                try:
                    before = file_identity(os.stat(item))
                except (OSError, ValueError):
                    before = None  # the probe says why
                metadata = probe_photo(item)  # a file that is no photo is refused before it is hashed
                # Read once: the hash, the metadata and the pixels all come from the same bytes (or from
                # a file checked to be the one probed and hashed), so a photo changed on disk meanwhile
                # never gets another photo's hash, answer or cached embedding.
                read = read_photo(item, expect=before)
                if read.data is not None:
                    metadata, sha = probe_photo(item, read), read.sha256
                else:  # HEIC or a very large file: hashed from the file, which must still be the one probed
                    sha = photo_sha256(item)
                    read.check_unchanged()
                if sha in self.skip:
                    return PhotoResult(label, metadata=metadata, sha256=sha, skipped=SKIP_ANSWERED)
                if self.skip_geotagged and metadata.has_gps:
                    return PhotoResult(label, metadata=metadata, sha256=sha, skipped=SKIP_GEOTAGGED)
                hit = self.embeddings.get_many(self.backbone_key, [sha]).get(sha) if self.embeddings else None
                if hit is not None:  # a photo seen before: no decoding
                    return Prepared(None, metadata, sha, hit)
            photo = open_photo(item, label, read, self.preprocessing)
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
    """Batches of (label, outcome of ``prepare``) in input order; later photos are prepared while the
    caller works on this batch, at most :func:`read_ahead` of them. Closing the iterator stops the work
    within one batch."""
    labelled = ((item, photo_label(item, n)) for n, item in enumerate(photos, 1))
    workers = max(1, int(workers))
    limit = read_ahead(batch_size, workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoclip-decode")
    pending: deque[tuple[str, Future]] = deque()

    def submit_until(limit: int) -> None:
        for item, label in itertools.islice(labelled, max(0, limit - len(pending))):
            pending.append((label, pool.submit(prepare, item, label)))

    try:
        submit_until(limit)
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            submit_until(limit)
            yield [(label, future.result()) for label, future in batch]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
