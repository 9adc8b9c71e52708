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
    settings.setValue("geoclip_qgis/clip", str(tiny_clip))
    settings.setValue("geoclip_qgis/precision", "fp32")
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

    QgsProject.instance().removeAllMapLayers()
    dock.photo_list.clear()
    dock.add_paths([str(p) for p in paths])
    dock.text_edit.setText(options.get("text", ""))
    dock.output.setFilePath(str(options["out"]))
    dock.rasters_check.setChecked(options.get("rasters", False))
    dock.fuse_check.setChecked(options.get("fuse", False))
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
    from qgis.core import QgsRasterLayer, QgsRuleBasedRenderer, QgsSingleBandPseudoColorRenderer

    dock = plugin.dock
    (photo_dir / "broken.jpg").write_text("not a photo")
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
    assert sorted(rule.filterExpression() for rule in renderer.rootRule().children()) == ['"rank" = 1', '"rank" > 1']
    assert points.labelsEnabled() and "<img" in points.mapTipTemplate()
    assert [a.name() for a in points.actions().actions()] == ["Open photo"]
    top = [f for f in points.getFeatures() if f["rank"] == 1]
    assert len(top) == 5 and all(f.geometry().asPoint().y() == pytest.approx(f["lat"]) for f in top)
    # the two camera photos carry EXIF GPS: a truth line each, labelled with km
    assert dock.last_layers["lines"].featureCount() == 2
    rasters = dock.last_layers["rasters"]
    combined = [r for r in rasters if r.name() == "all_answers_world"][0]
    assert isinstance(combined, QgsRasterLayer) and combined.crs().authid() == "EPSG:4326"
    assert combined.extent().toString(0) == "-180,-90 : 180,90"
    assert isinstance(combined.renderer(), QgsSingleBandPseudoColorRenderer)
    assert 5 <= len([r for r in rasters if "_local" in r.name()]) <= 10  # one or two per photo
    # failures are listed with their reason, never dropped
    assert not dock.failures.isHidden() and dock.failures.rowCount() == 1
    assert dock.failures.item(0, 0).text().endswith("broken.jpg")
    assert "not an image" in dock.failures.item(0, 1).text()
    assert "answered 5" in dock.status.text()
    # the map was zoomed to the answers
    extent = plugin.iface.canvas.extent()
    assert extent.contains(points.extent()) or extent.intersects(points.extent())


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
    started = time.monotonic()
    try:
        result = run_dock(plugin.dock, photos, out=tmp_path / "twenty.gpkg")
    finally:
        timer.stop()
        settings.setValue("geoclip_qgis/clip", previous)
    assert result.outcome.summary.answered == 20
    assert time.monotonic() - started > 2  # long enough to mean something
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 5 and max(gaps) <= 0.5, f"longest gap {max(gaps):.2f} s"


def test_cancel_stops_within_a_batch_and_keeps_answers(plugin, skimage_data, tmp_path):
    from test_batch import variants

    photos = variants([skimage_data / "chelsea.png", skimage_data / "rocket.jpg"], tmp_path / "many", 120)
    result = run_dock(plugin.dock, photos, out=tmp_path / "cancel.gpkg", cancel_after=5)
    assert result.cancelled and not result.error
    with sqlite3.connect(tmp_path / "cancel.gpkg") as db:
        per_photo = db.execute("SELECT photo, COUNT(*) FROM predictions GROUP BY photo").fetchall()
    assert 0 < len(per_photo) < 120
    assert all(count == 5 for _, count in per_photo)  # every written photo is whole
    assert len(per_photo) == result.outcome.summary.answered
    item = plugin.iface.bar.currentItem()
    assert item is not None and "cancelled" in item.text()


def test_text_query_and_map_extent_area(plugin, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle

    dock = plugin.dock
    plugin.iface.canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    plugin.iface.canvas.setExtent(QgsRectangle(-10, 35, 30, 60))
    result = run_dock(dock, [], out=tmp_path / "text.gpkg", text="a harbour with fishing boats", area="extent")
    assert not result.error
    points = dock.last_layers["points"]
    features = list(points.getFeatures())
    assert len(features) == 5 and features[0]["photo"] == "text: a harbour with fishing boats"
    west, south, east, north = (float(v) for v in features[0]["area"].split(" ")[-1].split(","))
    for feature in features:
        assert feature["area"].startswith("map extent")
        assert west <= feature["lon"] <= east and south <= feature["lat"] <= north
    assert west <= -9 and east >= 29  # the canvas extent (it may be wider: the canvas keeps its aspect)


def test_missing_dependencies_disable_run_with_an_explanation(plugin, monkeypatch):
    from geoclip_qgis import deps
    from geoclip_qgis.dock import GeoCLIPDock

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
    text = processing.run(
        "geoclip:geolocate_text", {"TEXT": "snowy mountain village", "TOP_K": 3, "OUTPUT": str(tmp_path / "text.gpkg")}
    )
    assert text["ANSWERED"] == 1


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
    from geoclip_qgis.backend.weights import heads_problem

    assert heads_problem(tmp_path / "heads") is None
    assert (tmp_path / "heads" / "manifest.json").is_file()
    assert 0 <= result["ACC_25KM_AFTER"] <= 100


def test_models_and_install_dialogs(plugin, tiny_clip):
    from qgis.PyQt.QtWidgets import QLabel

    from geoclip_qgis.install_dialog import InstallDialog
    from geoclip_qgis.models_dialog import ModelsDialog

    dialog = ModelsDialog(plugin.dock)
    text = dialog.report.toPlainText()
    assert "GeoCLIP heads: found in geoclip wheel" in text
    assert "CLIP backbone (ViT-L/14): found in" in text and str(tiny_clip) in text
    assert "torch " in text and "transformers " in text
    install = InstallDialog(plugin.dock)
    assert install.cpu.isChecked()  # no NVIDIA driver on this machine
    assert "geoclip_qgis/python" in install.findChildren(QLabel)[0].text()


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
        "fp32",
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
