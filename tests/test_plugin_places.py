"""Distinct places, hints and areas by name in the plugin: the dock's Options build the run's request, the
map draws each place's radius under the answers and labels the answers with their place, the results
panel and the case report say each place's radius and the hint, and Processing takes the same choices.
Outside text (place and photo names) stays text throughout."""

from __future__ import annotations

import pytest
import test_plugin
from qgis_support import StandInInterface, qgis_app
from test_received_files import craft

pytestmark = pytest.mark.qgis
plugin = test_plugin.plugin  # the plugin with its dock, set up as test_plugin's tests have it

HINT = "a harbour town in Brazil"


@pytest.fixture(scope="module")
def places_run(engine, kauai_png, samples, tmp_path_factory):
    """A run's GeoPackage of distinct places, refined, steered by a hint."""
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.results import Hint

    gpkg = tmp_path_factory.mktemp("places") / "places.gpkg"
    photos = [str(kauai_png), str(samples / "gps" / "DSCN0010.jpg")]
    execute(RunRequest(photos=photos, top_k=3, output=str(gpkg), hint=Hint(HINT, 0.8)), engine)
    return gpkg


def test_a_runs_places_are_read_back_with_their_radius_gallery_point_and_hint(places_run, tmp_path):
    from geoclip_qgis.backend.workbench.run_file import read_answers

    answers = read_answers(places_run)
    assert len(answers) == 2
    for stored in answers:
        assert stored.result.hint is not None and (stored.result.hint.text, stored.result.hint.weight) == (HINT, 0.8)
        assert len(stored.result.candidates) == 3
        for candidate in stored.result.candidates:
            assert candidate.radius_km is not None and candidate.radius_km >= 1.0
            assert candidate.gallery_lat is not None and candidate.gallery_lon is not None
    # someone else's file: unusable values dropped, and said so
    spoilt = "UPDATE predictions SET hint_weight = 'heavy', radius_km = -3 WHERE rank = 1"
    received = craft(places_run, tmp_path / "received.gpkg", spoilt)
    skipped: list[str] = []
    changed = read_answers(received, skipped=skipped)
    assert all(s.result.hint.text == HINT and s.result.hint.weight is None for s in changed)
    assert all(s.result.candidates[0].radius_km is None for s in changed)
    assert any("hint_weight is text" in note for note in skipped) and any("radius_km is -3.0" in n for n in skipped)


def test_the_dock_asks_for_places_a_hint_and_an_area_by_name(plugin, kauai_png, tmp_path):
    from qgis.PyQt.QtCore import Qt

    from geoclip_qgis.backend.model.place_options import GALLERY_POINTS, PlaceOptions
    from geoclip_qgis.backend.results import HINT_WEIGHT, HINT_WEIGHT_MAX, MAX_PLACES, Hint
    from geoclip_qgis.ui.dock import GeoCLIPDock

    dock = plugin.dock
    dock.clear_paths()
    dock.add_paths([str(kauai_png)])
    dock.output.setFilePath(str(tmp_path / "asked.gpkg"))
    request = dock.runner.request()  # what a run with the options as they come asks for
    assert request.places == PlaceOptions() and request.hint is None and request.area is None
    assert dock.top_k.maximum() == MAX_PLACES
    # the release's gallery points: up to 100 of them; distinct places: at most the engine's limit
    dock.places_combo.setCurrentIndex(dock.places_combo.findData("gallery"))
    assert dock.top_k.maximum() == 100
    dock.top_k.setValue(80)
    request = dock.runner.request()
    assert request.places == GALLERY_POINTS and request.top_k == 80
    dock.places_combo.setCurrentIndex(dock.places_combo.findData("distinct"))
    assert dock.top_k.value() == MAX_PLACES
    assert dock.runner.request().places == PlaceOptions(distinct=True, refine=False)
    # the hint and its weight (the weight only matters, and is only editable, with a hint)
    assert dock.hint_weight.value() == HINT_WEIGHT and dock.hint_weight.maximum() == HINT_WEIGHT_MAX
    assert not dock.hint_weight.isEnabled() and "text feature" in dock.hint_edit.toolTip()
    dock.hint_edit.setText("  a harbour town in Brazil ")
    dock.hint_weight.setValue(1.5)
    assert dock.hint_weight.isEnabled()
    assert dock.runner.request().hint == Hint("a harbour town in Brazil", 1.5)
    # an area by name: the names are read when the option is chosen, and offered by what is typed
    assert dock.area_name.count() == 0 and dock.area_name.isHidden()
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("names"))
    assert not dock.area_name.isHidden()
    assert dock.area_name.parentWidget().layout().labelForField(dock.area_name).text() == "Country or region"
    names = [dock.area_name.itemText(i) for i in range(dock.area_name.count())]
    assert "France" in names and "Bavaria, Germany" in names and len(names) > 3000
    completer = dock.area_name.completer()
    assert completer.filterMode() == Qt.MatchFlag.MatchContains
    assert completer.caseSensitivity() == Qt.CaseSensitivity.CaseInsensitive
    dock.area_name.setEditText("bavaria, germany")
    area = dock.runner.request().area
    assert area.regions == (("DE", "Bavaria"),) and area.country_codes == () and area.label == "Bavaria, Germany"
    dock.area_name.setEditText("France")
    assert dock.runner.request().area.country_codes == ("FR",)
    # a name that is no country or region: said in the dock, on the Options tab; no run starts
    dock.area_name.setEditText("Atlantis")
    dock.tabs.setCurrentIndex(0)
    dock.run()
    assert dock.task is None and dock.tabs.currentIndex() == 1
    assert dock.status.text() == "Area of interest: no country or first-level region is called 'Atlantis'"
    # the choices come back with QGIS, except the hint's text (it belongs to one case); no list read at start
    again = GeoCLIPDock(plugin.iface)
    assert again.places_combo.currentData() == "distinct" and again.hint_weight.value() == 1.5
    assert again.area_combo.currentData() == "names" and again.area_name.currentText() == "Atlantis"
    assert again.hint_edit.text() == "" and again.area_name.count() == 0
    again.tabs.setCurrentIndex(1)
    assert again.area_name.count() == len(names) and again.area_name.currentText() == "Atlantis"
    dock.places_combo.setCurrentIndex(dock.places_combo.findData("refined"))
    dock.top_k.setValue(5)
    dock.hint_edit.clear()
    dock.hint_weight.setValue(HINT_WEIGHT)
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("world"))


def _label_values(layer, rule) -> list[str]:
    """What a labelling rule writes on the map for the features it applies to."""
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils, QgsFeatureRequest

    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    expression = QgsExpression(rule.settings().fieldName)
    values = []
    for feature in layer.getFeatures(QgsFeatureRequest().setFilterExpression(rule.filterExpression())):
        context.setFeature(feature)
        values.append(expression.evaluate(context))
    assert not expression.hasEvalError(), expression.evalErrorString()
    return values


@pytest.mark.slow
def test_a_run_draws_each_places_radius_under_its_answers_and_the_panel_and_report_say_them(
    plugin, kauai_png, samples, tmp_path
):
    import subprocess
    import unicodedata

    from qgis.core import QgsRuleBasedRenderer, QgsWkbTypes

    dock = plugin.dock
    dock.hint_edit.setText(HINT)
    dock.hint_weight.setValue(0.5)
    try:
        photos = [kauai_png, samples / "gps" / "DSCN0010.jpg"]
        result = test_plugin.run_dock(dock, photos, out=tmp_path / "places.gpkg", top_k=3)
    finally:
        dock.hint_edit.clear()
    assert not result.error
    layers = dock.last_layers
    radii, points = layers["radii"], layers["points"]
    assert radii is not None and radii.featureCount() == 6
    assert radii.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    names = [child.name() for child in layers["group"].children()]
    assert names[:2] == ["GeoCLIP answers", "Places and their radius"], names  # just under the answers
    # outlines over a faint fill, the top-1 place's drawn last
    renderer = radii.renderer()
    assert isinstance(renderer, QgsRuleBasedRenderer) and renderer.orderByEnabled()
    rules = {rule.filterExpression(): rule.symbol() for rule in renderer.rootRule().children()}
    assert set(rules) == {'"rank" = 1', '"rank" > 1'}
    for symbol in rules.values():
        assert 0 < symbol.color().alpha() < 100 and symbol.symbolLayer(0).strokeColor().alpha() == 255
    # the answers are labelled with their place and probability, read from the fields
    labeling = {rule.filterExpression(): rule for rule in points.labeling().rootRule().children()}
    places = {f["place"] for f in points.getFeatures() if f["place"]}
    assert len(places) >= 3
    for rule in labeling.values():
        expression = rule.settings().fieldName
        assert '"place"' in expression and '"probability"' in expression
        assert not any(place in expression for place in places)  # no value of the data in it
    top = {(f["place"], f["probability"]) for f in points.getFeatures() if f["rank"] == 1}
    shown = _label_values(points, labeling['"rank" = 1'])
    assert len(shown) == 2 and all(any(f"{place} · {100 * p:.1f} %" in text for place, p in top) for text in shown)
    assert '"radius_km"' in points.mapTipTemplate()

    # the results panel: each place's radius, that it was refined from a gallery point, the hint
    dock.judge_button.click()
    panel = plugin.results
    panel.list.setCurrentRow(0)
    stored = panel.current()
    assert panel.candidates.horizontalHeaderItem(3).text() == "Radius"
    for row, candidate in enumerate(stored.result.candidates):
        radius = panel.candidates.item(row, 3).text()
        assert radius.startswith("± ") and radius.endswith(" km")
        assert float(radius[2:-3].replace(",", "")) == pytest.approx(candidate.radius_km, abs=0.51)
        assert "Refined from the gallery point" in panel.candidates.item(row, 2).toolTip()
    assert f"Hint: {HINT} (weight 0.5)" in panel.info.text()
    assert "Candidates: distinct places" in panel.info.text() and "refined" in panel.info.text()
    # ... and the case report
    pdf, _ = panel.export_report(str(tmp_path / "report.pdf"))
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = unicodedata.normalize("NFKC", text)  # the PDF's "fi" ligatures as letters
    assert "Radius" in text and panel.candidates.item(0, 3).text() in text and HINT in text
    assert "circles: each place's radius" in text and "refined from the gallery point" in text


def test_hostile_place_and_photo_names_stay_text_in_labels_and_the_panel(plugin, places_run, tmp_path):
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils, QgsVectorLayer

    from geoclip_qgis.map.styles import style_place_radii, style_points
    from geoclip_qgis.ui.results_panel import ResultsPanel

    place = "<img src=x onerror=alert(1)> [% @user_full_name %] ' || 'x"
    photo = "/case/<img src=y>[% 1 + 1 %].png"
    quoted = place.replace("'", "''")
    received = craft(
        places_run,
        tmp_path / "received.gpkg",
        f"UPDATE predictions SET place = '{quoted}', photo = '{photo}'",
        f"UPDATE place_radii SET place = '{quoted}', photo = '{photo}'",
    )
    points = QgsVectorLayer(f"{received}|layername=predictions", "answers", "ogr")
    style_points(points)
    for rule in points.labeling().rootRule().children():
        assert not rule.settings().format().allowHtmlFormatting()
        for text in _label_values(points, rule):
            assert place in text  # as it is written, never read as markup or as an expression
        if rule.filterExpression() == '"rank" = 1':
            assert all("<img src=y>[% 1 + 1 %]" in text for text in _label_values(points, rule))
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(points))
    context.setFeature(next(points.getFeatures()))
    tip = QgsExpression.replaceExpressionText(points.mapTipTemplate(), context)
    assert "&lt;img src=x onerror=alert(1)&gt;" in tip and "<img src=x" not in tip
    radii = QgsVectorLayer(f"{received}|layername=place_radii", "radii", "ogr")
    style_place_radii(radii)
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(radii))
    context.setFeature(next(radii.getFeatures()))
    assert place in QgsExpression(radii.displayExpression()).evaluate(context)

    qgis_app()
    panel = ResultsPanel(StandInInterface())
    panel.show_run(str(received))
    panel.list.setCurrentRow(0)
    cell = panel.candidates.item(0, 2)
    assert cell.text().startswith(place)  # a table cell is plain text
    assert cell.toolTip().startswith("<span>") and "<img" not in cell.toolTip()
    assert "&lt;img src=y&gt;[% 1 + 1 %].png" in panel.info.text() and "<img" not in panel.info.text()
    assert panel.list.item(0).text().startswith("<img src=y>[% 1 + 1 %].png")


def test_processing_takes_the_candidates_a_hint_and_names(plugin, kauai_png, monkeypatch, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    from geoclip_qgis.backend.model.place_options import GALLERY_POINTS, PlaceOptions
    from geoclip_qgis.backend.pipeline import run
    from geoclip_qgis.backend.results import Hint

    asked = []

    def execute(request, engine, progress=None, should_stop=None, on_result=None):
        asked.append(request)
        return run.RunOutcome()

    monkeypatch.setattr(run, "execute", execute)  # what reaches the engine, without answering
    photos = {"PHOTOS": [str(kauai_png)], "OUTPUT": str(tmp_path / "p.gpkg")}
    processing.run("geoclip:geolocate_photos", photos)
    assert asked[-1].places == PlaceOptions() and asked[-1].hint is None and asked[-1].area is None
    chosen = {
        "CANDIDATES": 2,
        "TOP_K": 80,
        "HINT": " a harbour town ",
        "HINT_WEIGHT": 1.5,
        "AREA_NAMES": "France; bavaria, germany",
    }
    processing.run("geoclip:geolocate_photos", {**photos, **chosen})
    request = asked[-1]
    assert request.places == GALLERY_POINTS and request.top_k == 80 and request.hint == Hint("a harbour town", 1.5)
    assert request.area.country_codes == ("FR",) and request.area.regions == (("DE", "Bavaria"),)
    text = {"TEXT": "a harbour", "CANDIDATES": 1, "AREA_NAMES": "Brazil", "OUTPUT": str(tmp_path / "t.gpkg")}
    processing.run("geoclip:geolocate_text", text)
    assert asked[-1].places == PlaceOptions(distinct=True, refine=False) and asked[-1].area.label == "Brazil"
    with pytest.raises(QgsProcessingException, match="no country or first-level region is called 'Atlantis'"):
        processing.run("geoclip:geolocate_photos", {**photos, "AREA_NAMES": "Atlantis"})
    with pytest.raises(QgsProcessingException, match="give one area of interest"):
        processing.run(
            "geoclip:geolocate_photos", {**photos, "AREA_NAMES": "Brazil", "AREA": "-10,30,35,60 [EPSG:4326]"}
        )
