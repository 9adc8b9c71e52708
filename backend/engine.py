"""The GeoCLIP engine: photos (or text) in, ranked GPS candidates with probabilities out, and the
probability rasters, areas of interest and fusion built on the same query vectors.

Decoding runs in a worker thread a batch ahead of the encoder, so reading the next photos overlaps
encoding the current ones. The gallery's location features are computed once and cached
(:mod:`.gallery`), CLIP embeddings are cached by photo content (:mod:`.embedding_cache`); per new photo
the work left is the CLIP vision tower, a small MLP and one matrix product.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator

import numpy as np
import torch

from . import backbone
from .area import Area
from .device import PRECISION_NAMES, choose_device, choose_dtype, default_batch_size
from .embedding_cache import EmbeddingCache, backbone_key, photo_sha256
from .errors import GeoCLIPError, PhotoError
from .exif import PhotoMetadata
from .gallery import Gallery, cached_location_features, features_key, load_gallery
from .heads import HeadsFiles, load_heads
from .photos import BadPath, check_file, open_photo, read_photo_metadata
from .rasters import RasterSet, SurfaceEvaluator, grid_centres, world_shape
from .results import SKIP_ANSWERED, SKIP_GEOTAGGED, Candidate, PhotoResult, photo_label
from .weights import find_backbone, find_heads, gallery_csv

Progress = Callable[[str, int, int], None]  # (stage, done, total)
DECODE_WORKERS = 1  # one decoder keeps a 2-core CPU busy without starving the encoder's threads


@dataclass
class _Prepared:
    pixels: np.ndarray | None  # (3, H, W) float32 as the checkpoint expects; None when cached
    metadata: PhotoMetadata
    sha256: str | None = None  # of the file's bytes, for the embedding cache
    embedding: np.ndarray | None = None  # (768,) CLIP embedding found in the cache


class Engine:
    """GeoCLIP inference on one device. Build once, reuse for many calls (the model stays loaded).

    ``heads`` and ``clip`` are folders; when None they are found as :mod:`.weights` describes.
    """

    def __init__(self, heads=None, clip=None, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None, embedding_cache: bool = True):
        heads_lookup, clip_lookup = find_heads(heads), find_backbone(clip)
        self.heads_files = HeadsFiles(heads_lookup.require(), gallery_csv(heads_lookup.path))
        self.clip_dir = clip_lookup.require()
        self.heads_source, self.clip_source = heads_lookup.source, clip_lookup.source
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, precision)
        self.batch_size = batch_size or default_batch_size(self.device, self.dtype)
        self.heads = load_heads(self.heads_files).to(self.device)
        self.embeddings = EmbeddingCache() if embedding_cache else None
        self.backbone_key = backbone_key(self.clip_dir, self.precision)
        self._vision = None
        self._processor = None
        self._text = None
        self._gallery: Gallery | None = None
        self._surfaces: dict[tuple[float, float], SurfaceEvaluator] = {}
        self._area_cache: tuple[Area | None, torch.Tensor | None] = (None, None)
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
    def clip_embeddings(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, 768) CLIP projected image embeddings (fp32): the frozen part."""
        self.load()
        batch = torch.as_tensor(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return self._vision(pixel_values=batch.to(self.dtype)).image_embeds.float()

    @torch.inference_mode()
    def image_features(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, 512) unit-length GeoCLIP image features (fp32)."""
        return self.heads.image_features(self.clip_embeddings(pixels))

    def _area_mask(self, area: Area | None) -> torch.Tensor | None:
        """Gallery points inside ``area`` (cached: the same area is asked for batch after batch)."""
        if area is None:
            return None
        if self._area_cache[0] != area:
            coordinates = self.gallery.coordinates.cpu().numpy()
            inside = area.contains(coordinates[:, 0], coordinates[:, 1])
            if not inside.any():
                raise GeoCLIPError(f"no gallery place lies inside the area ({area.label})")
            self._area_cache = (area, torch.from_numpy(inside).to(self.device))
        return self._area_cache[1]

    @torch.inference_mode()
    def rank(self, features: torch.Tensor, top_k: int, area: Area | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the gallery -> (B, k) candidate indices and probabilities, best first.

        ``features`` are query vectors: unit image/text features, or a sum of them (fusion). With an
        area, places outside it are dropped and the probabilities renormalised over those inside.
        """
        gallery = self.gallery
        logits = self.heads.logits(features.to(self.device, torch.float32), gallery.features)
        inside = self._area_mask(area)
        if inside is not None:
            logits = logits.masked_fill(~inside, float("-inf"))
            top_k = min(top_k, int(inside.sum()))
        top = torch.topk(logits.softmax(dim=-1), top_k, dim=-1)
        return top.indices, top.values

    def _candidates(self, indices: torch.Tensor, probabilities: torch.Tensor) -> list[list[Candidate]]:
        coordinates = self.gallery.coordinates[indices].cpu().numpy()
        probabilities = probabilities.cpu().numpy()
        return [
            [Candidate(rank + 1, float(lat), float(lon), float(p))
             for rank, ((lat, lon), p) in enumerate(zip(coordinates[row], probabilities[row]))]
            for row in range(coordinates.shape[0])
        ]

    def answer(self, features: torch.Tensor, top_k: int, area: Area | None = None) -> list[list[Candidate]]:
        """Ranked candidates for each query vector in ``features`` (B, 512)."""
        return self._candidates(*self.rank(features, top_k, area))

    # ------------------------------------------------------------------------------ text queries

    def _load_text(self):
        with self._lock:
            if self._text is None:
                self._text = backbone.load_text_tower(self.clip_dir, self.device, self.dtype)
        return self._text

    @torch.inference_mode()
    def text_features(self, queries: list[str]) -> torch.Tensor:
        """CLIP's text feature stands in for the image feature and goes through the same head."""
        model, tokenizer = self._load_text()
        tokens = tokenizer(list(queries), padding=True, truncation=True, max_length=77, return_tensors="pt")
        embeds = model(**{k: v.to(self.device) for k, v in tokens.items()}).text_embeds
        return self.heads.image_features(embeds.float())

    def predict_text(self, queries: Iterable[str], top_k: int = 5, area: Area | None = None) -> list[PhotoResult]:
        queries = [q.strip() for q in queries]
        if not all(queries):
            raise GeoCLIPError("a text query is empty")
        self.load()
        self.check_top_k(top_k)
        features = self.text_features(queries)
        return [PhotoResult(f"text: {q}", ranked, feature=f.cpu().numpy())
                for q, ranked, f in zip(queries, self.answer(features, top_k, area), features)]

    # ------------------------------------------------------------------------------ fusion

    def fuse(self, results: Iterable[PhotoResult], top_k: int = 5, area: Area | None = None,
             label: str | None = None) -> PhotoResult:
        """One joint answer for photos from one place: the sum of their log-probabilities over the
        same candidates, renormalised. Since log p_i(x) = logit_i(x) - log Z_i, that is the softmax of
        the summed logits, i.e. of the summed query vectors; the fused result carries that sum."""
        members = [r for r in results if r.ok and r.feature is not None]
        if not members:
            raise GeoCLIPError("nothing to fuse: no photo was answered")
        total = torch.from_numpy(np.sum([r.feature for r in members], axis=0))
        ranked = self.answer(total[None], top_k, area)[0]
        return PhotoResult(label or f"fused: {len(members)} photos", ranked, feature=total.numpy())

    # ------------------------------------------------------------------------------ rasters

    def surface(self, world_cell: float = 0.25, local_cell: float = 0.01,
                progress: Progress | None = None) -> SurfaceEvaluator:
        """The raster evaluator; the world grid's features are computed once and cached."""
        key = (world_cell, local_cell)
        if key not in self._surfaces:
            rows, cols = world_shape(world_cell)

            def grid_progress(done, total):
                if progress:
                    progress(f"Encoding the {world_cell} deg world grid (first use only)", done, total)

            grid = cached_location_features(
                self.heads, features_key(self.heads_files, f"world-{world_cell}", "bf16"),
                lambda: grid_centres(-180.0, 90.0, world_cell, rows, cols),
                self.device, grid_progress, dtype=torch.bfloat16)
            self._surfaces[key] = SurfaceEvaluator(self.heads, grid, world_cell, local_cell,
                                                   dtype=self._grid_dtype())
        return self._surfaces[key]

    def _grid_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.float32 else torch.bfloat16

    @torch.inference_mode()
    def rasters(self, result: PhotoResult, area: Area | None = None, regions: int = 1,
                world_cell: float = 0.25, local_cell: float = 0.01) -> RasterSet:
        """World and local probability rasters for an answered photo, text query or fused set."""
        if result.feature is None:
            raise GeoCLIPError(f"no feature for {result.photo}: {result.error or 'not answered'}")
        evaluator = self.surface(world_cell, local_cell)
        query = torch.from_numpy(result.feature).to(self.device)
        gallery_logits = self.heads.logits(query[None], self.gallery.features)[0]
        top = torch.topk(gallery_logits, 16)
        coords = self.gallery.coordinates[top.indices].cpu().numpy()
        seeds = [(float(a), float(b), float(v)) for (a, b), v in zip(coords, top.values.cpu().numpy())]
        made = evaluator.surface(query, seeds, area, regions)
        metadata = {
            "GEOCLIP_QUERY": result.photo,
            "GEOCLIP_MODEL": self.model_name,
            "GEOCLIP_VALUES": "probability per cell: the model's density (softmax score per unit area) "
                              "integrated over each cell; the world raster's cells sum to 1",
            "GEOCLIP_WORLD_CELL_DEG": str(world_cell),
            "GEOCLIP_LOCAL_CELL_DEG": str(local_cell),
            "GEOCLIP_AREA": area.label if area else "whole world",
        }
        for raster in (made.world, *made.local):
            raster.metadata = {**metadata, "GEOCLIP_RASTER": raster.kind}
        return made

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= int(top_k) <= len(self.gallery):
            raise GeoCLIPError(f"top_k must be between 1 and {len(self.gallery)} (the gallery size), got {top_k}")

    # --------------------------------------------------------------------------------- prediction

    def _prepare(self, item, label: str, skip: Container[str], skip_geotagged: bool
                 ) -> _Prepared | PhotoError | PhotoResult:
        try:
            sha = None
            if isinstance(item, (str, os.PathLike)) and not isinstance(item, BadPath):
                check_file(Path(item))
                sha = photo_sha256(item)
                if sha in skip:
                    return PhotoResult(label, sha256=sha, skipped=SKIP_ANSWERED)
                if skip_geotagged or self.embeddings is not None:
                    metadata = read_photo_metadata(item)
                    if skip_geotagged and metadata.has_gps:
                        return PhotoResult(label, metadata=metadata, sha256=sha, skipped=SKIP_GEOTAGGED)
                    hit = self.embeddings.get_many(self.backbone_key, [sha]).get(sha) if self.embeddings else None
                    if hit is not None:  # known photo: no decoding
                        return _Prepared(None, metadata, sha, hit)
            photo = open_photo(item, label)
            if skip_geotagged and photo.metadata.has_gps:
                return PhotoResult(label, metadata=photo.metadata, sha256=sha, skipped=SKIP_GEOTAGGED)
            return _Prepared(self.preprocess(photo.image), photo.metadata, sha)
        except PhotoError as exc:
            return exc
        except Exception as exc:  # anything unforeseen in one photo stays with that photo
            return PhotoError(f"cannot prepare this photo: {type(exc).__name__}: {exc}")

    def _embeddings_of(self, prepared: list[_Prepared]) -> np.ndarray:
        """CLIP embeddings for a batch: from the cache where known, else from the vision tower."""
        todo = [p for p in prepared if p.embedding is None]
        if todo:
            fresh = self.clip_embeddings(np.stack([p.pixels for p in todo])).cpu().numpy()
            for p, embedding in zip(todo, fresh):
                p.embedding = embedding
            if self.embeddings is not None:
                self.embeddings.put_many(self.backbone_key, {p.sha256: p.embedding for p in todo if p.sha256})
        return np.stack([p.embedding for p in prepared])

    def _prepared_batches(self, photos: Iterable, skip: Container[str], skip_geotagged: bool
                          ) -> Iterator[list[tuple[str, "_Prepared | PhotoResult | PhotoError"]]]:
        """Batches of decoded photos with their CLIP embeddings filled in; decoding runs a batch ahead."""
        labelled = ((item, photo_label(item, n)) for n, item in enumerate(photos, 1))
        pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="geoclip-decode")
        pending: deque[tuple[str, Future]] = deque()

        def submit_until(limit: int) -> None:
            for item, label in itertools.islice(labelled, max(0, limit - len(pending))):
                pending.append((label, pool.submit(self._prepare, item, label, skip, skip_geotagged)))

        try:
            submit_until(2 * self.batch_size)
            while pending:
                batch = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
                submit_until(2 * self.batch_size)  # the next batch decodes while this one encodes
                prepared = [(label, future.result()) for label, future in batch]
                good = [p for _, p in prepared if isinstance(p, _Prepared)]
                if good:
                    self._embeddings_of(good)
                yield prepared
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def predict_iter(self, photos: Iterable, top_k: int = 5, area: Area | None = None,
                     skip: Container[str] = frozenset(), skip_geotagged: bool = False) -> Iterator[PhotoResult]:
        """Yield one :class:`PhotoResult` per photo, in input order, as batches finish.

        Photos whose content hash is in ``skip`` (answered in an earlier run), and with
        ``skip_geotagged`` photos that have EXIF GPS, come back with ``skipped`` set to the reason,
        without being encoded. Stopping the iteration (or closing the generator) stops
        the work within one batch.
        """
        self.load()
        self.check_top_k(top_k)
        batches = self._prepared_batches(photos, skip, skip_geotagged)
        try:
            for prepared in batches:
                good = [p for _, p in prepared if isinstance(p, _Prepared)]
                if good:
                    embeddings = torch.from_numpy(np.stack([p.embedding for p in good])).to(self.device)
                    features = self.heads.image_features(embeddings)
                    ranked = iter(self.answer(features, top_k, area))
                    vectors = iter(features.cpu().numpy())
                for label, p in prepared:
                    if isinstance(p, _Prepared):
                        yield PhotoResult(label, next(ranked), p.metadata, feature=next(vectors), sha256=p.sha256)
                    elif isinstance(p, PhotoResult):
                        yield p
                    else:
                        yield PhotoResult(label, error=str(p))
        finally:
            batches.close()

    def embed_iter(self, photos: Iterable) -> Iterator[tuple[str, np.ndarray | None, PhotoMetadata | None, str | None]]:
        """(photo, CLIP embedding (768,), metadata, error) per photo, in order: the frozen part of the
        model, for fine-tuning. Embeddings come from (and go to) the on-disk cache."""
        self.load()
        batches = self._prepared_batches(photos, frozenset(), False)
        try:
            for prepared in batches:
                for label, p in prepared:
                    if isinstance(p, _Prepared):
                        yield label, p.embedding, p.metadata, None
                    else:
                        yield label, None, None, str(p)
        finally:
            batches.close()

    def predict(self, photos: Iterable, top_k: int = 5, area: Area | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[PhotoResult]:
        """All results at once. ``photos``: paths or PIL images (a single one is accepted too)."""
        if isinstance(photos, (str, Path)) or hasattr(photos, "mode"):
            photos = [photos]
        photos = list(photos)
        results = []
        for result in self.predict_iter(photos, top_k, area):
            results.append(result)
            if progress:
                progress(len(results), len(photos))
        return results
