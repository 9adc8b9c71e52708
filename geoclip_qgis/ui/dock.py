"""The GeoCLIP dock: the model's state up front, then three tabs — Input (photos, folders, drops, a
photo layer, a text query), Options (candidates, hint, device, area, rasters, output) and Results (summary,
accuracy, photos not answered) — each scrolling on its own, and Run, Cancel and the progress of each
stage below them, always in view.

This module holds what the dock keeps track of: the model's state and whether Run is on, the options
remembered between sessions, and the inputs. The rest is beside it:

- :mod:`.dock_layout` builds the widgets (each an attribute of the dock) wired to the methods here;
- :mod:`.photo_list` is the Input tab's list of photos and folders;
- :mod:`.dock_results` is the Results tab, filled when a run ends;
- :mod:`.dock_run` starts a run and finishes it (``self.runner``);
- :mod:`.dock_dialogs` opens the installer and the Models dialog.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from qgis.core import QgsProject
from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QFileDialog

from ..backend.model.model_state import Capability, ModelState, Problem, ProblemCode
from ..core import deps
from ..core.inputs import (
    InputError,
    area_from_extent,
    area_from_names,
    area_from_polygons,
    guess_photo_field,
    hint_from,
    photo_paths,
    top_k_limit,
)
from ..core.plain_text import as_html, tooltip
from ..core.session import (
    current_state,
    load_dock_settings,
    load_settings,
    runs_folder,
    save_dock_settings,
    save_settings,
)
from ..core.tasks import GeolocateTask
from ..map.names import run_title
from . import dock_dialogs
from .dock_layout import build
from .dock_run import Runner
from .photo_list import PATH_ROLE, PHOTO_FILTER


class GeoCLIPDock(QgsDockWidget):
    runFinished = pyqtSignal(object)  # noqa: N815 - Qt's naming for signals
    resultsWanted = pyqtSignal(str)  # noqa: N815 - the user asked for the results panel on this GeoPackage
    resultsUpdated = pyqtSignal(str)  # noqa: N815 - a run wrote this GeoPackage (an open panel follows it)
    dependenciesInstalled = pyqtSignal()  # noqa: N815 - packages or heads were installed (Processing can load)

    def __init__(self, iface, parent=None):
        super().__init__("GeoCLIP", parent)
        self.setObjectName("GeoCLIPDock")
        self.iface = iface
        self.state: ModelState | None = None  # the weights' state (session.current_state)
        self.model_problem: Problem | None = None  # what keeps Run off, if anything
        self._devices_listed = False  # GPUs are listed on demand (list_devices)
        self._area_names_listed = False  # countries and regions too (fill_area_names)
        self._started = False  # restoring the options at QGIS's start fills no list
        self.runner = Runner(self)
        build(self)
        self._restore()
        self._check_dependencies()
        self._started = True

    # -- the run's state, kept by its runner (dock_run) ------------------------------------------

    @property
    def task(self) -> GeolocateTask | None:
        return self.runner.task

    @property
    def last_layers(self) -> dict:
        return self.runner.last_layers

    @property
    def error_item(self):
        """The message bar's notice of the last failed run, gone with the next success."""
        return self.runner.error_item

    @property
    def quitting(self) -> bool:
        """QGIS is quitting: stop the run and let it quit."""
        return self.runner.quitting

    @quitting.setter
    def quitting(self, value: bool) -> None:
        self.runner.quitting = value

    def _say(self, text: str) -> None:
        """The status line under the progress bar (at most four lines; all of it in its tooltip)."""
        self.status.setText(text)
        self.status.setToolTip(tooltip(text))

    # -- state -----------------------------------------------------------------------------------

    def _restore(self) -> None:
        saved = load_dock_settings()
        self.places_combo.setCurrentIndex(max(self.places_combo.findData(saved.candidates), 0))
        self.top_k.setValue(saved.top_k)
        self.hint_weight.setValue(saved.hint_weight)
        self.area_combo.setCurrentIndex(max(self.area_combo.findData(saved.area), 0))
        self.area_name.setEditText(saved.area_name)
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
            self.places_combo.currentIndexChanged,
            self.top_k.valueChanged,
            self.hint_weight.valueChanged,
            self.area_combo.currentIndexChanged,
            self.area_name.currentTextChanged,
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
                candidates=self.places_combo.currentData() or "refined",
                hint_weight=self.hint_weight.value(),
                area=self.area_combo.currentData() or "world",
                area_name=self.area_name.currentText().strip(),
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
        names = self.area_combo.currentData() == "names"
        self.area_name.setVisible(names)
        self.area_name_label.setVisible(names)
        if names and self._started:
            self.fill_area_names()

    def _places_changed(self, *_args) -> None:
        """Distinct places are fewer than gallery points: the most an answer may list follows the choice."""
        self.top_k.setMaximum(top_k_limit(self.places_combo.currentData()))

    def _tab_shown(self, index: int) -> None:
        if index == 1:  # Options: the devices, and the names when an area is chosen by name
            self.list_devices()
            if self.area_combo.currentData() == "names":
                self.fill_area_names()

    def fill_area_names(self) -> None:
        """Offer every country and first-level region by name, once (reading them loads the gazetteer)."""
        if self._area_names_listed:
            return
        from ..core.inputs import area_name_choices

        try:
            names = area_name_choices()
        except Exception as exc:  # the name typed still works; only the list to choose from is missing
            self._say(f"The list of countries and regions could not be read: {exc}")
            return
        self._area_names_listed = True
        typed = self.area_name.currentText()
        self.area_name.blockSignals(True)
        self.area_name.addItems(names)
        self.area_name.setCurrentIndex(-1)
        self.area_name.setEditText(typed)
        self.area_name.blockSignals(False)

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
        self.runner.photos_changed(paths)
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
        if choice == "names":
            name = self.area_name.currentText().strip()
            if not name:
                raise InputError("type or choose a country or region")
            return area_from_names([name])
        return None

    def hint(self):
        """The hint typed, as the engine takes it; None when there is none."""
        return hint_from(self.hint_edit.text(), self.hint_weight.value())

    def title(self) -> str:
        texts = [self.text_edit.text().strip()] if self.text_edit.text().strip() else []
        return run_title(self.paths(), texts, self.photo_list.total())

    def default_output(self) -> str:
        slug = re.sub(r"[^\w.-]+", "_", self.title().split(" — ")[0]).strip("_.")[:40] or "geoclip"
        return str(self.output_folder() / f"{slug}_{datetime.now():%Y%m%d_%H%M%S}.gpkg")

    # -- running (dock_run) ----------------------------------------------------------------------

    def run(self) -> None:
        self.runner.start()

    def cancel(self) -> None:
        self.runner.cancel()

    def _on_progress(self, event) -> None:
        """Each stage with its own label, percentage and time left; a busy bar while a stage has no count."""
        if event.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(round(100 * event.fraction)))
        if not self.runner.cancel_asked:
            self._say(event.text())

    def show_project_runs(self, paths: list[str]) -> None:
        """A reopened project's runs: the latest is the one Look at each answer… opens."""
        if self.task is not None:
            return
        self.runner.last_output = paths[0] if paths else ""
        self.results_tab.show_project_runs(paths)

    # -- dialogs (dock_dialogs) ------------------------------------------------------------------

    def open_install_dialog(self) -> None:
        dock_dialogs.open_install_dialog(self)

    def _installed(self) -> None:
        self._check_dependencies()
        self.dependenciesInstalled.emit()

    def open_models_dialog(self) -> None:
        dock_dialogs.open_models_dialog(self)
