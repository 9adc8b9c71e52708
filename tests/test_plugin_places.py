"""Distinct places, hints and areas by name in the plugin: the dock's Options build the run's request, the
map draws each place's radius under the answers and labels the answers with their place, the results
panel and the case report say each place's radius and the hint, and Processing takes the same choices.
Outside text (place and photo names) stays text throughout."""

from __future__ import annotations

import pytest
from test_received_files import craft

pytestmark = pytest.mark.qgis

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
