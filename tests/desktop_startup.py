"""Runs inside the real QGIS desktop (as the profile's python/startup.py) for the end-to-end test.

A new user's first hour, in stages the test photographs (talking to it through files in
$GEOCLIP_E2E_DIR: ``<stage>.ready`` when the screen shows it, ``<stage>.done`` once photographed):

1. first-run: the dock opened from the toolbar before any CLIP backbone is there: Run is off, the
   dock says why and offers Fix….
2. models: Fix… opens the Models dialog at the fix; the CLIP folder is chosen there and saved.
3. run: photos and a folder with broken files, rasters on; the dock's Results and the map.
4. raster: one photo's local raster with its answers.
5. judge: the results panel on one answer, and its case report.
6. places: a hint and a country by name in the Options tab; each place's radius on the map.
7. cancelled: a long run cancelled after a few photos.
8. embedding: Processing's embedding map of the world at 0.25°, with the Processing toolbox open.
9. quit: a long run, then Quit: QGIS asks once, the run stops, QGIS quits.
"""

import json
import os
import sys
import time

from qgis.core import QgsApplication, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QDockWidget, QMessageBox
from qgis.utils import iface

sys.path.insert(0, os.environ["GEOCLIP_E2E_TESTS"])  # desktop_stages, shared with the other script
from desktop_stages import E2E, HEIGHT, WIDTH, dock, kept, later, plugin, poll, report, save, stage

report["quit_boxes"] = []


def bar_texts():
    bar = iface.messageBar()
    return [f"{item.title()}: {item.text()}" for item in bar.items()]


def start():
    iface.mainWindow().setGeometry(0, 0, WIDTH, HEIGHT)  # Xvfb has no window manager to maximise it
    report["plugin_loaded"] = plugin() is not None
    if plugin() is None:
        save()
        return
    plugin().action.trigger()  # the toolbar button
    report["dock_visible"] = dock().isVisible()
    later(2000, first_run)


def first_run():
    report["first_run"] = {
        "run_enabled": dock().run_button.isEnabled(),
        "run_tooltip": dock().run_button.toolTip(),
        "model": dock().model_label.text(),
        "button": dock().models_button.text(),
    }
    stage("first-run", open_models)


def open_models():
    later(2500, models_shown)
    dock().models_button.click()  # Fix…: the Models dialog, modal; timers keep running in its loop
    report["after_models"] = {
        "run_enabled": dock().run_button.isEnabled(),
        "model": dock().model_label.text(),
    }
    later(500, run_photos)


def models_shown():
    dialog = dock().models_dialog
    report["models_dialog"] = {
        "fix": dialog.fix_text.text(),
        "fix_visible": dialog.fix_box.isVisible(),
        "report": dialog.report.toPlainText(),
    }
    stage("models", choose_clip)


def choose_clip():
    dialog = dock().models_dialog
    dialog.clip.setFilePath(os.environ["GEOCLIP_E2E_CLIP"])  # what choosing the folder with "…" does
    poll(lambda: dialog.checksums_done, lambda: finish_models(dialog))


def finish_models(dialog):
    report["models_dialog"]["after_choosing"] = dialog.report.toPlainText()
    dialog.save()


def run_photos():
    d = dock()
    d.add_paths(json.loads(os.environ["GEOCLIP_E2E_PHOTOS"]))
    d.output.setFilePath(str(E2E / "holiday.gpkg"))
    d.rasters_check.setChecked(True)
    d.confidence_check.setChecked(True)
    d.runFinished.connect(run_finished)
    report["run_started"] = time.time()
    d.run_button.click()


def run_finished(result):
    d = dock()
    d.runFinished.disconnect(run_finished)
    report["error"] = result.error
    report["answered"] = result.outcome.summary.answered if result.outcome else 0
    report["failures"] = result.outcome.failures if result.outcome else []
    report["layers"] = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
    report["tree"] = [node.name() for node in QgsProject.instance().layerTreeRoot().children()]
    report["status"] = d.status.text()
    report["bar"] = bar_texts()
    later(4000, lambda: stage("run", raster_stage))


def raster_stage():
    layers = dock().last_layers
    top = [f.geometry().asPoint() for f in layers["points"].getFeatures() if f["rank"] == 1]
    locals_ = [r for r in layers["rasters"] if "_local" in r.name()]  # <photo>_local1, <photo>_local2...
    # a photo whose top-1 answer lies inside its local raster, so both show together
    local = next((r for r in locals_ if any(r.extent().contains(p) for p in top)), locals_[0] if locals_ else None)
    if local is not None:
        root = QgsProject.instance().layerTreeRoot()
        for raster in layers["rasters"]:  # show one photo's local raster with its points
            root.findLayer(raster.id()).setItemVisibilityChecked(raster is local)
        node = root.findLayer(local.id())
        node.setExpanded(True)
        parent = node.parent()
        while parent is not None:
            parent.setItemVisibilityChecked(True)
            parent.setExpanded(True)
            parent = parent.parent()
        box = QgsRectangle(local.extent())
        box.grow(0.3)
        iface.mapCanvas().setExtent(box)
        iface.mapCanvas().refresh()
        report["stage_two_raster"] = local.name()
    later(4000, lambda: stage("raster", judge_stage))


def judge_stage():
    """The results panel beside the dock, a photo with EXIF selected, its confidence areas on the map;
    then its case report as a PDF."""
    d = dock()
    d.judge_button.click()  # as the user does, from the dock's Results tab
    panel = plugin().results  # tabbed beside the dock by the plugin
    root = QgsProject.instance().layerTreeRoot()
    for raster in d.last_layers["rasters"]:
        root.findLayer(raster.id()).setItemVisibilityChecked(False)
    names = [panel.list.item(i).text().splitlines()[0] for i in range(panel.list.count())]
    panel.list.setCurrentRow(names.index("DSCN0010.jpg"))
    panel.only_button.setChecked(True)
    panel.candidates.selectRow(0)
    top = panel.current().result.candidates[0]
    panel.zoom_to(top.lat, top.lon, half_side=25)
    report["judge"] = {
        "answers": names,
        "info": panel.info.text(),
        "regions": panel.regions.text(),
        "candidates": [panel.candidates.item(r, 2).text() for r in range(panel.candidates.rowCount())],
        "photo": not panel.photo.pixmap().isNull() if panel.photo.pixmap() is not None else False,
        "areas": [
            layer.name()
            for layer in QgsProject.instance().mapLayers().values()
            if layer.name().startswith("Confidence areas")
        ],
    }
    made = panel.export_report(str(E2E / "case_report.pdf"))
    report["judge"]["report"] = [str(path) for path in made] if made else []
    later(4000, lambda: stage("judge", leave_judging))


def leave_judging():
    panel = plugin().results
    panel.only_button.setChecked(False)
    panel.close()  # as a user closes it; the dock's tab comes back
    dock().raise_()
    places_stage()


PLACES_HINT, PLACES_COUNTRY = "a harbour town in Brazil", "Brazil"


def places_stage():
    """A photo answered as distinct places, steered by a hint, only in a country chosen by name."""
    d = dock()
    d.clear_paths()
    photos = json.loads(os.environ["GEOCLIP_E2E_PHOTOS"])
    d.add_paths([p for p in photos if os.path.basename(p) == "Kauai.png"])
    d.output.setFilePath(str(E2E / "places.gpkg"))
    d.rasters_check.setChecked(False)
    d.confidence_check.setChecked(False)
    d.tabs.setCurrentIndex(1)  # the Options tab, as a user fills it in
    d.places_combo.setCurrentIndex(d.places_combo.findData("refined"))
    d.hint_edit.setText(PLACES_HINT)
    d.hint_edit.setCursorPosition(0)  # read from its start, as typed text is once the field is left
    d.area_combo.setCurrentIndex(d.area_combo.findData("names"))
    d.area_name.setEditText(PLACES_COUNTRY)
    d.runFinished.connect(places_finished)
    d.run_button.click()


def places_finished(result):
    d = dock()
    d.runFinished.disconnect(places_finished)
    layers = d.last_layers
    radii, points = layers.get("radii"), layers.get("points")
    report["places"] = {
        "error": result.error,
        "answered": result.outcome.summary.answered if result.outcome else 0,
        "group": [child.name() for child in layers["group"].children()] if layers.get("group") else [],
        "radii": radii.featureCount() if radii is not None else 0,
        "areas": sorted({f["area"] for f in points.getFeatures()}) if points is not None else [],
        "hints": sorted({f["hint"] for f in points.getFeatures()}) if points is not None else [],
        "names_listed": d.area_name.count(),
    }
    if radii is not None and radii.featureCount():
        # the most probable place with the other places' circles within a few degrees of it
        top = next(f for f in radii.getFeatures() if f["rank"] == 1).geometry().boundingBox()
        view = QgsRectangle(top)
        for feature in radii.getFeatures():
            box = feature.geometry().boundingBox()
            if abs(box.center().x() - top.center().x()) < 5 and abs(box.center().y() - top.center().y()) < 4:
                view.combineExtentWith(box)
        view.grow(0.8)
        view.setXMaximum(view.xMaximum() + 1.2)  # room for the labels, written east of their places
        iface.mapCanvas().setExtent(view)
        iface.mapCanvas().refresh()
    d.tabs.setCurrentIndex(1)  # the run opened Results: show the Options it was asked with
    later(4000, lambda: stage("places", leave_places))


def leave_places():
    d = dock()
    d.hint_edit.clear()
    d.area_combo.setCurrentIndex(d.area_combo.findData("world"))
    cancel_stage()


def cancel_stage():
    d = dock()
    d.clear_paths()
    d.add_paths([os.environ["GEOCLIP_E2E_MANY"]])
    d.output.setFilePath(str(E2E / "long_run.gpkg"))
    d.runFinished.connect(cancel_finished)
    started = time.monotonic()
    report["cancel_progress"] = []

    def answered_some():
        text = d.status.text()
        report["cancel_progress"].append(text)
        return (
            time.monotonic() - started > 7
            and text.startswith("Answering")
            and not text.startswith("Answering photos: 0 ")
        )

    poll(lambda: d.task is not None, lambda: poll(answered_some, d.cancel_button.click, every=100))
    d.run_button.click()


def cancel_finished(result):
    d = dock()
    d.runFinished.disconnect(cancel_finished)
    report["cancelled"] = {
        "cancelled": result.cancelled,
        "answered": result.outcome.summary.answered if result.outcome else None,
        "total": result.outcome.total if result.outcome else None,
        "status": d.status.text(),
        "progress": d.progress.value(),
        "description": result.description,
    }
    later(4000, cancel_shown)


def cancel_shown():
    report["cancelled"]["bar"] = bar_texts()
    stage("cancelled", embedding_stage)


def embedding_stage():
    import processing

    root = QgsProject.instance().layerTreeRoot()
    for node in root.children():
        if node.customProperty("geoclip/run"):
            node.setItemVisibilityChecked(False)
            node.setExpanded(False)
    started = time.monotonic()
    outputs = processing.runAndLoadResults(
        "geoclip:embedding_map", {"CELL": 0.25, "BANDS": 0, "OUTPUT": str(E2E / "embedding_map.tif")}
    )
    report["embedding"] = {"seconds": time.monotonic() - started, "output": outputs.get("OUTPUT")}
    layer = next((lay for lay in QgsProject.instance().mapLayers().values() if lay.name() == "Embedding map"), None)
    if layer is not None:
        report["embedding"]["bands"] = layer.bandCount()
        report["embedding"]["renderer"] = type(layer.renderer()).__name__
    toolbox = next((w for w in iface.mainWindow().findChildren(QDockWidget) if "Processing" in w.windowTitle()), None)
    if toolbox is not None:
        toolbox.setVisible(True)
        toolbox.raise_()
    report["embedding"]["run_visible"] = dock().run_button.isVisible()
    iface.mapCanvas().setExtent(QgsRectangle(-180, -90, 180, 90))
    iface.mapCanvas().refresh()
    later(5000, lambda: stage("embedding", quit_stage))


def quit_stage():
    d = dock()
    # A saved project of the user's own: quitting asks nothing about it. (The test's layers are under /tmp,
    # which QGIS calls temporary and asks about, so they go first.)
    QgsProject.instance().clear()
    QgsProject.instance().write(str(E2E / "project.qgz"))
    d.clear_paths()
    d.add_paths([os.environ["GEOCLIP_E2E_MANY"]])
    d.output.setFilePath(str(E2E / "quit_run.gpkg"))
    d.rasters_check.setChecked(False)
    QgsApplication.instance().aboutToQuit.connect(quitting)
    poll(lambda: d.task is not None and d.status.text().startswith("Answering"), press_quit)
    d.run_button.click()


def press_quit():
    report["quit_pressed"] = time.time()
    report["quit_tasks"] = QgsApplication.taskManager().countActiveTasks()
    save()
    watcher = QTimer()
    watcher.timeout.connect(answer_boxes)
    watcher.start(250)
    kept.append(watcher)
    iface.actionExit().trigger()  # Project → Exit QGIS (Ctrl+Q)


def answer_boxes():
    box = QApplication.activeModalWidget()
    if not isinstance(box, QMessageBox) or getattr(box, "_answered", False):
        return
    box._answered = True
    report["quit_boxes"].append(f"{box.windowTitle()}: {box.text()}")
    save()
    yes = box.button(QMessageBox.StandardButton.Yes)
    (yes or box.button(QMessageBox.StandardButton.Discard) or box.buttons()[-1]).click()


def quitting():
    report["quit"] = {"seconds": time.time() - report["quit_pressed"], "bar": bar_texts()}
    save()


iface.initializationCompleted.connect(lambda: QTimer.singleShot(1000, start))
