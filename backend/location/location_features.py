"""GeoCLIP's location encoder as a feature source: positions in, unit-length 512-d features out.

The location encoder maps any (lat, lon) to a 512-d feature. Every vector this module returns is
**unit-normalised, as in the model** (``GeoCLIPHeads.location_features``): the dot product of two
vectors is their cosine similarity, the quantity GeoCLIP's scores are made of.

One place, one vector: the model reads longitude through the Equal Earth projection, where lon 180 and
lon -180 are the two edges of the map and a pole is a line, so fed raw it gives the same place several
vectors. Here longitudes are wrapped into [-180, 180) and a pole is encoded at longitude 0. The model's
features still change sharply across the antimeridian (179.99 and -179.99 are far apart for it).

Here too: the heads loaded for this work (:class:`LocationModel`), the precision for dense grids, a
principal-component basis of features (:func:`fit_pca`), the error of the location tools, and the
small output-file helpers that :mod:`.point_embeddings` and :mod:`.embedding_maps` share (write under
a ``.partial`` name, delete a dataset and its side files, EPSG:4326). Nothing here imports Qt or QGIS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GeoCLIPError
from ..model.device import PRECISIONS, choose_device, choose_dtype
from ..model.gallery import CHUNK, ENCODING, encode_locations
from ..model.heads import GeoCLIPHeads, HeadsFiles, load_heads
from ..progress import ProgressCallback, ShouldStop, Stage, stop_check
from ..store.weights import find_heads, gallery_csv

FEATURE_DIM = 512
PCA_SAMPLE = 20_000  # cells (or points) the principal components are fitted on
PCA_SEED = 0


class LocationError(GeoCLIPError):
    """Bad positions, extents, files or options for the location tools."""


# ------------------------------------------------------------------------------------------ positions


def canonical_lat_lon(lat_lon) -> np.ndarray:
    """(N, 2) lat, lon degrees, checked, longitudes wrapped into [-180, 180), poles at longitude 0."""
    points = np.array(lat_lon, dtype=np.float64, ndmin=2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise LocationError(f"positions must be (N, 2) latitude, longitude pairs, got shape {points.shape}")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise LocationError(f"position {int(np.flatnonzero(bad)[0])} is not a number: {points[bad][0].tolist()}")
    outside = np.abs(points[:, 0]) > 90
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise LocationError(f"position {index}: latitude {points[index, 0]} is outside -90..90")
    points[:, 1] = (points[:, 1] + 180.0) % 360.0 - 180.0
    points[np.abs(points[:, 0]) == 90, 1] = 0.0
    return points


@torch.inference_mode()
def encode_points(
    heads: GeoCLIPHeads,
    lat_lon,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """GeoCLIP location features for (N, 2) lat, lon degrees -> (N, 512) float32, unit length.

    The vectors are unit-normalised exactly as the model does (``GeoCLIPHeads.location_features``).
    Points are encoded in chunks of :data:`..model.gallery.CHUNK` on ``device`` (default: where the heads are),
    so working memory beyond the (N, 512) result stays bounded; ``progress`` hears each chunk and
    ``should_stop`` is asked before each (:class:`..errors.Cancelled`: the caller writes nothing).
    ``dtype`` bfloat16/float16 runs the MLPs in half precision (Fourier phases stay float32); the
    default float32 gives the model's own numbers.
    """
    points = canonical_lat_lon(lat_lon)
    on = heads.logit_scale.device
    if device is not None:
        asked = torch.device(device)
        if asked.type != on.type or (asked.index is not None and on.index is not None and asked.index != on.index):
            raise LocationError(f"the heads are on {on}, not on {asked}: move them with heads.to(device)")
    total = points.shape[0]
    out = np.empty((total, FEATURE_DIM), dtype=np.float32)
    coordinates = torch.from_numpy(points.astype(np.float32))
    stage = Stage(progress, ENCODING, total, "points")
    for start in range(0, total, CHUNK):
        stop_check(should_stop)
        chunk = coordinates[start : start + CHUNK]
        out[start : start + chunk.shape[0]] = encode_locations(heads, chunk, dtype=dtype).float().cpu().numpy()
        stage.update(start + chunk.shape[0])
    return out


# ------------------------------------------------------------------------------------------ the model


@dataclass
class LocationModel:
    """GeoCLIP's heads on one device, with the files they came from (for cache keys and the gallery)."""

    heads: GeoCLIPHeads
    files: HeadsFiles
    device: torch.device
    label: str = "GeoCLIP heads"

    def encode(
        self,
        lat_lon,
        progress: ProgressCallback | None = None,
        should_stop: ShouldStop | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        return encode_points(self.heads, lat_lon, self.device, progress, should_stop, dtype)


def load_location_model(heads: str | os.PathLike | None = None, device: str = "auto") -> LocationModel:
    """The heads found as :mod:`..store.weights` describes (``heads`` folder first), loaded on ``device``.

    Only GeoCLIP's heads are needed here; the CLIP backbone is not loaded.
    """
    lookup = find_heads(heads)
    folder = lookup.require()
    files = HeadsFiles(folder, gallery_csv(folder))
    target = choose_device(device)
    name = "release" if lookup.source == "geoclip wheel" else folder.name
    return LocationModel(load_heads(files).to(target), files, target, f"GeoCLIP {name} heads (location encoder)")


def grid_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Precision for dense grids: as the rasters do, float32 where the device has no fast half type."""
    precision = (precision or "auto").strip().lower()
    if precision != "auto" and precision not in PRECISIONS:
        raise LocationError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    chosen = choose_dtype(device, precision)
    if precision == "auto":
        return torch.float32 if chosen == torch.float32 else torch.bfloat16
    return chosen


# ------------------------------------------------------------------------------------------------ PCA


@dataclass
class PrincipalComponents:
    """A PCA basis of location features: ``project(x) = (x - mean) @ components.T``.

    Signs are fixed so that each component's largest loading is positive, so the same data give the
    same components on every machine.
    """

    mean: np.ndarray  # (512,)
    components: np.ndarray  # (k, 512), orthonormal rows
    explained_variance_ratio: np.ndarray  # (k,)
    fitted_on: int  # vectors used

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return ((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def project_torch(self, vectors: torch.Tensor) -> torch.Tensor:
        mean = torch.from_numpy(self.mean).to(vectors.device)
        components = torch.from_numpy(self.components).to(vectors.device)
        return (vectors.float() - mean) @ components.T


def fit_pca(
    vectors: np.ndarray, n_components: int, max_rows: int | None = None, seed: int = PCA_SEED
) -> PrincipalComponents:
    """Principal components of ``vectors`` (N, D) by SVD of the centred data (a seeded sample of
    ``max_rows`` rows when there are more)."""
    data = np.asarray(vectors, dtype=np.float64)
    if max_rows is not None and data.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(data.shape[0], max_rows, replace=False))
        data = data[rows]
    if not 1 <= n_components <= min(data.shape[1], max(data.shape[0] - 1, 1)):
        raise LocationError(
            f"{n_components} principal components need more than {n_components} points "
            f"(have {data.shape[0]}) and at most {data.shape[1]} components"
        )
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    components = vt[:n_components]
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(n_components), largest])[:, None]
    variance = singular**2
    ratio = variance[:n_components] / variance.sum() if variance.sum() > 0 else np.zeros(n_components)
    return PrincipalComponents(mean.astype(np.float32), components.astype(np.float32), ratio, data.shape[0])


# ------------------------------------------------------------------------------------- output files


def partial_path(path: Path) -> Path:
    """Where a file is written before it is complete: same folder and extension, so GDAL picks the
    same driver; renamed over ``path`` only when finished."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def delete_dataset(path: Path) -> None:
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"), Path(f"{path}.aux.xml")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass
