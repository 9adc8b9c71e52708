"""The results panel, headless: a run's answers listed with the photo, EXIF, candidates with place
names, regions and confidence areas; zoom to a candidate; only this answer's layers; "how likely
here?" from the map; the case report."""

from __future__ import annotations

import pytest
from qgis_support import StandInInterface, qgis_app, wait_for


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def run_file(engine, samples, kauai_png, tmp_path_factory):
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute

    gpkg = tmp_path_factory.mktemp("panel") / "answers.gpkg"
    photos = [str(samples / "gps" / "DSCN0010.jpg"), str(kauai_png)]
    execute(
        RunRequest(photos=photos, texts=["a harbour with fishing boats"], top_k=4, output=str(gpkg), confidence=True),
        engine,
    )
    return gpkg


@pytest.fixture
def panel(run_file, tiny_clip):
    qgis_app()
    from qgis.core import QgsProject, QgsSettings

    settings = QgsSettings()
    settings.setValue("geoclip_qgis/clip", str(tiny_clip))
    settings.setValue("geoclip_qgis/precision", "bf16")
    settings.setValue("geoclip_qgis/device", "cpu")
    from geoclip_qgis.ui.results_panel import ResultsPanel

    QgsProject.instance().removeAllMapLayers()
    made = ResultsPanel(StandInInterface())
    made.show_run(str(run_file))
    yield made
    QgsProject.instance().removeAllMapLayers()


def test_the_panel_lists_answers_and_shows_one(panel, samples):
    from qgis.core import QgsApplication

    assert panel.list.count() == 3
    names = [panel.list.item(i).text().splitlines()[0] for i in range(3)]
    assert names == ["DSCN0010.jpg", "Kauai.png", "text: a harbour with fishing boats"]
    panel.list.setCurrentRow(0)
    stored = panel.current()
    assert panel.candidates.rowCount() == 4
    top = stored.result.candidates[0]
    assert (
        panel.candidates.item(0, 2).text().startswith(top.place) and top.country in panel.candidates.item(0, 2).text()
    )
    assert float(panel.candidates.item(0, 4).text().replace(",", "")) == pytest.approx(
        stored.result.error_km(top), abs=0.1
    )
    assert "NIKON" in panel.info.text() and "43.46745, 11.88513" in panel.info.text()
    assert "confidence area" in panel.info.text() and "Countries:" in panel.regions.text()
    assert panel.photo.pixmap() is not None and not panel.photo.pixmap().isNull()
    for _ in range(50):  # the list's thumbnails arrive a few at a time
        QgsApplication.processEvents()
    assert not panel.list.item(0).icon().isNull() and panel.list.item(2).icon().isNull()  # text: no photo
    panel.list.setCurrentRow(2)
    assert "text query" in panel.photo.text() and not panel.open_button.isEnabled()


def test_a_candidate_zooms_the_map_and_copies_its_coordinates(panel):
    from qgis.core import QgsPointXY
    from qgis.PyQt.QtWidgets import QApplication

    panel.list.setCurrentRow(1)
    second = panel.current().result.candidates[1]
    panel.candidates.selectRow(1)
    assert panel.iface.canvas.extent().contains(QgsPointXY(second.lon, second.lat))
    panel.copy_coordinates()
    assert QApplication.clipboard().text() == f"{second.lat:.6f}, {second.lon:.6f}"


def test_only_this_answer_filters_the_runs_layers(panel, run_file):
    from qgis.core import QgsProject, QgsVectorLayer

    points = QgsVectorLayer(f"{run_file}|layername=predictions", "answers", "ogr")
    QgsProject.instance().addMapLayer(points)
    assert points.featureCount() == 12
    panel.list.setCurrentRow(1)
    panel.only_button.setChecked(True)
    assert points.featureCount() == 4
    assert {f["photo"] for f in points.getFeatures()} == {panel.current().photo}
    panel.list.setCurrentRow(0)  # follows the selection
    assert {f["photo"] for f in points.getFeatures()} == {panel.current().photo}
    panel.only_button.setChecked(False)
    assert points.featureCount() == 12


def test_how_likely_here_from_the_map(panel):
    from geoclip_qgis.ui.results_panel import likely_text

    panel.list.setCurrentRow(1)
    top = panel.current().result.candidates[0]
    found = []
    panel.likelyDone.connect(found.append)
    panel.likely_button.setChecked(True)
    assert panel.iface.canvas.mapTool() is panel.tool
    panel.likely_at(top.lat, top.lon)
    assert panel.marker is not None  # a cross where the user clicked
    centre = panel.marker.center()
    assert abs(centre.x() - top.lon) < 1e-6 and abs(centre.y() - top.lat) < 1e-6  # the canvas is in EPSG:4326
    wait_for(lambda: found or "Could not" in panel.likely.text(), 600)
    assert found, panel.likely.text()
    here = found[0]
    assert here.masses[1.0] <= here.masses[25.0] <= here.masses[200.0] <= 1.0
    assert here.rank is not None and here.rank <= here.cells
    assert "within 200 km" in panel.likely.text() and panel.likely.text() == likely_text(here)
    panel.likely_button.setChecked(False)
    assert panel.iface.canvas.mapTool() is None and panel.marker is None


def test_export_report_from_the_panel(panel, tmp_path):
    panel.list.setCurrentRow(0)
    pdf, html = panel.export_report(str(tmp_path / "dscn.pdf"))
    assert pdf.stat().st_size > 10_000 and "DSCN0010.jpg" in html.read_text(encoding="utf-8")


def test_names_from_a_received_run_are_shown_as_text(engine, kauai_png, tmp_path):
    """A photo named like markup and region names holding links: the panel shows them, it does not render
    them (a rich-text label would fetch the image or offer the link)."""
    import shutil
    import sqlite3

    from geoclip_qgis.backend.pipeline.run import RunRequest, execute

    qgis_app()
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"
    shutil.copy(kauai_png, hostile)
    gpkg = tmp_path / "received.gpkg"
    execute(RunRequest(photos=[str(hostile)], top_k=2, output=str(gpkg)), engine)
    with sqlite3.connect(gpkg) as db:
        db.execute("UPDATE regions SET region = '<a href=\"https://attacker.example\">Click</a>'")
    from geoclip_qgis.ui.results_panel import ResultsPanel

    made = ResultsPanel(StandInInterface())
    made.show_run(str(gpkg))
    assert "<img" not in made.info.text() and "&lt;img src=x onerror=alert(1)&gt;.png" in made.info.text()
    assert "<a href" not in made.regions.text() and "&lt;a href=" in made.regions.text()
    assert made.list.item(0).toolTip().startswith("<span>") and "<img" not in made.list.item(0).toolTip()
