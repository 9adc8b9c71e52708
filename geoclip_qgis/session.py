"""Settings the user chose in the plugin, and the engine kept loaded for the QGIS session."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from qgis.core import QgsSettings

PREFIX = "geoclip_qgis/"
_engines: dict = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class EngineSettings:
    heads: str = ""  # empty: the engine's own lookup order
    clip: str = ""
    device: str = "auto"
    precision: str = "auto"
    embedding_cache: bool = True  # keep photos' CLIP embeddings on disk (faster reruns)


def load_settings() -> EngineSettings:
    settings = QgsSettings()
    return EngineSettings(
        heads=settings.value(PREFIX + "heads", "", type=str),
        clip=settings.value(PREFIX + "clip", "", type=str),
        device=settings.value(PREFIX + "device", "auto", type=str),
        precision=settings.value(PREFIX + "precision", "auto", type=str),
        embedding_cache=settings.value(PREFIX + "embedding_cache", True, type=bool),
    )


def save_settings(choice: EngineSettings) -> None:
    settings = QgsSettings()
    for key in ("heads", "clip", "device", "precision", "embedding_cache"):
        settings.setValue(PREFIX + key, getattr(choice, key))


def get_engine(choice: EngineSettings):
    """The engine for these settings, built once per QGIS session and kept (safe from task threads);
    it loads its model on first use."""
    with _lock:
        engine = _engines.get(choice)
        if engine is None:
            from .backend.factory import build_engine

            engine = build_engine(
                heads=choice.heads or None,
                clip=choice.clip or None,
                device=choice.device,
                precision=choice.precision,
                embedding_cache=choice.embedding_cache,
            )
            _engines.clear()  # one model in memory at a time
            _engines[choice] = engine
    return engine


def drop_engines() -> None:
    """Forget the kept engine (its cache files are about to go); the next run builds a new one."""
    with _lock:
        for engine in _engines.values():
            if engine.embeddings is not None:
                engine.embeddings.close()
        _engines.clear()


def loaded_engine(choice: EngineSettings):
    return _engines.get(choice)
