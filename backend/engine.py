"""The GeoCLIP engine: photos in, ranked GPS candidates with probabilities out.

Decoding runs in a worker thread a batch ahead of the encoder, so reading the next photos overlaps
encoding the current ones. The gallery's location features are computed once and cached
(:mod:`.gallery`); per photo the work left is the CLIP vision tower, a small MLP and one matrix product.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import backbone
from .device import PRECISION_NAMES, choose_device, choose_dtype, default_batch_size
from .errors import GeoCLIPError, PhotoError
from .exif import PhotoMetadata
from .gallery import Gallery, load_gallery
from .heads import HeadsFiles, load_heads
from .photos import open_photo
from .results import Candidate, PhotoResult, photo_label
from .weights import find_backbone, find_heads, gallery_csv

Progress = Callable[[str, int, int], None]  # (stage, done, total)
DECODE_WORKERS = 1  # one decoder keeps a 2-core CPU busy without starving the encoder's threads


@dataclass
class _Prepared:
    pixels: np.ndarray  # (3, H, W) float32, normalised as the checkpoint expects
    metadata: PhotoMetadata


class Engine:
    """GeoCLIP inference on one device. Build once, reuse for many calls (the model stays loaded).

    ``heads`` and ``clip`` are folders; when None they are found as :mod:`.weights` describes.
    """

    def __init__(self, heads=None, clip=None, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None):
        heads_lookup, clip_lookup = find_heads(heads), find_backbone(clip)
        self.heads_files = HeadsFiles(heads_lookup.require(), gallery_csv(heads_lookup.path))
        self.clip_dir = clip_lookup.require()
        self.heads_source, self.clip_source = heads_lookup.source, clip_lookup.source
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, precision)
        self.batch_size = batch_size or default_batch_size(self.device, self.dtype)
        self.heads = load_heads(self.heads_files).to(self.device)
        self._vision = None
        self._processor = None
        self._text = None
        self._gallery: Gallery | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ loading

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.dtype]

    @property
    def model_name(self) -> str:
        """A short, human-readable name of the weights in use, stored with every result."""
        heads = "release" if self.heads_source == "geoclip wheel" else self.heads_files.folder.name
        return f"GeoCLIP {heads} heads + {self.clip_dir.name} ({self.precision})"

    def load(self, progress: Progress | None = None) -> "Engine":
        """Load what image work needs: vision tower, preprocessing, gallery features. Idempotent."""
        with self._lock:
            if self._vision is None:
                if progress:
                    progress("Loading CLIP vision tower", 0, 1)
                self._vision = backbone.load_vision_tower(self.clip_dir, self.device, self.dtype)
                self._processor = backbone.load_image_processor(self.clip_dir)
            if self._gallery is None:
                def gallery_progress(done, total):
                    if progress:
                        progress("Encoding the GPS gallery (first use only)", done, total)

                if progress:
                    progress("Loading GPS gallery", 0, 1)
                self._gallery = load_gallery(self.heads, self.heads_files, self.device, gallery_progress)
        if progress:
            progress("Model ready", 1, 1)
        return self

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            self.load()
        return self._gallery

    # --------------------------------------------------------------------------------- arithmetic

    def preprocess(self, image) -> np.ndarray:
        """An upright RGB PIL image -> (3, 224, 224) float32 pixels as the checkpoint expects."""
        return self._processor(images=image, return_tensors="np")["pixel_values"][0]

    @torch.inference_mode()
    def image_features(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, 512) unit-length GeoCLIP image features (fp32)."""
        self.load()
        batch = torch.as_tensor(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        clip_embeds = self._vision(pixel_values=batch.to(self.dtype)).image_embeds
        return self.heads.image_features(clip_embeds.float())

    @torch.inference_mode()
    def rank(self, features: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the gallery -> (B, k) candidate indices and probabilities, best first."""
        gallery = self.gallery
        probabilities = self.heads.logits(features, gallery.features).softmax(dim=-1)
        top = torch.topk(probabilities, top_k, dim=-1)
        return top.indices, top.values

    def _candidates(self, indices: torch.Tensor, probabilities: torch.Tensor) -> list[list[Candidate]]:
        coordinates = self.gallery.coordinates[indices].cpu().numpy()
        probabilities = probabilities.cpu().numpy()
        return [
            [Candidate(rank + 1, float(lat), float(lon), float(p))
             for rank, ((lat, lon), p) in enumerate(zip(coordinates[row], probabilities[row]))]
            for row in range(coordinates.shape[0])
        ]

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= int(top_k) <= len(self.gallery):
            raise GeoCLIPError(f"top_k must be between 1 and {len(self.gallery)} (the gallery size), got {top_k}")

    # --------------------------------------------------------------------------------- prediction

    def _prepare(self, item, label: str) -> _Prepared | PhotoError:
        try:
            photo = open_photo(item, label)
            return _Prepared(self.preprocess(photo.image), photo.metadata)
        except PhotoError as exc:
            return exc
        except Exception as exc:  # anything unforeseen in one photo stays with that photo
            return PhotoError(f"cannot prepare this photo: {type(exc).__name__}: {exc}")

    def predict_iter(self, photos: Iterable, top_k: int = 5) -> Iterator[PhotoResult]:
        """Yield one :class:`PhotoResult` per photo, in input order, as batches finish.

        Stopping the iteration (or closing the generator) stops the work within one batch.
        """
        self.load()
        self.check_top_k(top_k)
        labelled = ((item, photo_label(item, n)) for n, item in enumerate(photos, 1))
        pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="geoclip-decode")
        pending: deque[tuple[str, Future]] = deque()

        def submit_until(limit: int) -> None:
            for item, label in itertools.islice(labelled, max(0, limit - len(pending))):
                pending.append((label, pool.submit(self._prepare, item, label)))

        try:
            submit_until(2 * self.batch_size)
            while pending:
                batch = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
                submit_until(2 * self.batch_size)  # the next batch decodes while this one encodes
                prepared = [(label, future.result()) for label, future in batch]
                good = [p for _, p in prepared if isinstance(p, _Prepared)]
                ranked = iter(())
                if good:
                    features = self.image_features(np.stack([p.pixels for p in good]))
                    ranked = iter(self._candidates(*self.rank(features, top_k)))
                for label, p in prepared:
                    if isinstance(p, _Prepared):
                        yield PhotoResult(label, next(ranked), p.metadata)
                    else:
                        yield PhotoResult(label, error=str(p))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def predict(self, photos: Iterable, top_k: int = 5,
                progress: Callable[[int, int], None] | None = None) -> list[PhotoResult]:
        """All results at once. ``photos``: paths or PIL images (a single one is accepted too)."""
        if isinstance(photos, (str, Path)) or hasattr(photos, "mode"):
            photos = [photos]
        photos = list(photos)
        results = []
        for result in self.predict_iter(photos, top_k):
            results.append(result)
            if progress:
                progress(len(results), len(photos))
        return results
