"""The dock's background run: :func:`.runner.execute` in a QgsTask, with progress and cancel.

``run()`` happens in a worker thread; ``finished()`` on the main thread hands the outcome to the dock,
which makes the layers (see :mod:`.layers`).
"""

from __future__ import annotations

import traceback

from qgis.core import QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .runner import RunOutcome, RunRequest, execute

LOG_TAG = "GeoCLIP"


class GeolocateTask(QgsTask):
    status = pyqtSignal(str)  # short progress text for the dock
    done = pyqtSignal(object)  # RunOutcome, emitted on the main thread from finished()

    def __init__(self, request: RunRequest):
        count = f"{len(request.photos)} item(s)" if request.photos else f"{len(request.texts)} text query(ies)"
        super().__init__(f"GeoCLIP: {count}", QgsTask.Flag.CanCancel)
        self.request = request
        self.outcome = RunOutcome(gpkg=request.gpkg)

    def run(self) -> bool:  # worker thread
        try:
            self.outcome = execute(self.request, self.setProgress, self.status.emit, self.isCanceled)
            return True
        except Exception as exc:  # reported to the user in finished(), never raised into QGIS
            from .backend.errors import GeoCLIPError

            self.outcome.error = str(exc) if isinstance(exc, GeoCLIPError) else f"{type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG)
            return False

    def finished(self, ok: bool) -> None:  # main thread
        if not ok and not self.outcome.error:
            self.outcome.cancelled = True
        self.done.emit(self.outcome)
