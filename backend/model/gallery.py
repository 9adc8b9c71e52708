"""The GPS gallery: candidate coordinates and their location features, computed once and cached.

The release re-encodes all 100K gallery points through the location encoder for every photo (about
12 s on a 2-core CPU). Here the features are computed once per (location-encoder weights, gallery)
pair, kept in memory for the process, and on disk in the user's cache folder as safetensors, keyed by
the sha256 of both files. On a CPU the cached file is memory-mapped rather than read: nothing is copied
at start, and its pages are shared with the page cache (and with other processes using it).
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..progress import ProgressCallback, ShouldStop, Stage, stop_check
from ..store.cache import cache_dir, private_folder, warn_once
from ..store.weights import sha256_file
from .heads import LOCATION_ENCODER_FILE, GeoCLIPHeads, HeadsFiles
from .safetensors_reader import read_exactly, safetensors_index

FEATURE_FORMAT = "v1"  # bump when the location encoder's arithmetic changes
CHUNK = 8192
ENCODING = "Encoding locations"
GALLERY_ENCODING = "Encoding the GPS gallery (first use only)"

_memory: dict[tuple[str, str], Gallery] = {}


@dataclass
class Gallery:
    """Points and their location features; the GPS gallery, or the cell centres of a raster grid."""

    coordinates: torch.Tensor  # (N, 2) lat, lon degrees, float32
    features: torch.Tensor  # (N, 512) unit-length location features (float32; bf16 for dense grids)
    key: str

    def __len__(self) -> int:
        return self.coordinates.shape[0]


def read_gallery_csv(path: Path) -> np.ndarray:
    """A CSV with LAT and LON columns (any order, any case) -> (N, 2) float32 degrees."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = [h.strip().upper() for h in next(csv.reader(handle))]
            lat_col, lon_col = header.index("LAT"), header.index("LON")
            table = np.loadtxt(handle, delimiter=",", usecols=(lat_col, lon_col), dtype=np.float64, ndmin=2)
    except (OSError, StopIteration, ValueError) as exc:
        raise WeightsError(f"cannot read GPS gallery {path} (needs LAT and LON columns): {exc}") from exc
    if table.size == 0:
        raise WeightsError(f"GPS gallery {path} is empty")
    if np.abs(table[:, 0]).max() > 90 or np.abs(table[:, 1]).max() > 180:
        raise WeightsError(f"GPS gallery {path} has coordinates outside -90..90 / -180..180")
    return table.astype(np.float32)


def features_key(files: HeadsFiles, *parts: str) -> str:
    """A cache key tied to the location encoder's weights (by checksum) and whatever else is named."""
    digest = hashlib.sha256()
    digest.update(FEATURE_FORMAT.encode())
    digest.update(sha256_file(files.weight_path(LOCATION_ENCODER_FILE)).encode())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:32]


def gallery_key(files: HeadsFiles) -> str:
    return features_key(files, "gallery", sha256_file(files.gallery_csv))


@torch.inference_mode()
def encode_locations(
    heads: GeoCLIPHeads,
    coordinates: torch.Tensor,
    progress: ProgressCallback | None = None,
    dtype: torch.dtype = torch.float32,
    fixed_batch: int | None = None,
    *,
    stage: str = ENCODING,
    unit: str = "places",
    should_stop: ShouldStop | None = None,
) -> torch.Tensor:
    """Unit-length location features for (N, 2) coordinates, in chunks to bound memory.

    ``progress`` hears ``stage`` counted in ``unit`` after each chunk; ``should_stop`` is asked before
    each chunk and stops the work with :class:`..errors.Cancelled` (nothing is returned).

    ``dtype`` bfloat16/float16 runs the MLPs under autocast (Fourier phases stay float32) and stores
    half-size features: for dense raster grids, where ~2x speed and half the memory matter more than
    the last 0.1 nat of a logit.

    ``fixed_batch``: every chunk goes through the model padded to exactly this many rows. Matrix
    products round differently for different batch sizes (visibly in bf16), so with a fixed batch a
    point's features do not depend on how many points were asked with it: what is written by tiles is
    the same whatever the tile size.
    """
    device = heads.logit_scale.device
    total = coordinates.shape[0]
    out = torch.empty(total, 512, dtype=dtype, device=device)
    autocast = dtype != torch.float32
    step = fixed_batch or CHUNK
    counter = Stage(progress, stage, total, unit)
    for start in range(0, total, step):
        stop_check(should_stop)
        chunk = coordinates[start : start + step].to(device)
        size = chunk.shape[0]
        if fixed_batch and size < fixed_batch:  # padded with copies of its first point, dropped after
            chunk = torch.cat([chunk, chunk[:1].expand(fixed_batch - size, chunk.shape[1])])
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out[start : start + size] = heads.location_features(chunk)[:size].to(dtype)
        counter.update(min(start + step, total))
    return out


def _cache_file(key: str) -> Path:
    return cache_dir() / "features" / f"{key}.safetensors"


# numpy has no bfloat16: its bits are mapped as int16 and viewed as bfloat16 by torch
_NUMPY_VIEW = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.int16,
    torch.float64: np.float64,
}


def _load_tensor(stored, device: torch.device) -> torch.Tensor:
    """One stored tensor: memory-mapped on a CPU (copy-on-write, so the file is never changed), read
    into memory elsewhere. Windows keeps a mapped file from being deleted, so it reads there too."""
    if device.type == "cpu" and os.name != "nt":
        mapped = np.memmap(stored.path, _NUMPY_VIEW[stored.dtype], mode="c", offset=stored.start, shape=stored.shape)
        return torch.from_numpy(mapped).view(stored.dtype)
    tensor = torch.empty(stored.shape, dtype=stored.dtype)
    with open(stored.path, "rb", buffering=0) as handle:
        read_exactly(handle, stored.start, tensor)
    return tensor.to(device)


def _read_disk_cache(path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        index = safetensors_index(path)
        coordinates, features = (_load_tensor(index[name], device) for name in ("coordinates", "features"))
    except (WeightsError, KeyError, OSError, ValueError, RuntimeError):
        return None  # a damaged cache is rebuilt, never trusted
    if coordinates.ndim != 2 or coordinates.shape[1] != 2 or features.shape[0] != coordinates.shape[0]:
        return None
    return coordinates, features


def _write_disk_cache(path: Path, coordinates: torch.Tensor, features: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tmp = None
    try:
        private_folder(path.parent)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")  # created 0600
        os.close(handle)
        save_file({"coordinates": coordinates.cpu().contiguous(), "features": features.cpu().contiguous()}, tmp)
        os.replace(tmp, path)  # readers see the whole file or none of it
    except Exception as exc:  # read-only or full cache folder: only costs recomputation next time
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        warn_once(
            "features",
            f"cannot keep location features in the cache folder {path.parent} ({exc}); "
            "they are computed again next time",
        )


def cached_location_features(
    heads: GeoCLIPHeads,
    key: str,
    make_coordinates: Callable[[], np.ndarray],
    device: torch.device,
    progress: ProgressCallback | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    stage: str = ENCODING,
    unit: str = "places",
    should_stop: ShouldStop | None = None,
) -> Gallery:
    """Coordinates and their features under ``key``: from memory, else disk, else computed (``progress``
    hears ``stage``; a stop on request keeps nothing) and saved."""
    cached = _memory.get((key, str(device)))
    if cached is not None:
        return cached
    on_disk = _read_disk_cache(_cache_file(key), device)
    if on_disk is not None:
        coordinates, features = on_disk
    else:
        coordinates = torch.from_numpy(make_coordinates()).to(device)
        features = encode_locations(
            heads, coordinates, progress, dtype, stage=stage, unit=unit, should_stop=should_stop
        )
        _write_disk_cache(_cache_file(key), coordinates, features)
    result = Gallery(coordinates, features, key)
    _memory[(key, str(device))] = result
    return result


def load_gallery(
    heads: GeoCLIPHeads,
    files: HeadsFiles,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> Gallery:
    return cached_location_features(
        heads,
        gallery_key(files),
        lambda: read_gallery_csv(files.gallery_csv),
        device,
        progress,
        stage=GALLERY_ENCODING,
        should_stop=should_stop,
    )
