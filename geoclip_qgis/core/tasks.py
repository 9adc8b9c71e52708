"""The dock's background run: the engine's one run pipeline (:func:`.backend.run.execute`) in a
QgsTask, with progress per stage and cancel; and :func:`show_progress`, how every GeoCLIP task shows
the engine's progress.

``run()`` happens in a worker thread; ``finished()`` on the main thread hands the outcome to the dock,
which makes the layers (see :mod:`.layers`). Every task hands the engine ``self.isCanceled`` as its
``should_stop``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .session import EngineSettings, get_engine, weights_message

if TYPE_CHECKING:  # the engine loads torch: imported when a run starts, not with the plugin
    from ..backend.pipeline.run import RunOutcome, RunRequest

LOG_TAG = "GeoCLIP"


@dataclass
class TaskResult:
    outcome: RunOutcome | None = None  # when the run got that far
    error: str = ""  # the run as a whole failed (weights missing, disk full...), in QGIS's words
    detail: str = ""  # the engine's own message, for the log
    cancelled: bool = False
    description: str = ""  # the task's description once it ended (what QGIS's own notice says)


def task_name(request: RunRequest, photos: int | None = None) -> str:
    """'GeoCLIP: 20 photos', 'GeoCLIP: 1 text query', 'GeoCLIP: 3 photos and 1 text query'; 'GeoCLIP:
    photos' while nobody has counted the folders yet (never walked here: this runs on QGIS's thread)."""
    parts = []
    photos = request.photo_count if photos is None else photos
    if photos is None and (request.photos or request.truth_csv):
        parts.append("photos")
    elif photos:
        parts.append(f"{photos} photo{'s' if photos != 1 else ''}")
    if request.texts:
        parts.append(f"{len(request.texts)} text quer{'ies' if len(request.texts) != 1 else 'y'}")
    return "GeoCLIP: " + (" and ".join(parts) or "nothing to answer")


def show_progress(task: QgsTask, event, status) -> None:
    """A :class:`.backend.progress.Progress` event as the task's share in QGIS's task manager, and sent
    on ``status`` (a signal of the task's, queued to the main thread, where widgets and descriptions are
    set) for its status line. Called in the worker thread."""
    if event.fraction is not None:
        task.setProgress(100.0 * event.fraction)
    status.emit(event)


def cancelled_text(result: TaskResult) -> str:
    """'Cancelled — 4 of 40 kept'; 'Cancelled before any answer' when the run had not begun."""
    if result.outcome is None:
        return "Cancelled before any answer"
    return f"Cancelled — {result.outcome.summary.answered} of {result.outcome.total} kept"


class GeolocateTask(QgsTask):
    progress = pyqtSignal(object)  # backend.progress.Progress, every event, for the dock's bar and line
    done = pyqtSignal(object)  # TaskResult, emitted on the main thread from finished()

    def __init__(self, request: RunRequest, settings: EngineSettings):
        super().__init__(task_name(request), QgsTask.Flag.CanCancel)
        self.request, self.settings = request, settings
        self.result = TaskResult()
        if request.photo_count is None:  # named by its count once the run has walked the folders
            self.progress.connect(self._name_from_count)

    def _name_from_count(self, event) -> None:  # main thread (a queued signal)
        if event.stage.startswith("Answering") and event.total:
            self.progress.disconnect(self._name_from_count)
            self.setDescription(task_name(self.request, event.total - len(self.request.texts)))

    def _progress(self, event) -> None:
        show_progress(self, event, self.progress)

    def run(self) -> bool:  # worker thread
        from ..backend.errors import GeoCLIPError, WeightsError
        from ..backend.pipeline.run import execute

        try:
            engine = get_engine(self.settings)
            self.result.outcome = execute(self.request, engine, self._progress, self.isCanceled)
            self.result.cancelled = self.result.outcome.cancelled
            return True
        except WeightsError as exc:  # said with the Models dialog's buttons, not the command line's options
            self.result.error, self.result.detail = weights_message(self.settings), str(exc)
        except GeoCLIPError as exc:  # reported to the user in finished(), never raised into QGIS
            self.result.error = self.result.detail = str(exc)
        except Exception as exc:
            self.result.error = self.result.detail = f"{type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
        return False

    def finished(self, ok: bool) -> None:  # main thread, before QGIS's own "Task complete" notice
        if not ok and not self.result.error:
            self.result.cancelled = True
        if self.result.cancelled:
            self.setDescription(f"GeoCLIP: {cancelled_text(self.result).lower()}")
        self.result.description = self.description()
        self.done.emit(self.result)
