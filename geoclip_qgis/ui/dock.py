"""The GeoCLIP dock: the model's state up front, then three tabs — Input (photos, folders, drops, a
photo layer, a text query), Options (candidates, device, area, rasters, output) and Results (summary,
accuracy, photos not answered) — each scrolling on its own, and Run, Cancel and the progress of each
stage below them, always in view."""

from __future__ import annotations

import html
import re
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsMimeDataUtils,
    QgsProject,
)
from qgis.gui import QgsDockWidget, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox, QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent, QObject, Qt, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..backend.model.model_state import Capability, ModelState, Problem, ProblemCode
from ..core import deps
from ..core.inputs import InputError, area_from_extent, area_from_polygons, guess_photo_field, photo_paths
from ..core.plain_text import as_html, bar_text, show_message, tooltip
from ..core.session import (
    current_state,
    load_dock_settings,
    load_settings,
    runs_folder,
    save_dock_settings,
    save_settings,
)
from ..core.tasks import LOG_TAG, GeolocateTask, cancelled_text
from ..map.layers import add_run
from ..map.names import run_title

PHOTO_FILTER = "Photos (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp *.heic *.heif);;All files (*)"
PATH_ROLE = Qt.ItemDataRole.UserRole


def _count_folder(folder: str) -> int:
    from ..backend.photos.loader import BadPath
    from ..backend.photos.walk import expand_paths

    return sum(1 for item in expand_paths([folder]) if not isinstance(item, BadPath))


class PhotoList(QListWidget):
    """The photos and folders to run, by name (the full path in each tooltip), each folder with the number
    of photos found in it; accepts drops from the file manager and the QGIS Browser."""

    pathsDropped = pyqtSignal(list)  # noqa: N815 - Qt's naming for signals
    countsChanged = pyqtSignal()  # noqa: N815
    _counted = pyqtSignal(str, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.counts: dict[str, int | None] = {}  # folder -> photos in it (None while counting)
        self._counted.connect(self._set_count)

    def paths(self) -> list[str]:
        return [self.item(i).data(PATH_ROLE) for i in range(self.count())]

    def add_path(self, path: str) -> None:
        item = QListWidgetItem()
        item.setData(PATH_ROLE, path)
        item.setToolTip(tooltip(path))
        folder = Path(path).is_dir()
        item.setIcon(QgsApplication.getThemeIcon("/mIconFolder.svg" if folder else "/mIconFile.svg"))
        self.addItem(item)
        if folder:
            self.counts[path] = None
            threading.Thread(target=lambda: self._counted.emit(path, _count_folder(path)), daemon=True).start()
        self._label(item)

    def _label(self, item: QListWidgetItem) -> None:
        path = item.data(PATH_ROLE)
        name = Path(path).name or path
        if path in self.counts:
            count = self.counts[path]
            found = "counting photos…" if count is None else f"{count} photo{'s' if count != 1 else ''}"
            item.setText(f"{name}/ — {found}")
        else:
            item.setText(name)

    def _set_count(self, path: str, count: int) -> None:
        if path not in self.counts:
            return  # removed meanwhile
        self.counts[path] = count
        for i in range(self.count()):
            if self.item(i).data(PATH_ROLE) == path:
                self._label(self.item(i))
        self.countsChanged.emit()

    def total(self) -> int | None:
        """Photos named, folders counted; None while a folder is still being counted."""
        total = 0
        for path in self.paths():
            if path in self.counts:
                if self.counts[path] is None:
                    return None
                total += self.counts[path]
            else:
                total += 1
        return total

    def forget(self, path: str) -> None:
        self.counts.pop(path, None)

    def dragEnterEvent(self, event):  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() or QgsMimeDataUtils.isUriList(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event):  # noqa: N802 - Qt API
        event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802 - Qt API
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if QgsMimeDataUtils.isUriList(event.mimeData()):
            paths += [uri.uri for uri in QgsMimeDataUtils.decodeUriList(event.mimeData()) if Path(uri.uri).exists()]
        self.pathsDropped.emit(paths)
        event.acceptProposedAction()


class _QuitWatcher(QObject):
    """Quitting QGIS mid-run: QGIS asks once whether to cancel the running tasks, cancels them on Yes,
    and then stays open until asked again. When its question names our run and the answer is Yes, the
    dock stops the run (answers so far are kept) and quits QGIS for the user once it has stopped."""

    def __init__(self, dock):
        super().__init__(dock)
        self.dock = dock

    def eventFilter(self, watched, event):  # noqa: N802 - Qt API
        try:
            if event.type() == QEvent.Type.ChildPolished:
                box = event.child()
                task = self.dock.task
                if isinstance(box, QMessageBox) and task is not None and task.description() in box.text():
                    box.buttonClicked.connect(lambda button: self._answered(box, button))
        except RuntimeError:  # the dock is going (QGIS closing): nothing to watch
            pass
        return False

    def _answered(self, box, button) -> None:
        if box.standardButton(button) == QMessageBox.StandardButton.Yes:
            self.dock.quitting = True


class _WidthWatcher(QObject):
    """Calls ``changed`` whenever ``widget`` gets a new width."""

    def __init__(self, widget, changed):
        super().__init__(widget)
        self.changed = changed
        widget.installEventFilter(self)

    def eventFilter(self, watched, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Resize and event.size().width() != event.oldSize().width():
            self.changed()
        return False


def _pop(bar, item) -> None:
    """Take a notice off the message bar, unless it (or QGIS) is gone already."""
    try:
        bar.popWidget(item)
    except RuntimeError:
        pass


def _scrolling(widget: QWidget) -> QScrollArea:
    """A tab's page that scrolls up and down, never sideways: its contents follow the dock's width."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area


class GeoCLIPDock(QgsDockWidget):
    runFinished = pyqtSignal(object)  # noqa: N815 - Qt's naming for signals
    resultsWanted = pyqtSignal(str)  # noqa: N815 - the user asked for the results panel on this GeoPackage
    resultsUpdated = pyqtSignal(str)  # noqa: N815 - a run wrote this GeoPackage (an open panel follows it)
    dependenciesInstalled = pyqtSignal()  # noqa: N815 - packages or heads were installed (Processing can load)

    def __init__(self, iface, parent=None):
        super().__init__("GeoCLIP", parent)
        self.setObjectName("GeoCLIPDock")
        self.iface = iface
        self.task: GeolocateTask | None = None
        self.last_layers: dict = {}
        self.state: ModelState | None = None  # the weights' state (session.current_state)
        self.model_problem: Problem | None = None  # what keeps Run off, if anything
        self.error_item = None  # the message bar's notice of the last failed run, gone with the next success
        self.quitting = False  # QGIS is quitting: stop the run and let it quit
        self._cancel_asked = False
        self._last_output = ""
        self._quit_watcher = _QuitWatcher(self)
        self._devices_listed = False  # GPUs are listed on demand (list_devices)
        self._continue_output = ""  # a cancelled run's GeoPackage, offered to continue while the inputs stay
        self._continue_paths: list[str] = []
        self._build()
        self._restore()
        self._check_dependencies()

    # -- layout ----------------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)

        self.model_frame = QFrame()
        self.model_frame.setFrameShape(QFrame.Shape.StyledPanel)
        model_row = QHBoxLayout(self.model_frame)
        model_row.setContentsMargins(6, 4, 6, 4)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setTextFormat(Qt.TextFormat.RichText)
        self.model_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.model_label.setMaximumHeight(4 * self.model_label.fontMetrics().lineSpacing() + 4)
        self.models_button = QPushButton("Models…")
        self.models_button.clicked.connect(self.open_models_dialog)
        self.install_button = QPushButton("Install dependencies…")
        self.install_button.clicked.connect(self.open_install_dialog)
        self.install_button.setVisible(False)
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(self.models_button)
        model_row.addWidget(self.install_button)
        layout.addWidget(self.model_frame)

        self.tabs = QTabWidget()
        self.tabs.addTab(_scrolling(self._input_tab()), "Input")
        self.tabs.addTab(_scrolling(self._options_tab()), "Options")
        self.tabs.addTab(_scrolling(self._results_tab()), "Results")
        layout.addWidget(self.tabs, 1)
        self.tabs.currentChanged.connect(lambda index: index == 1 and self.list_devices())

        run_row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setEnabled(False)  # on once the packages and weights are known to answer
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        run_row.addWidget(self.run_button, 2)
        run_row.addWidget(self.cancel_button, 1)
        layout.addLayout(run_row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p %")
        self.progress.setTextVisible(False)  # no percentage before a run
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # it quotes photo names and reasons
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setMaximumHeight(4 * self.status.fontMetrics().lineSpacing() + 4)  # the rest in its tooltip
        layout.addWidget(self.status)
        self.setWidget(body)
        # Wide enough for the Options tab without a sideways scroll bar (it is the widest), never wider
        # than a laptop screen can spare beside the map.
        options = self.tabs.widget(1).widget()
        self.setMinimumWidth(min(420, max(300, options.minimumSizeHint().width() + 40)))

    def _input_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        photos = QGroupBox("Photos and folders")
        photos_layout = QVBoxLayout(photos)
        self.photo_list = PhotoList()
        self.photo_list.setMinimumHeight(90)
        self.photo_list.pathsDropped.connect(self.add_paths)
        self.photo_list.countsChanged.connect(self._update_count)
        photos_layout.addWidget(self.photo_list)
        self.count_label = QLabel("Add photos or folders, or drop them here.")
        self.count_label.setWordWrap(True)
        photos_layout.addWidget(self.count_label)
        buttons = QGridLayout()
        for index, (text, slot) in enumerate(
            (
                ("Add photos…", self._pick_files),
                ("Add folder…", self._pick_folder),
                ("Remove", self._remove_selected),
                ("Clear", self.clear_paths),
            )
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button, index // 2, index % 2)
        photos_layout.addLayout(buttons)
        layout.addWidget(photos)

        from_layer = QGroupBox("From a layer of photos")
        form = QFormLayout(from_layer)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PointLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.field_combo = QgsFieldComboBox()
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())
        add_layer = QPushButton("Add its photos")
        add_layer.setToolTip("Add the photos of the selected features (all features if none is selected)")
        add_layer.clicked.connect(self.add_from_layer)
        form.addRow("Photo layer", self.layer_combo)
        form.addRow("Photo path field", self.field_combo)
        form.addRow("", add_layer)
        layout.addWidget(from_layer)

        text = QGroupBox("Or describe a place (text query)")
        text_layout = QVBoxLayout(text)
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("e.g. a tropical beach with palm trees")
        self.text_edit.textChanged.connect(lambda _: self._update_run_state())
        text_layout.addWidget(self.text_edit)
        layout.addWidget(text)
        layout.addStretch(1)
        return page

    def _options_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 100)
        self.top_k.setValue(5)
        form.addRow("Candidates per answer", self.top_k)
        self.device_combo = QComboBox()
        self.device_combo.addItem("Automatic (GPU if present)", "auto")
        self.device_combo.addItem("CPU", "cpu")
        form.addRow("Device", self.device_combo)
        self.area_combo = QComboBox()
        self.area_combo.addItem("Whole world", "world")
        self.area_combo.addItem("Current map extent", "extent")
        self.area_combo.addItem("Selected polygons of a layer", "polygons")
        form.addRow("Area of interest", self.area_combo)
        self.area_layer = QgsMapLayerComboBox()
        self.area_layer.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.area_layer_label = QLabel("Polygon layer")
        form.addRow(self.area_layer_label, self.area_layer)
        self.area_combo.currentIndexChanged.connect(self._area_changed)
        self.rasters_check = QCheckBox("Probability rasters")
        self.rasters_check.setToolTip("A world raster (0.25° cells) and local rasters (0.01°) around the best places")
        self.world_per_photo = QCheckBox("One world raster per photo")
        self.world_per_photo.setToolTip("Otherwise one world raster for the whole run")
        self.rasters_check.toggled.connect(self.world_per_photo.setEnabled)
        self.fuse_check = QCheckBox("Also a joint answer for all photos")
        self.fuse_check.setToolTip("For photos of one place: one answer that weighs them all together")
        self.confidence_check = QCheckBox("Confidence areas (50 % and 90 %)")
        self.confidence_check.setToolTip(
            "Outlines of the smallest areas holding half and nine tenths of each answer's probability, with "
            "their size in km²: a small area is a confident answer. A second or two per answer."
        )
        self.basemap_check = QCheckBox("World map when the project is empty")
        form.addRow(self.rasters_check)
        form.addRow(self.world_per_photo)
        form.addRow(self.fuse_check)
        form.addRow(self.confidence_check)
        form.addRow(self.basemap_check)
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        self.output.fileChanged.connect(self._output_changed)
        form.addRow("Output GeoPackage", self.output)
        self.output_hint = QLabel()
        self.output_hint.setWordWrap(True)
        self.output_hint.setStyleSheet("color: palette(mid);")
        form.addRow(self.output_hint)
        self.world_per_photo.setEnabled(False)
        self._area_changed()
        return page

    def _results_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.summary = QLabel("No run yet.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.summary.setOpenExternalLinks(False)
        self.summary.linkActivated.connect(lambda link: QDesktopServices.openUrl(QUrl(link)))
        layout.addWidget(self.summary)
        self.judge_button = QPushButton("Look at each answer…")
        self.judge_button.setToolTip(
            "The results panel: each photo with its EXIF, candidates and place names, regions, confidence areas; "
            "how likely a spot is; a PDF case report"
        )
        self.judge_button.setEnabled(False)
        self.judge_button.clicked.connect(lambda: self.resultsWanted.emit(self._last_output))
        layout.addWidget(self.judge_button)

        self.failures_box = QGroupBox("Photos not answered")
        failures_layout = QVBoxLayout(self.failures_box)
        self.failures = QTableWidget(0, 2)
        self.failures.setHorizontalHeaderLabels(["Photo", "Reason"])
        self.failures.verticalHeader().setVisible(False)
        self.failures.setWordWrap(True)
        self.failures.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.failures.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.failures.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.failures.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.failures.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.failures.horizontalHeader().sectionResized.connect(lambda *_: self._fit_failures())
        # A stretched column gets its width when the hidden Results tab is first shown or the dock is
        # resized, without sectionResized: re-wrap the reasons then too.
        self._failures_width = _WidthWatcher(self.failures.viewport(), self._fit_failures)
        failures_layout.addWidget(self.failures)
        self.failures_box.setVisible(False)
        layout.addWidget(self.failures_box)
        self.accuracy_box = QGroupBox("Top-1 error")
        accuracy_layout = QVBoxLayout(self.accuracy_box)
        self.accuracy = QTableWidget(0, 2)
        self.accuracy.setHorizontalHeaderLabels(["Top-1 answer", "Photos"])
        self.accuracy.verticalHeader().setVisible(False)
        self.accuracy.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.accuracy.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.accuracy.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        accuracy_layout.addWidget(self.accuracy)
        self.accuracy_box.setVisible(False)
        layout.addWidget(self.accuracy_box)

        layout.addStretch(1)
        return page

    def _say(self, text: str) -> None:
        """The status line under the progress bar (at most four lines; all of it in its tooltip)."""
        self.status.setText(text)
        self.status.setToolTip(tooltip(text))

    # -- state -----------------------------------------------------------------------------------

    def _restore(self) -> None:
        saved = load_dock_settings()
        self.top_k.setValue(saved.top_k)
        self.area_combo.setCurrentIndex(max(self.area_combo.findData(saved.area), 0))
        self.rasters_check.setChecked(saved.rasters)
        self.world_per_photo.setChecked(saved.world_per_photo)
        self.world_per_photo.setEnabled(saved.rasters)
        self.fuse_check.setChecked(saved.fuse)
        self.confidence_check.setChecked(saved.confidence)
        self.basemap_check.setChecked(saved.basemap)
        if saved.output_folder:
            self.output.setDefaultRoot(saved.output_folder)
        self._output_folder = saved.output_folder
        self._show_output_hint()
        for signal in (
            self.top_k.valueChanged,
            self.area_combo.currentIndexChanged,
            self.rasters_check.toggled,
            self.world_per_photo.toggled,
            self.fuse_check.toggled,
            self.confidence_check.toggled,
            self.basemap_check.toggled,
        ):
            signal.connect(lambda *_: self.remember())
        self.device_combo.currentIndexChanged.connect(lambda _: self._remember_device())

    def remember(self) -> None:
        """Keep the options for the next QGIS session."""
        save_dock_settings(
            replace(
                load_dock_settings(),
                top_k=self.top_k.value(),
                area=self.area_combo.currentData() or "world",
                rasters=self.rasters_check.isChecked(),
                world_per_photo=self.world_per_photo.isChecked(),
                fuse=self.fuse_check.isChecked(),
                confidence=self.confidence_check.isChecked(),
                basemap=self.basemap_check.isChecked(),
                output_folder=self._output_folder,
            )
        )

    def _remember_device(self) -> None:
        device = self.device_combo.currentData()
        if device:
            save_settings(replace(load_settings(), device=device))

    def _output_changed(self, path: str) -> None:
        if path:
            self._output_folder = str(Path(path).parent)
            self.output.setDefaultRoot(self._output_folder)
            self.remember()
        self._show_output_hint()

    def _show_output_hint(self) -> None:
        if self.output.filePath():
            self.output_hint.setText("Running again into the same GeoPackage skips photos it already answers.")
        else:
            self.output_hint.setText(f"Empty: a new GeoPackage in {self.output_folder()}")

    def output_folder(self) -> Path:
        """Where a new GeoPackage goes: the folder last chosen, else the project's, else the user data
        folder (never a temporary folder)."""
        if self._output_folder:
            return Path(self._output_folder)
        home = QgsProject.instance().homePath()
        return Path(home) if home else runs_folder()

    def _area_changed(self, *_args) -> None:
        polygons = self.area_combo.currentData() == "polygons"
        self.area_layer.setVisible(polygons)
        self.area_layer_label.setVisible(polygons)

    def _check_dependencies(self) -> None:
        missing = deps.missing()
        self.install_button.setVisible(bool(missing))
        self.models_button.setVisible(not missing)
        if missing:
            self.run_button.setEnabled(False)
            count = f"{len(missing)} Python package{'s' if len(missing) != 1 else ''}"
            self.model_label.setText(f"<b style='color:#b00'>✘ Not ready: {count} missing.</b>")
            self.model_label.setToolTip(f"Missing in QGIS's Python: {', '.join(missing)}")
            self._say(deps.explanation(missing))
            return
        self._say("")
        self.model_label.setToolTip("")
        saved = load_settings().device
        if saved not in ("auto", "cpu") and self.device_combo.findData(saved) < 0:
            self.device_combo.addItem(saved, saved)  # named properly once the devices are listed
        self.device_combo.blockSignals(True)
        self.device_combo.setCurrentIndex(max(self.device_combo.findData(saved), 0))
        self.device_combo.blockSignals(False)
        self.refresh_model_state()

    def list_devices(self) -> bool:
        """Add each GPU to the device picker. Asked for when the Options tab is first opened or a run
        starts, not when the dock opens: listing them imports torch (a second or more), which QGIS's
        start should not wait for. False (and the reason said) when torch does not load."""
        if self._devices_listed:
            return True
        try:
            from ..backend.model.device import available_devices

            devices = available_devices()[2:]  # auto and cpu are already there
        except Exception as exc:  # a broken torch install: say so, keep the dock usable for settings
            self.run_button.setEnabled(False)
            self._say(f"torch is installed but does not load in this QGIS: {exc}")
            return False
        self._devices_listed = True
        self.device_combo.blockSignals(True)
        for device_id, label in devices:
            index = self.device_combo.findData(device_id)
            if index < 0:
                self.device_combo.addItem(label, device_id)
            else:
                self.device_combo.setItemText(index, label)
        self.device_combo.blockSignals(False)
        return True

    def refresh_model_state(self) -> None:
        """Say what the weights allow, before any run, and keep Run off (with the reason) while they
        cannot answer."""
        try:
            self.state = current_state()
        except Exception as exc:
            self.state = None
            self.model_label.setText(f"<b style='color:#b00'>✘ The weights could not be checked: {as_html(exc)}</b>")
            self._update_run_state()
            return
        problem = self.state.blocking(Capability.PHOTOS)
        if problem is not None:
            self.model_label.setText(
                f"<b style='color:#b00'>✘ Not ready: {html.escape(problem.short)}.</b> "
                "Press <b>Fix…</b> to import or download it."
            )
            self.models_button.setText("Fix…")
        elif self.state.warning is not None:
            self.model_label.setText(
                "<b style='color:#a15c00'>⚠ Runs, but its CLIP is not <span style='white-space:nowrap'>ViT-L/14"
                "</span>: answers are not meaningful places.</b>"
            )
            self.models_button.setText("Models…")
        else:
            self.model_label.setText("<b style='color:#1a7f37'>✔ Model ready</b> (GeoCLIP heads + CLIP ViT-L/14)")
            self.models_button.setText("Models…")
        self._update_run_state()

    def _update_run_state(self) -> None:
        """Run is on when the weights can answer what is asked; its tooltip says why not."""
        if deps.missing() or self.task is not None:
            return
        state = self.state
        needs = [Capability.PHOTOS] + ([Capability.TEXT] if self.text_edit.text().strip() else [])
        problem = None if state is None else state.blocking(*needs)
        self.model_problem = problem
        if state is None:
            reason = "the weights could not be checked"
        elif problem is not None:
            reason = problem.short
        else:
            reason = ""
        self.run_button.setEnabled(not reason)
        fix = self.models_button.text()
        self.run_button.setToolTip(
            f"Run is off: {reason}. Press {fix} above." if reason else "Answer in the background"
        )
        if reason and problem is not None and problem.code is ProblemCode.NO_TEXT:
            self._say(f"Run is off: {reason}. Press Models… to import a full checkpoint, or clear the text.")
        elif self.status.text().startswith("Run is off"):
            self._say("")

    # -- inputs ----------------------------------------------------------------------------------

    def paths(self) -> list[str]:
        return self.photo_list.paths()

    def add_paths(self, paths) -> None:
        present = set(self.paths())
        for path in paths:
            path = str(path)
            if path and path not in present:
                self.photo_list.add_path(path)
                present.add(path)
        self._update_count()

    def clear_paths(self) -> None:
        self.photo_list.clear()
        self.photo_list.counts.clear()
        self._update_count()

    def _update_count(self) -> None:
        paths = self.paths()
        if self.status.text().startswith("Add photos"):
            self._say("")  # that request is answered (or moot) now
        if self._continue_output and paths != self._continue_paths:  # other photos: a new GeoPackage again
            if self.output.filePath() == self._continue_output:
                self.output.setFilePath("")
            self._continue_output = ""
        if not paths:
            self.count_label.setText("Add photos or folders, or drop them here.")
            return
        total = self.photo_list.total()
        folders = sum(1 for p in paths if p in self.photo_list.counts)
        files = len(paths) - folders
        named = ", ".join(
            part
            for part in (
                f"{files} photo{'s' if files != 1 else ''}" if files else "",
                f"{folders} folder{'s' if folders != 1 else ''}" if folders else "",
            )
            if part
        )
        found = "counting…" if total is None else f"{total} photo{'s' if total != 1 else ''} to answer"
        self.count_label.setText(f"{named}: {found}")

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Photos to geolocate", "", PHOTO_FILTER)
        self.add_paths(files)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder of photos (searched recursively)")
        if folder:
            self.add_paths([folder])

    def _remove_selected(self) -> None:
        for item in self.photo_list.selectedItems():
            self.photo_list.forget(item.data(PATH_ROLE))
            self.photo_list.takeItem(self.photo_list.row(item))
        self._update_count()

    def _layer_changed(self, layer) -> None:
        self.field_combo.setLayer(layer)
        if layer is not None and guess_photo_field(layer.fields()):
            self.field_combo.setField(guess_photo_field(layer.fields()))

    def add_from_layer(self) -> None:
        layer, field = self.layer_combo.currentLayer(), self.field_combo.currentField()
        if layer is None or not field:
            self._say("Choose a photo layer and the field that holds the photos' paths.")
            return
        features = layer.selectedFeatures() or list(layer.getFeatures())
        self.add_paths(photo_paths(features, field))

    def area(self):
        """The area of interest as the engine takes it, in EPSG:4326, or None for the whole world."""
        choice = self.area_combo.currentData()
        if choice == "extent":
            canvas = self.iface.mapCanvas()
            return area_from_extent(canvas.extent(), canvas.mapSettings().destinationCrs())
        if choice == "polygons":
            layer = self.area_layer.currentLayer()
            if layer is None:
                raise InputError("choose a polygon layer for the area of interest")
            features = layer.selectedFeatures() or list(layer.getFeatures())
            return area_from_polygons(features, layer.crs(), layer.name())
        return None

    def title(self) -> str:
        texts = [self.text_edit.text().strip()] if self.text_edit.text().strip() else []
        return run_title(self.paths(), texts, self.photo_list.total())

    def default_output(self) -> str:
        slug = re.sub(r"[^\w.-]+", "_", self.title().split(" — ")[0]).strip("_.")[:40] or "geoclip"
        return str(self.output_folder() / f"{slug}_{datetime.now():%Y%m%d_%H%M%S}.gpkg")

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> None:
        from ..backend.pipeline.run import WORLD_COMBINED, WORLD_EACH, RasterOptions, RunRequest, default_raster_folder

        texts = [self.text_edit.text().strip()] if self.text_edit.text().strip() else []
        if not self.paths() and not texts:
            self._say("Add photos or a folder, or type a text query, first.")
            self.tabs.setCurrentIndex(0)
            return
        try:
            area = self.area()
        except (InputError, Exception) as exc:
            self._say(f"Area of interest: {exc}")
            self.tabs.setCurrentIndex(1)
            return
        if not self.list_devices():
            return
        settings = replace(load_settings(), device=self.device_combo.currentData() or "auto")
        save_settings(settings)
        self.remember()
        output = self.output.filePath() or self.default_output()
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        rasters = None
        if self.rasters_check.isChecked():
            world = WORLD_EACH if self.world_per_photo.isChecked() else WORLD_COMBINED
            rasters = RasterOptions(default_raster_folder(output), world=world)
        request = RunRequest(
            photos=self.paths(),
            texts=texts,
            top_k=self.top_k.value(),
            area=area,
            output=output,
            rasters=rasters,
            fuse=self.fuse_check.isChecked(),
            confidence=self.confidence_check.isChecked(),
            photo_count=self.photo_list.total() if self.paths() else 0,  # None while still counting
        )
        self.task = GeolocateTask(request, settings)
        self._named, self._last_output = (self.paths(), texts), output  # the title once the run has counted
        self.task.progress.connect(self._on_progress)
        self.task.done.connect(self._finished)
        self.failures.setRowCount(0)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._cancel_asked = False
        self.quitting = False
        self._say("Starting…")
        window = self.iface.mainWindow()
        if window is not None:
            window.installEventFilter(self._quit_watcher)
        QgsApplication.taskManager().addTask(self.task)

    def _on_progress(self, event) -> None:
        """Each stage with its own label, percentage and time left; a busy bar while a stage has no count."""
        if event.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(round(100 * event.fraction)))
        if not self._cancel_asked:
            self._say(event.text())

    def cancel(self) -> None:
        if self.task is not None:
            self._cancel_asked = True
            self._say("Cancelling after the current batch… the answers so far are kept.")
            self.task.cancel()

    def _finished(self, result) -> None:
        window = self.iface.mainWindow()
        if window is not None:
            window.removeEventFilter(self._quit_watcher)
        self.task = None
        self.cancel_button.setEnabled(False)
        self._update_run_state()
        self._swallow_task_notice(result.description)
        if self.quitting:  # QGIS is closing: nothing to add to a project about to go; let it quit
            QgsMessageLog.logMessage(f"stopped to quit QGIS; answers so far are in {self._last_output}", LOG_TAG)
            self.runFinished.emit(result)
            exit_action = getattr(self.iface, "actionExit", None)
            if exit_action is not None:
                QTimer.singleShot(0, exit_action().trigger)
            return
        outcome = result.outcome
        if result.error or outcome is None:
            self._failed(result)
            self.runFinished.emit(result)
            return
        self._clear_error()
        names, texts = self._named
        self._title = run_title(names, texts, outcome.total - len(texts))
        title = self._title + (" (cancelled)" if outcome.cancelled else "")
        self.last_layers = add_run(
            outcome, title, self.iface.mapCanvas(), basemap=self.basemap_check.isChecked(), output=self._last_output
        )
        self._show_results(result)
        self.judge_button.setEnabled(True)
        self.resultsUpdated.emit(self._last_output)
        bar = self.iface.messageBar()
        if outcome.cancelled:
            self.progress.setRange(0, 100)
            self.progress.setValue(0)
            self.progress.setTextVisible(False)  # the status line says how far it got
            line = cancelled_text(result)
            # Run again continues this GeoPackage: the photos it holds are skipped.
            self._continue_output, self._continue_paths = self._last_output, self.paths()
            self.output.setFilePath(self._last_output)
            self._say(f"{line}, in {Path(self._last_output).name}. Press Run to continue it.")
            where = bar_text(Path(self._last_output).name)
            bar.pushMessage("GeoCLIP", f"{line} in {where}", Qgis.MessageLevel.Warning, 10)
        else:
            self._continue_output = ""
            self.progress.setRange(0, 100)
            self.progress.setValue(100)
            summary = outcome.summary
            self._say(f"Done: {summary.first_line()}.")
            level = Qgis.MessageLevel.Warning if outcome.failures else Qgis.MessageLevel.Success
            item = bar.createMessage("GeoCLIP", self._bar_line(result))
            self._offer_map_tips(bar, item)  # in the run's own notice, not under it
            bar.pushWidget(item, level, 10)
        self.runFinished.emit(result)

    def show_project_runs(self, paths: list[str]) -> None:
        """A reopened project's runs: the latest is the one Look at each answer… opens."""
        if self.task is not None:
            return
        if not paths:
            self._last_output = ""
            self.summary.setText("No run yet.")
            self.judge_button.setEnabled(False)
            return
        self._last_output = paths[0]
        more = f" (and {len(paths) - 1} earlier)" if len(paths) > 1 else ""
        self.summary.setText(
            f"This project holds the run <b>{html.escape(Path(paths[0]).name)}</b>{html.escape(more)}. "
            "Look at each answer… opens it in the results panel."
        )
        self.summary.setToolTip(tooltip(paths[0]))
        self.judge_button.setEnabled(True)

    def _bar_line(self, result) -> str:
        summary = result.outcome.summary
        line = f"{summary.answered} of {result.outcome.total} answered"
        if summary.failed_count:
            line += f", {summary.failed_count} not answered (see the dock's Results)"
        if summary.skipped_count:
            line += f", {summary.skipped_count} skipped"
        return line

    def _failed(self, result) -> None:
        """A short notice with Details in the message bar, the whole story in the GeoCLIP log."""
        error = result.error or "the run stopped before it started"
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self._say(f"Run failed: {error}")
        full = error + (f"\n\nDetails: {result.detail}" if result.detail and result.detail != error else "")
        QgsMessageLog.logMessage(f"run failed: {full}", LOG_TAG, Qgis.MessageLevel.Critical)
        short = re.split(r"(?<=[.:])\s", error.strip(), maxsplit=1)[0].rstrip(":")
        bar = self.iface.messageBar()
        self._clear_error()
        item = bar.createMessage("GeoCLIP", bar_text(short))
        details = QPushButton("Details")
        details.clicked.connect(lambda: show_message(self, "GeoCLIP: the run failed", full, warning=True))
        item.layout().addWidget(details)
        if self.model_problem is not None or result.detail != result.error:
            fix = QPushButton("Models…")
            fix.clicked.connect(self.open_models_dialog)
            item.layout().addWidget(fix)
        self.error_item = item
        bar.pushWidget(item, Qgis.MessageLevel.Critical, 0)
        self.refresh_model_state()

    def _clear_error(self) -> None:
        if self.error_item is not None:
            try:
                self.iface.messageBar().popWidget(self.error_item)
            except RuntimeError:  # closed by the user already
                pass
            self.error_item = None

    def _swallow_task_notice(self, description: str) -> None:
        """QGIS announces any long task's end in the message bar ("Task complete: GeoCLIP: 40 photos"),
        after this method; the dock's own notice says more, so that one is removed."""
        bar = self.iface.messageBar()

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

    def _show_results(self, result) -> None:
        outcome, summary = result.outcome, result.outcome.summary
        lines = [f"<b>{html.escape(self._title)}</b>"]
        answered = f"{summary.answered} of {outcome.total} answered"
        if summary.failed_count:
            answered += f", {summary.failed_count} not answered (below)"
        lines.append(answered + ".")
        for reason, count in summary.skipped.most_common():
            lines.append(f"Skipped {count}: {html.escape(reason)}.")
        lines += [html.escape(note) for note in summary.notes]
        per_answer = summary.seconds_per_answer
        if per_answer:
            lines.append(
                f"Took {summary.seconds:.1f} s: {summary.load_seconds:.1f} s loading the model and caches, "
                f"then {per_answer:.2f} s per answer."
            )
        if self._last_output:
            folder = QUrl.fromLocalFile(str(Path(self._last_output).parent)).toString()
            lines.append(
                f"Written to {html.escape(Path(self._last_output).name)} (<a href='{folder}'>open its folder</a>)."
            )
        self.summary.setText("<br>".join(lines))
        self.summary.setToolTip(tooltip(self._last_output))
        self._show_accuracy(summary.accuracy())
        self._show_failures(outcome.failures)
        self.tabs.setCurrentIndex(2)

    def _show_accuracy(self, table) -> None:
        self.accuracy_box.setVisible(bool(table))
        if not table:
            return
        from ..backend.geo import THRESHOLDS_KM

        rows = [(f"within {km} km", f"{table[f'acc_{km}km']:.1f} %") for km in THRESHOLDS_KM]
        rows.append(("median error", f"{table['median_km']:,.0f} km"))
        if table.get("acc_country") is not None:
            rows.append(("right country", f"{table['acc_country']:.1f} %"))
        self.accuracy_box.setTitle(f"Top-1 error ({table['photos']} photos with GPS)")
        self.accuracy.setRowCount(len(rows))
        for row, (label, value) in enumerate(rows):
            self.accuracy.setItem(row, 0, QTableWidgetItem(label))
            cell = QTableWidgetItem(value)
            cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.accuracy.setItem(row, 1, cell)
        self.accuracy.resizeRowsToContents()
        height = self.accuracy.horizontalHeader().height() + sum(self.accuracy.rowHeight(r) for r in range(len(rows)))
        self.accuracy.setFixedHeight(height + 2 * self.accuracy.frameWidth())

    def _show_failures(self, failures) -> None:
        self.failures.setRowCount(len(failures))
        for row, (photo, reason) in enumerate(failures):
            name = QTableWidgetItem(Path(photo).name or photo)
            name.setToolTip(tooltip(photo))
            why = QTableWidgetItem(reason)
            why.setToolTip(tooltip(reason))
            self.failures.setItem(row, 0, name)
            self.failures.setItem(row, 1, why)
            QgsMessageLog.logMessage(f"not answered: {photo}: {reason}", LOG_TAG, Qgis.MessageLevel.Warning)
        self.failures_box.setTitle(f"Photos not answered ({len(failures)})")
        self.failures_box.setVisible(bool(failures))
        self._fit_failures()

    def _fit_failures(self) -> None:
        """Reasons wrap over as many lines as they need; the table is as tall as its first ten rows."""
        self.failures.resizeRowsToContents()
        rows = min(self.failures.rowCount(), 10)
        shown = sum(self.failures.rowHeight(r) for r in range(rows))
        self.failures.setFixedHeight(self.failures.horizontalHeader().height() + shown + 2 * self.failures.frameWidth())

    def _offer_map_tips(self, bar, item) -> None:
        """Once: the answers' map tips (photo preview) need QGIS's map tips on; the offer is a button in
        the run's notice."""
        saved = load_dock_settings()
        action = getattr(self.iface, "actionMapTips", None)
        if saved.map_tips_hint_shown or action is None or action().isChecked():
            return
        save_dock_settings(replace(saved, map_tips_hint_shown=True))
        button = QPushButton("Show photos on hover")
        button.setToolTip("Turns QGIS's map tips on: hovering an answer shows its photo")
        button.clicked.connect(lambda: (action().setChecked(True), _pop(bar, item)))
        item.layout().addWidget(button)

    # -- dialogs ---------------------------------------------------------------------------------

    def open_install_dialog(self) -> None:
        from ..install.install_dialog import InstallDialog

        dialog = InstallDialog(self)
        dialog.installed.connect(self._installed)
        dialog.exec()

    def _installed(self) -> None:
        self._check_dependencies()
        self.dependenciesInstalled.emit()

    def open_models_dialog(self) -> None:
        from .models_dialog import ModelsDialog

        focus = self.model_problem.code if self.model_problem else None
        if focus is None and self.state and self.state.problems:
            focus = self.state.problems[0].code
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # it reads the weight folders before it shows
        try:
            self.models_dialog = ModelsDialog(self, focus=focus)
        finally:
            QApplication.restoreOverrideCursor()
        self.models_dialog.headsInstalled.connect(self.dependenciesInstalled)
        self.models_dialog.exec()
        self.refresh_model_state()
