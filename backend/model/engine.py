"""The GeoCLIP engine: inference only. Photos (or text) in, ranked GPS candidates with probabilities
out, and the probability rasters, areas of interest and fusion built on the same query vectors.

An engine is built by :func:`.factory.build_engine` (weights, device, precision, batch size). Photos
reach it through :mod:`..photos.decoding` (checked, hashed, decoded ahead by a pool of workers, cached embeddings
looked up); the gallery's location features are computed once and cached (:mod:`.gallery`). Per new
photo the work left is the CLIP vision tower, a small MLP and one matrix product. On a GPU the next
batch is on its way while the current one computes (:class:`.device.Staging`); out of memory halves
the batch, and a GPU that fails goes on on the CPU with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import GeoCLIPError
from ..photos.area import Area
from ..photos.decoding import PhotoPreparer, Prepared, choose_decode_workers, prepared_batches
from ..photos.loader import Preprocessing
from ..progress import ProgressCallback, ShouldStop, Stage, report_step
from ..results import AnswerKind, Candidate, Hint, PhotoMetadata, PhotoResult
from ..store.embedding_cache import EmbeddingCache, backbone_key
from ..store.weights import ModelFiles, sha256_file
from . import backbone, distinct_places
from .device import PRECISION_NAMES, HalvingBatches, Staging, choose_dtype, is_device_failure
from .gallery import Gallery, cached_location_features, features_key, load_gallery
from .heads import load_heads
from .place_options import GALLERY_POINTS, PlaceOptions
from .rasters import RasterSet, SurfaceEvaluator, grid_centres, world_shape

LOG = logging.getLogger("geoclip_qgis")


class Engine:
    """GeoCLIP inference on one device. Build once (:func:`.factory.build_engine`), reuse for many
    calls: the model stays loaded."""

    def __init__(
        self,
        files: ModelFiles,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int,
        embeddings: EmbeddingCache | None = None,
        decode_workers: int | None = None,
        preprocessing: Preprocessing = Preprocessing.ENGINE,
    ):
        self.files = files
        self.preprocessing = preprocessing  # how photos are decoded (the engine's way or the release's)
        self.heads_files, self.clip_dir = files.heads, files.clip_dir
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.decode_workers = decode_workers  # None: chosen for the device (decoding.choose_decode_workers)
        self._tower_batches = HalvingBatches(device=device)  # photos per forward pass, halved on out-of-memory
        self._staging = Staging(device)
        self.heads = load_heads(self.heads_files).to(self.device)
        self.embeddings = embeddings
        self.backbone_key = self._backbone_key()
        self._vision = None
        self._processor = None
        self._text = None
        self._gallery: Gallery | None = None
        self._gallery_unit: torch.Tensor | None = None  # the gallery on the unit sphere, for grouping places
        self._hints: dict[str, torch.Tensor] = {}  # a hint's text feature, encoded once per run
        self._surfaces: dict[tuple[float, float], SurfaceEvaluator] = {}
        self._area_cache: tuple[Area | None, torch.Tensor | None] = (None, None)
        self._lock = threading.Lock()
        self._weights_key: str | None = None

    # ------------------------------------------------------------------------------------ loading

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.dtype]

    @property
    def weights_key(self) -> str:
        """Identifies the weights answers come from (heads files, gallery, backbone, precision): runs into
        one GeoPackage resume only when it is the same."""
        if self._weights_key is None:
            digest = hashlib.sha256(self.backbone_key.encode())
            for path in sorted(self.heads_files.weights_dir.glob("*.pth")) + [self.heads_files.gallery_csv]:
                digest.update(sha256_file(path).encode())
            self._weights_key = digest.hexdigest()[:24]
        return self._weights_key

    @property
    def model_name(self) -> str:
        """A short, human-readable name of the weights in use, stored with every result."""
        backbone_name = self.clip_dir.name if self.clip_dir is not None else "no CLIP"
        shown = f"GeoCLIP {self.files.heads_name} heads + {backbone_name} ({self.precision})"
        return shown + (", release preprocessing" if self.preprocessing is Preprocessing.RELEASE else "")

    def _backbone_key(self) -> str:
        if self.clip_dir is None:
            return "no backbone"
        return backbone_key(self.clip_dir, self.precision, self.preprocessing.pixels_name)

    def _require_backbone(self) -> None:
        if self.clip_dir is None:
            raise GeoCLIPError(
                "this engine was built with GeoCLIP's heads only (no CLIP backbone): it judges stored answers "
                "but cannot read photos or text"
            )

    def load(self, progress: ProgressCallback | None = None, should_stop: ShouldStop | None = None) -> Engine:
        """Load what image work needs: vision tower, preprocessing, gallery features. Idempotent. A GPU
        that fails here (out of memory, a kernel it cannot run) leaves the engine on the CPU. The
        gallery's first encoding stops with :class:`..errors.Cancelled` when ``should_stop`` says so."""
        try:
            self._load(progress, should_stop)
        except Exception as exc:
            self._fall_back_to_cpu(exc)
            self._load(progress, should_stop)
        return self

    def _load(self, progress: ProgressCallback | None, should_stop: ShouldStop | None) -> None:
        self._require_backbone()
        with self._lock:
            if self._processor is None:
                self._processor = backbone.load_image_processor(self.clip_dir)
            if self._vision is None:
                report_step(progress, "Loading the CLIP vision tower")
                self._vision = backbone.load_vision_tower(self.clip_dir, self.device, self.dtype)
        self.load_gallery(progress, should_stop)

    @property
    def effective_decode_workers(self) -> int:
        """Photo preparation workers used now: the number asked for, or the choice for the device."""
        return self.decode_workers or choose_decode_workers(self.device.type)

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        """Go on on the CPU after a GPU failure, saying so; re-raise anything else.

        Everything on the device is loaded again from files and caches (a failed CUDA context cannot
        hand its tensors back). Half precision the CPU has no fast path for becomes fp32."""
        if self.device.type == "cpu" or not is_device_failure(exc):
            raise exc
        failed = self.device
        cpu = torch.device("cpu")
        self.dtype = self.dtype if self.dtype == choose_dtype(cpu) else torch.float32
        LOG.warning(
            "%s failed (%s: %s); going on on the CPU in %s, which is much slower",
            failed,
            type(exc).__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "no message",
            self.precision,
        )
        with self._lock:
            self.device = cpu
            self.backbone_key = self._backbone_key()
            self.heads = load_heads(self.heads_files)
            self._vision = self._text = self._gallery = self._gallery_unit = None
            self._hints = {}
            self._surfaces, self._area_cache = {}, (None, None)
            self._tower_batches = HalvingBatches(device=cpu)
            self._staging = Staging(cpu)

    def load_gallery(self, progress: ProgressCallback | None = None, should_stop: ShouldStop | None = None) -> Gallery:
        """The GPS gallery and its location features (encoded once, then read from the disk cache)."""
        if self._gallery is not None:
            return self._gallery
        with self._lock:
            if self._gallery is None:
                report_step(progress, "Loading the GPS gallery")
                self._gallery = load_gallery(self.heads, self.heads_files, self.device, progress, should_stop)
        return self._gallery

    @property
    def gallery(self) -> Gallery:
        return self.load_gallery()

    # --------------------------------------------------------------------------------- arithmetic

    def preprocess(self, image) -> np.ndarray:
        """An upright RGB PIL image -> (3, 224, 224) float32 pixels as the checkpoint expects."""
        if self._processor is None:
            self.load()
        return self._processor(image)

    @torch.inference_mode()
    def clip_embeddings(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, 768) CLIP projected image embeddings (fp32): the frozen part.

        On a GPU the result may still be computing when this returns (reading it waits); batches that
        do not fit are split (:class:`.device.HalvingBatches`), and a failing GPU hands over to the CPU."""
        if self._vision is None:
            self.load()
        while True:
            try:
                batch = self._staging.upload(torch.as_tensor(pixels))
                return self._tower_batches(self._tower, batch)
            except Exception as exc:
                self._fall_back_to_cpu(exc)
                self.load()

    def _tower(self, batch: torch.Tensor) -> torch.Tensor:
        return self._vision(batch.to(self.dtype)).float()

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
    def rank(
        self, features: torch.Tensor, top_k: int, area: Area | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Softmax over the gallery -> (B, k) candidate indices and probabilities, best first, and the
        whole softmax (B, N) they come from.

        ``features`` are query vectors: unit image/text features, or a sum of them (fusion). With an
        area, places outside it are dropped and the probabilities renormalised over those inside.
        """
        gallery = self.gallery
        logits = self.heads.logits(features.to(self.device, torch.float32), gallery.features)
        inside = self._area_mask(area)
        if inside is not None:
            logits = logits.masked_fill(~inside, float("-inf"))
            top_k = min(top_k, int(inside.sum()))
        probabilities = logits.softmax(dim=-1)
        top = torch.topk(probabilities, top_k, dim=-1)
        return top.indices, top.values, probabilities

    def _candidates(self, indices: torch.Tensor, probabilities: torch.Tensor) -> list[list[Candidate]]:
        coordinates = self.gallery.coordinates[indices].cpu().numpy()
        probabilities = probabilities.cpu().numpy()
        return [
            [
                Candidate(rank + 1, float(lat), float(lon), float(p), gallery_lat=float(lat), gallery_lon=float(lon))
                for rank, ((lat, lon), p) in enumerate(zip(coordinates[row], probabilities[row]))
            ]
            for row in range(coordinates.shape[0])
        ]

    def answer(
        self, features: torch.Tensor, top_k: int, area: Area | None = None, places: PlaceOptions = GALLERY_POINTS
    ) -> list[list[Candidate]]:
        """Ranked candidates for each query vector in ``features`` (B, 512): the gallery's top-k points,
        or with ``places`` distinct places."""
        return self._answers(features, top_k, area, places=places)[0]

    def _answers(
        self,
        features: torch.Tensor,
        top_k: int,
        area: Area | None,
        keep: bool = False,
        places: PlaceOptions = GALLERY_POINTS,
    ) -> tuple[list[list[Candidate]], list[np.ndarray | None]]:
        """Ranked candidates for each query vector and, with ``keep``, each one's whole gallery softmax."""
        indices, values, probabilities = self.rank(features, top_k, area)
        rows = list(probabilities.cpu().numpy()) if keep else [None] * len(indices)
        if not places.distinct:
            return self._candidates(indices, values), rows
        queries = features.to(self.device, torch.float32)
        return [self.places(probabilities[i], queries[i], top_k, area, places) for i in range(len(queries))], rows

    def places(
        self, probabilities: torch.Tensor, query: torch.Tensor, top_k: int, area: Area | None, options: PlaceOptions
    ) -> list[Candidate]:
        """One answer's ``top_k`` distinct places (:mod:`.distinct_places`)."""
        if self._gallery_unit is None:
            self._gallery_unit = distinct_places.unit_vectors(self.gallery.coordinates)
        return distinct_places.answer_places(
            self.heads, self.gallery.coordinates, self._gallery_unit, probabilities, query, top_k, area, options
        )

    # ------------------------------------------------------------------------------ hints

    @torch.inference_mode()
    def hinted(self, features: torch.Tensor, hint: Hint | None) -> torch.Tensor:
        """Query vectors steered by a text hint: the photo's distribution times the hint's to the power
        ``hint.weight``. Both are softmaxes of ``exp(logit_scale) * q . f``, so that product is the softmax
        of the summed logits, i.e. of ``q_photo + weight * q_hint``."""
        if hint is None or not hint.weight:
            return features
        if hint.text not in self._hints:
            self._hints = {hint.text: self.text_features([hint.text])[0]}
        return features + hint.weight * self._hints[hint.text].to(features.device, features.dtype)

    # ------------------------------------------------------------------------------ text queries

    def _load_text(self):
        self._require_backbone()
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

    def predict_text(
        self,
        queries: Iterable[str],
        top_k: int = 5,
        area: Area | None = None,
        places: PlaceOptions = GALLERY_POINTS,
    ) -> list[PhotoResult]:
        queries = [q.strip() for q in queries]
        if not all(queries):
            raise GeoCLIPError("a text query is empty")
        self.load()
        self.check_top_k(top_k)
        features = self.text_features(queries)
        ranked, rows = self._answers(features, top_k, area, keep=True, places=places)  # each keeps its softmax
        return [
            PhotoResult(f"text: {q}", candidates, feature=f.cpu().numpy(), kind=AnswerKind.TEXT, probabilities=row)
            for q, candidates, f, row in zip(queries, ranked, features, rows)
        ]

    # ------------------------------------------------------------------------------ fusion

    def fuse(
        self,
        results: Iterable[PhotoResult],
        top_k: int = 5,
        area: Area | None = None,
        label: str | None = None,
        places: PlaceOptions = GALLERY_POINTS,
    ) -> PhotoResult:
        """One joint answer for photos from one place: the sum of their log-probabilities over the
        same candidates, renormalised. Since log p_i(x) = logit_i(x) - log Z_i, that is the softmax of
        the summed logits, i.e. of the summed query vectors; the fused result carries that sum. A hint the
        photos share counts once, as it does for one photo."""
        members = [r for r in results if r.ok and r.feature is not None]
        if not members:
            raise GeoCLIPError("nothing to fuse: no photo was answered")
        total = torch.from_numpy(np.sum([r.feature for r in members], axis=0))
        hints = {r.hint for r in members}
        hint = hints.pop() if len(hints) == 1 else None
        if hint is not None and len(members) > 1:
            total = total - (len(members) - 1) * (self.hinted(torch.zeros_like(total)[None], hint)[0].cpu())
        ranked, rows = self._answers(total[None], top_k, area, keep=True, places=places)
        label = label or f"fused: {len(members)} photos"
        return PhotoResult(
            label, ranked[0], feature=total.numpy(), kind=AnswerKind.FUSED, probabilities=rows[0], hint=hint
        )

    # ------------------------------------------------------------------------------ rasters

    def surface(
        self,
        world_cell: float = 0.25,
        local_cell: float = 0.01,
        progress: ProgressCallback | None = None,
        should_stop: ShouldStop | None = None,
    ) -> SurfaceEvaluator:
        """The raster evaluator; the world grid's features are computed once (stoppable) and cached."""
        key = (world_cell, local_cell)
        if key not in self._surfaces:
            rows, cols = world_shape(world_cell)
            dtype = self._grid_dtype()  # fp32 answers get an fp32 grid; else bf16, half the memory
            grid = cached_location_features(
                self.heads,
                features_key(self.heads_files, f"world-{world_cell}", PRECISION_NAMES[dtype]),
                lambda: grid_centres(-180.0, 90.0, world_cell, rows, cols),
                self.device,
                progress,
                dtype,
                stage="Preparing probability rasters (first use only)",
                unit="cells",
                should_stop=should_stop,
            )
            self._surfaces[key] = SurfaceEvaluator(self.heads, grid, world_cell, local_cell, dtype=dtype)
        return self._surfaces[key]

    def _grid_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.float32 else torch.bfloat16

    @torch.inference_mode()
    def rasters(
        self,
        result: PhotoResult,
        area: Area | None = None,
        regions: int = 1,
        world_cell: float = 0.25,
        local_cell: float = 0.01,
        progress: ProgressCallback | None = None,
        should_stop: ShouldStop | None = None,
    ) -> RasterSet:
        """World and local probability rasters for an answered photo, text query or fused set. The first
        call encodes the gallery and the world grid (minutes on a CPU; cached on disk), with ``progress``,
        stopping with :class:`..errors.Cancelled` when ``should_stop`` says so."""
        if result.feature is None:
            raise GeoCLIPError(f"no feature for {result.photo}: {result.error or 'not answered'}")
        self.load_gallery(progress, should_stop)
        evaluator = self.surface(world_cell, local_cell, progress, should_stop)
        query = torch.from_numpy(result.feature).to(self.device)
        # the answer's best candidate (ranked inside the area) gets a local raster; an answer that carries
        # its candidates is not scored against the gallery again
        best = result.candidates[0] if result.candidates else self.answer(query[None], 1, area)[0][0]
        return evaluator.surface(query, [(best.lat, best.lon, best.probability)], area, regions)

    def density(
        self,
        result: PhotoResult,
        made: RasterSet,
        area: Area | None = None,
        world_cell: float = 0.25,
        local_cell: float = 0.01,
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The answer's probability per km² at (P, 2) lat, lon: the model itself, normalised as ``made``
        (its rasters) is, 0 outside the area."""
        query = torch.from_numpy(result.feature).to(self.device)
        return self.surface(world_cell, local_cell).density(query, made.log_total, area)

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= int(top_k) <= len(self.gallery):
            raise GeoCLIPError(f"top_k must be between 1 and {len(self.gallery)} (the gallery size), got {top_k}")

    # --------------------------------------------------------------------------------- prediction

    def _preparer(self, skip: Container[str] = frozenset(), skip_geotagged: bool = False) -> PhotoPreparer:
        return PhotoPreparer(
            self.preprocess, self.embeddings, self.backbone_key, skip, skip_geotagged, self.preprocessing
        )

    def _encoded_batches(self, photos: Iterable, preparer: PhotoPreparer) -> Iterator[list[tuple[str, object]]]:
        """Prepared batches with every photo's CLIP embedding filled in (cache first, then the tower).

        On CUDA one batch more is in flight: batch k+1 is copied and launched before batch k's
        embeddings are awaited and handed on, so the GPU computes while the caller ranks and writes."""
        batches = prepared_batches(photos, preparer, self.batch_size, self.effective_decode_workers)
        in_flight: deque[tuple[list, list[Prepared], Callable[[], np.ndarray] | None]] = deque()
        try:
            for prepared in batches:
                todo = [p for _, p in prepared if isinstance(p, Prepared) and p.embedding is None]
                pending = None
                if todo:
                    fresh = self.clip_embeddings(self._staging.gather([p.pixels for p in todo]))
                    pending = self._staging.download(fresh)
                in_flight.append((prepared, todo, pending))
                while len(in_flight) > self._staging.ahead:
                    yield self._settle(*in_flight.popleft())
            while in_flight:
                yield self._settle(*in_flight.popleft())
        finally:
            batches.close()

    def _settle(self, prepared: list, todo: list[Prepared], pending: Callable[[], np.ndarray] | None) -> list:
        """Wait for a batch's embeddings, keep them with its photos and in the cache."""
        if pending is None:
            return prepared
        try:
            fresh = pending()
        except Exception as exc:  # an asynchronous GPU failure surfaces here: encode the batch again
            if self.device.type != "cpu" or not is_device_failure(exc):  # else: launched before an earlier fallback
                self._fall_back_to_cpu(exc)
            fresh = self.clip_embeddings(np.stack([p.pixels for p in todo])).cpu().numpy()
        for p, embedding in zip(todo, fresh):
            p.embedding, p.pixels = embedding.copy(), None
        if self.embeddings is not None:
            self.embeddings.put_many(self.backbone_key, {p.sha256: p.embedding for p in todo if p.sha256})
        return prepared

    def predict_iter(
        self,
        photos: Iterable,
        top_k: int = 5,
        area: Area | None = None,
        skip: Container[str] = frozenset(),
        skip_geotagged: bool = False,
        keep_probabilities: bool = False,
        places: PlaceOptions = GALLERY_POINTS,
        hint: Hint | None = None,
    ) -> Iterator[PhotoResult]:
        """Yield one :class:`PhotoResult` per photo, in input order, as batches finish.

        Photos whose content hash is in ``skip`` (answered in an earlier run), and with
        ``skip_geotagged`` photos that have EXIF GPS, come back with ``skipped`` set to the reason,
        without being encoded. Stopping the iteration (or closing the generator) stops
        the work within one batch. ``keep_probabilities``: each result carries the gallery softmax it
        was ranked from (400 KB for the 100K gallery), for a caller that sums it by region. ``places``: the
        gallery's top-k points (the release's answer) or distinct places; ``hint``: text that steers every
        photo's answer (:meth:`hinted`).
        """
        self.load()
        self.check_top_k(top_k)
        batches = self._encoded_batches(photos, self._preparer(skip, skip_geotagged))
        try:
            for prepared in batches:
                good = [p for _, p in prepared if isinstance(p, Prepared)]
                if good:
                    embeddings = torch.from_numpy(np.stack([p.embedding for p in good])).to(self.device)
                    features = self.hinted(self.heads.image_features(embeddings), hint)
                    ranked, rows = self._answers(features, top_k, area, keep_probabilities, places)
                    ranked, rows, vectors = iter(ranked), iter(rows), iter(features.cpu().numpy())
                for label, p in prepared:
                    if isinstance(p, Prepared):
                        yield PhotoResult(
                            label,
                            next(ranked),
                            p.metadata,
                            feature=next(vectors),
                            sha256=p.sha256,
                            probabilities=next(rows),
                            hint=hint,
                        )
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
        batches = self._encoded_batches(photos, self._preparer())
        try:
            for prepared in batches:
                for label, p in prepared:
                    if isinstance(p, Prepared):
                        yield label, p.embedding, p.metadata, None
                    else:
                        yield label, None, None, str(p)
        finally:
            batches.close()

    def predict(
        self,
        photos: Iterable,
        top_k: int = 5,
        area: Area | None = None,
        progress: ProgressCallback | None = None,
        places: PlaceOptions = GALLERY_POINTS,
    ) -> list[PhotoResult]:
        """All results at once. ``photos``: paths or PIL images (a single one is accepted too)."""
        if isinstance(photos, (str, Path)) or hasattr(photos, "mode"):
            photos = [photos]
        photos = list(photos)
        stage = Stage(progress, "Answering photos", len(photos), "photos") if progress else None
        results = []
        for result in self.predict_iter(photos, top_k, area, places=places):
            results.append(result)
            if stage:
                stage.advance()
        return results

    @torch.inference_mode()
    def gallery_probabilities(self, feature: np.ndarray, area: Area | None = None) -> np.ndarray:
        """The whole softmax over the gallery for one query vector (N,), in gallery order: the
        probability of every place, for summing over regions. With an area, places outside get 0.
        The same numbers :meth:`rank` ranks from (an answer read back from a file is scored again)."""
        query = torch.from_numpy(np.asarray(feature, dtype=np.float32)).to(self.device)
        return self.rank(query[None], 1, area)[2][0].cpu().numpy().astype(np.float64)
