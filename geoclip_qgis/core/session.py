"""Settings the user chose in the plugin (kept in QGIS's settings, so they survive restarts), the
engine kept loaded for the QGIS session, and the model state for the folders chosen (no widgets: the
dock, the Models dialog, Processing and the run task all ask here)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from qgis.core import QgsSettings

from ..backend.results import HINT_WEIGHT

if TYPE_CHECKING:
    from ..backend.model.model_state import ModelState

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
    decode_workers: int = 0  # threads decoding photos ahead of the model; 0: automatic


@dataclass(frozen=True)
class DockSettings:
    """The dock's choices, restored when QGIS starts again."""

    top_k: int = 5
    area: str = "world"  # world, extent, polygons, names
    area_name: str = ""  # the country or region, for "names"
    candidates: str = "refined"  # a key of inputs.CANDIDATES
    hint_weight: float = HINT_WEIGHT  # the hint's text is not kept: it belongs to one case
    rasters: bool = False
    world_per_photo: bool = False
    fuse: bool = False
    confidence: bool = False  # each answer's 50 % and 90 % confidence areas
    output_folder: str = ""  # empty: the project's folder, else the user data folder
    basemap: bool = True  # add a world map when the project has no layers
    dock_open: bool = False
    map_tips_hint_shown: bool = False


def _load(cls, group: str = ""):
    settings = QgsSettings()
    values = {}
    for field in fields(cls):
        default = field.default
        values[field.name] = settings.value(PREFIX + group + field.name, default, type=type(default))
    return cls(**values)


def _save(choice, group: str = "") -> None:
    settings = QgsSettings()
    for field in fields(choice):
        settings.setValue(PREFIX + group + field.name, getattr(choice, field.name))


def load_settings() -> EngineSettings:
    return _load(EngineSettings)


def save_settings(choice: EngineSettings) -> None:
    _save(choice)


def load_dock_settings() -> DockSettings:
    return _load(DockSettings, "dock/")


def save_dock_settings(choice: DockSettings) -> None:
    _save(choice, "dock/")


def current_state(settings: EngineSettings | None = None) -> ModelState:
    """The engine's :class:`~.backend.model_state.ModelState` for the plugin's chosen folders."""
    from ..backend.model.model_state import model_state

    settings = settings or load_settings()
    return model_state(settings.heads or None, settings.clip or None)


def weights_message(settings: EngineSettings | None = None) -> str:
    """A weights failure in QGIS's words: what is missing and the button that fixes it (the engine's
    own message, with command-line options, goes to the log)."""
    from ..backend.model.model_state import NOT_LOADED, Door

    try:
        state = current_state(settings)
    except Exception:  # the check itself failed: say what we can
        return NOT_LOADED[Door.QGIS]
    return state.plain_message(Door.QGIS)


def runs_folder() -> Path:
    """Where runs go when neither the user nor a saved project names a folder: the user data folder
    (``~/.local/share/geoclip-qgis/runs`` on Linux), never a temporary folder that vanishes."""
    from ..backend.user_folders import user_data_folder

    return user_data_folder() / "runs"


def get_engine(choice: EngineSettings):
    """The engine for these settings, built once per QGIS session and kept (safe from task threads);
    it loads its model on first use."""
    with _lock:
        engine = _engines.get(choice)
        if engine is None:
            from ..backend.model.factory import build_engine

            engine = build_engine(
                heads=choice.heads or None,
                clip=choice.clip or None,
                device=choice.device,
                precision=choice.precision,
                embedding_cache=choice.embedding_cache,
                decode_workers=choice.decode_workers or None,
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


def dialog_folder(near: str = "") -> str:
    """Where a file dialog opens: beside ``near`` (a run's GeoPackage, say), unless that is inside the
    runs folder, which hides in the user data folder; then the project's folder, else the user's documents."""
    from qgis.core import QgsProject
    from qgis.PyQt.QtCore import QStandardPaths

    folder = Path(near).parent if near else None
    runs = runs_folder()
    if folder is not None and folder.is_dir() and runs != folder and runs not in folder.parents:
        return str(folder)
    home = QgsProject.instance().homePath()
    if home:
        return home
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return documents if documents and Path(documents).is_dir() else str(Path.home())
