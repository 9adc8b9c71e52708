"""Distinct places, hints and areas by name in the plugin: the dock's Options build the run's request, the
map draws each place's radius under the answers and labels the answers with their place, the results
panel and the case report say each place's radius and the hint, and Processing takes the same choices.
Outside text (place and photo names) stays text throughout."""

from __future__ import annotations

import pytest
import test_plugin
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


def test_the_plugin_mirrors_the_engines_limit_on_places_and_what_a_radius_holds():
    from geoclip_qgis.backend.model.distinct_places import MASS, MAX_TOP_K
    from geoclip_qgis.core.inputs import MAX_PLACES, RADIUS_MASS

    assert MAX_PLACES == MAX_TOP_K and RADIUS_MASS == MASS


def test_the_dock_asks_for_places_a_hint_and_an_area_by_name(plugin, kauai_png, tmp_path):
    from qgis.PyQt.QtCore import Qt

    from geoclip_qgis.backend.model.distinct_places import GALLERY_POINTS, MAX_TOP_K, PlaceOptions
    from geoclip_qgis.backend.results import HINT_WEIGHT, HINT_WEIGHT_MAX, Hint
    from geoclip_qgis.ui.dock import GeoCLIPDock

    dock = plugin.dock
    dock.clear_paths()
    dock.add_paths([str(kauai_png)])
    dock.output.setFilePath(str(tmp_path / "asked.gpkg"))
    request = dock.runner.request()  # what a run with the options as they come asks for
    assert request.places == PlaceOptions() and request.hint is None and request.area is None
    assert dock.top_k.maximum() == MAX_TOP_K
    # the release's gallery points: up to 100 of them; distinct places: at most the engine's limit
    dock.places_combo.setCurrentIndex(dock.places_combo.findData("gallery"))
    assert dock.top_k.maximum() == 100
    dock.top_k.setValue(80)
    request = dock.runner.request()
    assert request.places == GALLERY_POINTS and request.top_k == 80
    dock.places_combo.setCurrentIndex(dock.places_combo.findData("distinct"))
    assert dock.top_k.value() == MAX_TOP_K
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


def test_processing_takes_the_candidates_a_hint_and_names(plugin, kauai_png, monkeypatch, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    from geoclip_qgis.backend.model.distinct_places import GALLERY_POINTS, PlaceOptions
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
