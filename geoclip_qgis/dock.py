"""The GeoCLIP dock: pick photos (files, a folder, drag and drop, a photo layer) or type a text query,
choose top-k, device and output, run in the background with progress and cancel, get layers."""

from __future__ import annotations

import tempfile
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
from qgis.gui import QgsDockWidget, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import deps
from .inputs import InputError, area_from_extent, area_from_polygons, guess_photo_field, photo_paths
from .layers import add_run
from .session import load_settings, save_settings
from .tasks import LOG_TAG, GeolocateTask

PHOTO_FILTER = "Photos (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp *.heic *.heif);;All files (*)"


class PhotoList(QListWidget):
    """The photos and folders to run; accepts drops from the file manager and the QGIS Browser."""

    pathsDropped = pyqtSignal(list)  # noqa: N815 - Qt's naming for signals

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)

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


class GeoCLIPDock(QgsDockWidget):
    runFinished = pyqtSignal(object)  # noqa: N815 - Qt's naming for signals  # RunOutcome plus the layers added, for whoever listens (tests)

    def __init__(self, iface, parent=None):
        super().__init__("GeoCLIP", parent)
        self.setObjectName("GeoCLIPDock")
        self.iface = iface
        self.task: GeolocateTask | None = None
        self.last_layers: dict = {}
        self._build()
        self._check_dependencies()

    # -- layout ----------------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)

        photos = QGroupBox("Photos")
        photos_layout = QVBoxLayout(photos)
        self.photo_list = PhotoList()
        self.photo_list.pathsDropped.connect(self.add_paths)
        photos_layout.addWidget(self.photo_list)
        buttons = QHBoxLayout()
        for text, slot in (
            ("Add photos…", self._pick_files),
            ("Add folder…", self._pick_folder),
            ("Remove", self._remove_selected),
            ("Clear", self.photo_list.clear),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        photos_layout.addLayout(buttons)
        from_layer = QHBoxLayout()
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PointLayer)
        self.field_combo = QgsFieldComboBox()
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())
        add_layer = QPushButton("Add selected")
        add_layer.setToolTip("Add the photos of the selected features (all features if none is selected)")
        add_layer.clicked.connect(self.add_from_layer)
        from_layer.addWidget(self.layer_combo, 2)
        from_layer.addWidget(self.field_combo, 1)
        from_layer.addWidget(add_layer)
        photos_layout.addLayout(from_layer)
        layout.addWidget(photos)

        text = QGroupBox("Or describe a place (text query)")
        text_layout = QHBoxLayout(text)
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("e.g. a tropical beach with palm trees")
        text_layout.addWidget(self.text_edit)
        layout.addWidget(text)

        options = QFormLayout()
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 100)
        self.top_k.setValue(5)
        options.addRow("Candidates per photo", self.top_k)
        self.device_combo = QComboBox()
        self.device_combo.addItem("Automatic (GPU if present)", "auto")
        self.device_combo.addItem("CPU", "cpu")
        options.addRow("Device", self.device_combo)
        self.area_combo = QComboBox()
        self.area_combo.addItem("Whole world", "world")
        self.area_combo.addItem("Current map extent", "extent")
        self.area_combo.addItem("Selected polygons of a layer", "polygons")
        self.area_layer = QgsMapLayerComboBox()
        self.area_layer.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        options.addRow("Area of interest", self.area_combo)
        options.addRow("", self.area_layer)
        self.rasters_check = QCheckBox("Probability rasters (world 0.25° + local 0.01°)")
        self.world_per_photo = QCheckBox("One world raster per photo (else one for the run)")
        self.fuse_check = QCheckBox("Also one joint answer (photos of one place)")
        options.addRow(self.rasters_check)
        options.addRow(self.world_per_photo)
        options.addRow(self.fuse_check)
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        self.output.setToolTip("Empty: a new GeoPackage in the project's folder (or a temporary folder)")
        options.addRow("Output GeoPackage", self.output)
        layout.addLayout(options)

        run_row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        models = QPushButton("Models…")
        models.clicked.connect(self.open_models_dialog)
        self.install_button = QPushButton("Install dependencies…")
        self.install_button.clicked.connect(self.open_install_dialog)
        self.install_button.setVisible(False)
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(models)
        run_row.addWidget(self.install_button)
        layout.addLayout(run_row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))  # the accuracy table lines up
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        self.failures = QTableWidget(0, 2)
        self.failures.setHorizontalHeaderLabels(["Photo not answered", "Reason"])
        self.failures.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.failures.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.failures.setVisible(False)
        layout.addWidget(self.failures)
        layout.addStretch(1)
        self.setWidget(body)

    def _check_dependencies(self) -> None:
        missing = deps.missing()
        self.install_button.setVisible(bool(missing))
        self.run_button.setEnabled(not missing)
        if missing:
            self.status.setText(deps.explanation(missing))
            self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            return
        self.status.setText("")
        try:
            from .backend.device import available_devices

            for device_id, label in available_devices()[2:]:  # auto and cpu are already there
                if self.device_combo.findData(device_id) < 0:
                    self.device_combo.addItem(label, device_id)
        except Exception as exc:  # a broken torch install: say so, keep the dock usable for settings
            self.run_button.setEnabled(False)
            self.status.setText(f"torch is installed but does not load in this QGIS: {exc}")
            return
        saved = load_settings().device
        index = self.device_combo.findData(saved)
        self.device_combo.setCurrentIndex(max(index, 0))

    # -- inputs ----------------------------------------------------------------------------------

    def paths(self) -> list[str]:
        return [self.photo_list.item(i).text() for i in range(self.photo_list.count())]

    def add_paths(self, paths) -> None:
        present = set(self.paths())
        for path in paths:
            if path and path not in present:
                self.photo_list.addItem(str(path))
                present.add(path)

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Photos to geolocate", "", PHOTO_FILTER)
        self.add_paths(files)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder of photos (searched recursively)")
        if folder:
            self.add_paths([folder])

    def _remove_selected(self) -> None:
        for item in self.photo_list.selectedItems():
            self.photo_list.takeItem(self.photo_list.row(item))

    def _layer_changed(self, layer) -> None:
        self.field_combo.setLayer(layer)
        if layer is not None and guess_photo_field(layer.fields()):
            self.field_combo.setField(guess_photo_field(layer.fields()))

    def add_from_layer(self) -> None:
        layer, field = self.layer_combo.currentLayer(), self.field_combo.currentField()
        if layer is None or not field:
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

    def default_output(self) -> str:
        home = QgsProject.instance().homePath()
        folder = Path(home) if home else Path(tempfile.gettempdir()) / "geoclip"
        return str(folder / f"geoclip_{datetime.now():%Y%m%d_%H%M%S}.gpkg")

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> None:
        from .backend.run import WORLD_COMBINED, WORLD_EACH, RasterOptions, RunRequest, default_raster_folder

        texts = [self.text_edit.text().strip()] if self.text_edit.text().strip() else []
        if not self.paths() and not texts:
            self.status.setText("Add photos or a folder, or type a text query, first.")
            return
        try:
            area = self.area()
        except (InputError, Exception) as exc:
            self.status.setText(f"Area of interest: {exc}")
            return
        settings = replace(load_settings(), device=self.device_combo.currentData() or "auto")
        save_settings(settings)
        output = self.output.filePath() or self.default_output()
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
        )
        self.task = GeolocateTask(request, settings)
        self.task.status.connect(self.status.setText)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.task.done.connect(self._finished)
        self.failures.setRowCount(0)
        self.failures.setVisible(False)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Starting…")
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.status.setText("Cancelling after the current batch…")
            self.task.cancel()

    def _finished(self, result) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.task = None
        bar = self.iface.messageBar()
        outcome = result.outcome
        if result.error or outcome is None:
            error = result.error or "the run stopped before it started"
            self.status.setText(f"Run failed: {error}")
            bar.pushMessage("GeoCLIP", error.splitlines()[0], Qgis.MessageLevel.Critical, 0)
            self.runFinished.emit(result)
            return
        title = f"GeoCLIP {datetime.now():%H:%M:%S}" + (" (cancelled)" if outcome.cancelled else "")
        self.last_layers = add_run(outcome, title, self.iface.mapCanvas())
        summary = outcome.summary.text()
        output = next((f.path for f in outcome.files if f.layer), "")
        self.status.setText(summary + (f"\nWritten to {output}" if output else ""))
        self.progress.setValue(100 if not outcome.cancelled else self.progress.value())
        self._show_failures(outcome.failures)
        level = Qgis.MessageLevel.Warning if outcome.failures or outcome.cancelled else Qgis.MessageLevel.Success
        bar.pushMessage(
            "GeoCLIP",
            outcome.summary.first_line() + (" — cancelled, answers so far kept" if outcome.cancelled else ""),
            level,
            10,
        )
        self.runFinished.emit(result)

    def _show_failures(self, failures) -> None:
        self.failures.setRowCount(len(failures))
        for row, (photo, reason) in enumerate(failures):
            self.failures.setItem(row, 0, QTableWidgetItem(photo))
            self.failures.setItem(row, 1, QTableWidgetItem(reason))
            QgsMessageLog.logMessage(f"not answered: {photo}: {reason}", LOG_TAG, Qgis.MessageLevel.Warning)
        self.failures.setVisible(bool(failures))

    def open_install_dialog(self) -> None:
        from .install_dialog import InstallDialog

        dialog = InstallDialog(self)
        dialog.installed.connect(self._check_dependencies)
        dialog.exec()

    def open_models_dialog(self) -> None:
        from .models_dialog import ModelsDialog

        ModelsDialog(self).exec()
