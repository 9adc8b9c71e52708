"""The dock's background run: the engine's one run pipeline (:func:`.backend.run.execute`) in a
QgsTask, with progress, stage labels and cancel.

``run()`` happens in a worker thread; ``finished()`` on the main thread hands the outcome to the dock,
which makes the layers (see :mod:`.layers`).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from qgis.core import QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .session import EngineSettings, get_engine

LOG_TAG = "GeoCLIP"


@dataclass
class TaskResult:
    outcome: object = None  # backend.run.RunOutcome, when the run got that far
    error: str = ""  # the run as a whole failed (weights missing, disk full...)
    cancelled: bool = False


def task_name(request) -> str:
    """'GeoCLIP: 20 photos', 'GeoCLIP: 1 text query', 'GeoCLIP: 3 photos and 1 text query'."""
    from .backend.run import count_photos

    parts = []
    photos = count_photos(request) if (request.photos or request.truth_csv) else 0
    if photos:
        parts.append(f"{photos} photo{'s' if photos != 1 else ''}")
    if request.texts:
        parts.append(f"{len(request.texts)} text quer{'ies' if len(request.texts) != 1 else 'y'}")
    return "GeoCLIP: " + (" and ".join(parts) or "nothing to answer")


class GeolocateTask(QgsTask):
    status = pyqtSignal(str)  # short progress text for the dock
    done = pyqtSignal(object)  # TaskResult, emitted on the main thread from finished()

    def __init__(self, request, settings: EngineSettings):
        super().__init__(task_name(request), QgsTask.Flag.CanCancel)
        self.request, self.settings = request, settings
        self.result = TaskResult()

    def _progress(self, event) -> None:
        if event.fraction is not None:
            self.setProgress(100.0 * event.fraction)
        self.status.emit(event.text())

    def run(self) -> bool:  # worker thread
        from .backend.errors import GeoCLIPError
        from .backend.run import execute

        try:
            engine = get_engine(self.settings)
            self.result.outcome = execute(self.request, engine, self._progress, self.isCanceled)
            self.result.cancelled = self.result.outcome.cancelled
            return True
        except GeoCLIPError as exc:  # reported to the user in finished(), never raised into QGIS
            self.result.error = str(exc)
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG)
        return False

    def finished(self, ok: bool) -> None:  # main thread
        if not ok and not self.result.error:
            self.result.cancelled = True
        self.done.emit(self.result)
