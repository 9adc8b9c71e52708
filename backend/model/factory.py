"""Building an engine: weights found (:mod:`..store.weights`), device and precision chosen (:mod:`.device`),
batch size set, embedding cache opened. The engine itself only does inference.

    from geoclip_qgis.backend.model.factory import build_engine
    engine = build_engine(clip="~/models/clip-vit-large-patch14", device="auto")
"""

from __future__ import annotations

import os

from ..errors import GeoCLIPError
from .device import choose_device, choose_dtype, default_batch_size


def build_engine(
    heads: str | os.PathLike | None = None,
    clip: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    embedding_cache: bool = True,
    decode_workers: int | None = None,
    backbone: bool = True,
    preprocessing: str = "engine",
):
    """An :class:`.engine.Engine` for these choices; nothing heavy is loaded until it is first used.

    ``heads``/``clip``: folders, or None for the lookup order of :mod:`..store.weights`. ``batch_size``: photos
    per batch (None: 8 on a CPU, by free memory on a GPU). ``embedding_cache``: read and write CLIP
    embeddings of photos on disk by content hash. ``decode_workers``: threads preparing photos (None:
    one per core feeding a GPU, one per 16 cores on a CPU; :func:`..photos.decoding.choose_decode_workers`).
    ``backbone=False``: GeoCLIP's heads and gallery only, no CLIP sought or loaded; such an engine judges
    stored query vectors (probabilities, rasters) and refuses photos and text. ``preprocessing``:
    "engine" (photos upright, transparency on white, large JPEGs decoded reduced) or "release" (decoded as
    the official ``GeoCLIP.predict()`` does; :class:`.photos.Preprocessing`).
    """
    from ..photos.loader import Preprocessing
    from ..store.embedding_cache import EmbeddingCache
    from ..store.weights import resolve_model_files
    from .engine import Engine

    if batch_size is not None and int(batch_size) < 1:
        raise GeoCLIPError(f"batch size must be 1 or more, got {batch_size}")
    if decode_workers is not None and int(decode_workers) < 1:
        raise GeoCLIPError(f"decode workers must be 1 or more, got {decode_workers}")
    chosen_preprocessing = Preprocessing.parse(preprocessing)
    files = resolve_model_files(heads, clip, backbone)
    chosen = choose_device(device)
    dtype = choose_dtype(chosen, precision)
    batch = int(batch_size) if batch_size else default_batch_size(chosen, dtype)
    cache = EmbeddingCache() if embedding_cache else None
    workers = int(decode_workers) if decode_workers is not None else None
    return Engine(files, chosen, dtype, batch, cache, decode_workers=workers, preprocessing=chosen_preprocessing)
