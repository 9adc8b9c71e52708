"""Running from the dock (Runner, which the dock owns): a run is started from the dock's inputs and
options as a QGIS task; when it ends its layers are added, the Results tab is filled and the message bar
and the status line say how it went. A failed run leaves a notice with Details until the next success;
a cancelled one is offered to continue. Quitting QGIS mid-run stops the run and then quits QGIS."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.gui import QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent, QObject, QTimer
from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

from ..core.inputs import InputError
from ..core.plain_text import bar_text, show_message
from ..core.session import load_dock_settings, load_settings, save_dock_settings, save_settings
from ..core.tasks import LOG_TAG, GeolocateTask, cancelled_text
from ..map.layers import add_run
from ..map.names import run_title


class _QuitWatcher(QObject):
    """Quitting QGIS mid-run: QGIS asks once whether to cancel the running tasks, cancels them on Yes,
    and then stays open until asked again. When its question names our run and the answer is Yes, the
    dock stops the run (answers so far are kept) and quits QGIS for the user once it has stopped."""

    def __init__(self, runner):
        super().__init__(runner)
        self.runner = runner

    def eventFilter(self, watched, event):  # noqa: N802 - Qt API
        try:
            if event.type() == QEvent.Type.ChildPolished:
                box = event.child()
                task = self.runner.task
                if isinstance(box, QMessageBox) and task is not None and task.description() in box.text():
                    box.buttonClicked.connect(lambda button: self._answered(box, button))
        except RuntimeError:  # the dock is going (QGIS closing): nothing to watch
            pass
        return False

    def _answered(self, box, button) -> None:
        if box.standardButton(button) == QMessageBox.StandardButton.Yes:
            self.runner.quitting = True


def _pop(bar, item) -> None:
    """Take a notice off the message bar, unless it (or QGIS) is gone already."""
    try:
        bar.popWidget(item)
    except RuntimeError:
        pass


class Runner(QObject):
    """One run at a time from ``dock``: its task and what it left (layers, GeoPackage, notice)."""

    def __init__(self, dock):
        super().__init__(dock)
        self.dock = dock
        self.task: GeolocateTask | None = None
        self.last_layers: dict = {}
        self.error_item = None  # the message bar's notice of the last failed run, gone with the next success
        self.quitting = False  # QGIS is quitting: stop the run and let it quit
        self.cancel_asked = False
        self.last_output = ""  # the GeoPackage "Look at each answer…" opens
        self._quit_watcher = _QuitWatcher(self)
        self._continue_output = ""  # a cancelled run's GeoPackage, offered to continue while the inputs stay
        self._continue_paths: list[str] = []

    def request(self):
        """The run the dock's inputs and options ask for, as the engine takes it (its output chosen); None,
        with the reason said in the dock and its tab shown, when they cannot be used."""
        from ..backend.pipeline.run import WORLD_COMBINED, WORLD_EACH, RasterOptions, RunRequest, default_raster_folder
        from ..core.inputs import place_options

        dock = self.dock
        texts = [dock.text_edit.text().strip()] if dock.text_edit.text().strip() else []
        if not dock.paths() and not texts:
            dock._say("Add photos or a folder, or type a text query, first.")
            dock.tabs.setCurrentIndex(0)
            return None
        try:
            area = dock.area()
        except (InputError, Exception) as exc:
            dock._say(f"Area of interest: {exc}")
            dock.tabs.setCurrentIndex(1)
            return None
        try:
            hint = dock.hint()
        except InputError as exc:
            dock._say(f"Hint: {exc}")
            dock.tabs.setCurrentIndex(1)
            return None
        output = dock.output.filePath() or dock.default_output()
        rasters = None
        if dock.rasters_check.isChecked():
            world = WORLD_EACH if dock.world_per_photo.isChecked() else WORLD_COMBINED
            rasters = RasterOptions(default_raster_folder(output), world=world)
        return RunRequest(
            photos=dock.paths(),
            texts=texts,
            top_k=dock.top_k.value(),
            area=area,
            places=place_options(dock.places_combo.currentData()),
            hint=hint,
            output=output,
            rasters=rasters,
            fuse=dock.fuse_check.isChecked(),
            confidence=dock.confidence_check.isChecked(),
            photo_count=dock.photo_list.total() if dock.paths() else 0,  # None while still counting
        )

    def start(self) -> None:
        dock = self.dock
        request = self.request()
        if request is None or not dock.list_devices():
            return
        settings = replace(load_settings(), device=dock.device_combo.currentData() or "auto")
        save_settings(settings)
        dock.remember()
        texts, output = request.texts, request.output
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        self.task = GeolocateTask(request, settings)
        self._named, self.last_output = (dock.paths(), texts), output  # the title once the run has counted
        # each stage in the dock's progress bar and status line
        self.task.progress.connect(dock._on_progress)
        self.task.done.connect(self._finished)
        dock.failures.setRowCount(0)
        dock.progress.setRange(0, 100)
        dock.progress.setValue(0)
        dock.progress.setTextVisible(True)
        dock.run_button.setEnabled(False)
        dock.cancel_button.setEnabled(True)
        self.cancel_asked = False
        self.quitting = False
        dock._say("Starting…")
        window = dock.iface.mainWindow()
        if window is not None:
            window.installEventFilter(self._quit_watcher)
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.cancel_asked = True
            self.dock._say("Cancelling after the current batch… the answers so far are kept.")
            self.task.cancel()

    def photos_changed(self, paths: list[str]) -> None:
        """Other photos than a cancelled run's: Run writes a new GeoPackage again, not that one."""
        if self._continue_output and paths != self._continue_paths:
            if self.dock.output.filePath() == self._continue_output:
                self.dock.output.setFilePath("")
            self._continue_output = ""

    def _finished(self, result) -> None:
        dock = self.dock
        window = dock.iface.mainWindow()
        if window is not None:
            window.removeEventFilter(self._quit_watcher)
        self.task = None
        dock.cancel_button.setEnabled(False)
        dock._update_run_state()
        self._swallow_task_notice(result.description)
        if self.quitting:  # QGIS is closing: nothing to add to a project about to go; let it quit
            QgsMessageLog.logMessage(f"stopped to quit QGIS; answers so far are in {self.last_output}", LOG_TAG)
            dock.runFinished.emit(result)
            exit_action = getattr(dock.iface, "actionExit", None)
            if exit_action is not None:
                QTimer.singleShot(0, exit_action().trigger)
            return
        outcome = result.outcome
        if result.error or outcome is None:
            self._failed(result)
            dock.runFinished.emit(result)
            return
        self._clear_error()
        names, texts = self._named
        run_name = run_title(names, texts, outcome.total - len(texts))
        title = run_name + (" (cancelled)" if outcome.cancelled else "")
        self.last_layers = add_run(
            outcome, title, dock.iface.mapCanvas(), basemap=dock.basemap_check.isChecked(), output=self.last_output
        )
        dock.results_tab.show_run(run_name, result, self.last_output)
        dock.tabs.setCurrentIndex(2)
        dock.judge_button.setEnabled(True)
        dock.resultsUpdated.emit(self.last_output)
        bar = dock.iface.messageBar()
        if outcome.cancelled:
            dock.progress.setRange(0, 100)
            dock.progress.setValue(0)
            dock.progress.setTextVisible(False)  # the status line says how far it got
            line = cancelled_text(result)
            # Run again continues this GeoPackage: the photos it holds are skipped.
            self._continue_output, self._continue_paths = self.last_output, dock.paths()
            dock.output.setFilePath(self.last_output)
            dock._say(f"{line}, in {Path(self.last_output).name}. Press Run to continue it.")
            where = bar_text(Path(self.last_output).name)
            bar.pushMessage("GeoCLIP", f"{line} in {where}", Qgis.MessageLevel.Warning, 10)
        else:
            self._continue_output = ""
            dock.progress.setRange(0, 100)
            dock.progress.setValue(100)
            summary = outcome.summary
            dock._say(f"Done: {summary.first_line()}.")
            level = Qgis.MessageLevel.Warning if outcome.failures else Qgis.MessageLevel.Success
            item = bar.createMessage("GeoCLIP", self._bar_line(result))
            self._offer_map_tips(bar, item)  # in the run's own notice, not under it
            bar.pushWidget(item, level, 10)
        dock.runFinished.emit(result)

    def _bar_line(self, result) -> str:
        summary = result.outcome.summary
        line = f"{summary.answered} of {result.outcome.total} answered"
        if summary.failed_count:
            line += f", {summary.failed_count} not answered"  # the reasons are in the dock's Results tab
        if summary.skipped_count:
            line += f", {summary.skipped_count} skipped"
        return line

    def _failed(self, result) -> None:
        """A short notice with Details in the message bar, the whole story in the GeoCLIP log."""
        dock = self.dock
        error = result.error or "the run stopped before it started"
        dock.progress.setRange(0, 100)
        dock.progress.setValue(0)
        dock._say(f"Run failed: {error}")
        full = error + (f"\n\nDetails: {result.detail}" if result.detail and result.detail != error else "")
        QgsMessageLog.logMessage(f"run failed: {full}", LOG_TAG, Qgis.MessageLevel.Critical)
        short = re.split(r"(?<=[.:])\s", error.strip(), maxsplit=1)[0].rstrip(":")
        bar = dock.iface.messageBar()
        self._clear_error()
        item = bar.createMessage("GeoCLIP", bar_text(short))
        details = QPushButton("Details")
        details.clicked.connect(lambda: show_message(dock, "GeoCLIP: the run failed", full, warning=True))
        item.layout().addWidget(details)
        if dock.model_problem is not None or result.detail != result.error:
            fix = QPushButton("Models…")
            fix.clicked.connect(dock.open_models_dialog)
            item.layout().addWidget(fix)
        self.error_item = item
        bar.pushWidget(item, Qgis.MessageLevel.Critical, 0)
        dock.refresh_model_state()

    def _clear_error(self) -> None:
        if self.error_item is not None:
            try:
                self.dock.iface.messageBar().popWidget(self.error_item)
            except RuntimeError:  # closed by the user already
                pass
            self.error_item = None

    def _swallow_task_notice(self, description: str) -> None:
        """QGIS announces any long task's end in the message bar ("Task complete: GeoCLIP: 40 photos"),
        after this method; the dock's own notice says more, so that one is removed."""
        bar = self.dock.iface.messageBar()

        def pop(item):
            try:
                if not isinstance(item, QgsMessageBarItem):
                    item = sip.cast(item, QgsMessageBarItem)
                if item.text() == description:
                    QTimer.singleShot(0, lambda: _pop(bar, item))
            except (RuntimeError, TypeError, AttributeError):  # never raise into Qt
                pass

        def stop():
            try:
                bar.widgetAdded.disconnect(pop)
            except (RuntimeError, TypeError):
                pass

        bar.widgetAdded.connect(pop)
        QTimer.singleShot(3000, stop)

    def _offer_map_tips(self, bar, item) -> None:
        """Once: the answers' map tips (photo preview) need QGIS's map tips on; the offer is a button in
        the run's notice."""
        saved = load_dock_settings()
        action = getattr(self.dock.iface, "actionMapTips", None)
        if saved.map_tips_hint_shown or action is None or action().isChecked():
            return
        save_dock_settings(replace(saved, map_tips_hint_shown=True))
        button = QPushButton("Show photos on hover")
        button.setToolTip("Turns QGIS's map tips on: hovering an answer shows its photo")
        button.clicked.connect(lambda: (action().setChecked(True), _pop(bar, item)))
        item.layout().addWidget(button)
