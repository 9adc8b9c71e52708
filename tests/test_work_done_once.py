"""Each piece of a run's work is done once: the gallery is scored once per answer (ranking, region
probabilities and rasters share that softmax), a folder is walked once, and the layers' styles come
from what the run holds rather than from reading its files back. Real heads, the tests' small CLIP."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from geoclip_qgis.backend.photos import walk
from geoclip_qgis.backend.pipeline.run import RunRequest, execute


@pytest.fixture
def gallery_scorings(engine, monkeypatch):
    """How many times the gallery's 100K places are scored, and for how many query vectors each time."""
    calls: list[int] = []
    heads = engine.heads
    original = type(heads).logits

    def counting(self, queries, places, *args, **kwargs):
        if places is engine.gallery.features:
            calls.append(int(queries.shape[0]))
        return original(self, queries, places, *args, **kwargs)

    monkeypatch.setattr(type(heads), "logits", counting)
    return calls


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_the_gallery_is_scored_once_per_answer(engine, samples, tmp_path, gallery_scorings):
    photos = sorted((samples / "gps").glob("*.jpg"))[:2]
    outcome = execute(
        RunRequest(photos=photos, output=str(tmp_path / "run.gpkg"), confidence=True, texts=["a harbour"]), engine
    )
    assert outcome.summary.answered == 3
    # one batch of two photos (batch size 4) and one text query: two scorings, nothing scored again for
    # the regions table or the confidence areas' rasters
    assert sorted(gallery_scorings) == [1, 2]


def test_region_probabilities_come_from_the_ranked_softmax(engine, samples):
    """The softmax kept with an answer is the one an answer read back is scored with again."""
    result = next(engine.predict_iter(sorted((samples / "gps").glob("*.jpg"))[:1], keep_probabilities=True))
    again = engine.gallery_probabilities(result.feature)
    assert result.probabilities.shape == again.shape
    np.testing.assert_array_equal(result.probabilities.astype(np.float64), again)
    top = int(np.argmax(again))
    assert engine.gallery.coordinates[top].tolist() == pytest.approx(
        [result.candidates[0].lat, result.candidates[0].lon]
    )
    assert next(engine.predict_iter([samples / "gps" / "DSCN0010.jpg"])).probabilities is None  # not by default


def test_a_folder_is_walked_once_per_run(engine, samples, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    shutil.copytree(samples / "gps", folder)
    listings: list[str] = []
    scandir = os.scandir

    def counting(path):
        listings.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(walk.os, "scandir", counting)
    count = len(list(folder.glob("*.jpg")))
    for known in (None, count):  # counted by the caller (the dock) or not
        listings.clear()
        outcome = execute(RunRequest(photos=[folder], photo_count=known), engine)
        assert outcome.total == count and outcome.summary.answered == count
        assert listings == [str(folder)], known


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_runs_rasters_are_styled_from_what_the_run_holds(engine, samples, tmp_path):
    from geoclip_qgis.backend.output.geotiff import read_raster_facts
    from geoclip_qgis.backend.pipeline.run import RasterOptions
    from geoclip_qgis.backend.results import OutputKind

    outcome = execute(
        RunRequest(
            photos=[samples / "gps" / "DSCN0010.jpg"],
            output=str(tmp_path / "run.gpkg"),
            rasters=RasterOptions(str(tmp_path / "rasters")),
        ),
        engine,
    )
    rasters = outcome.of_kind(OutputKind.WORLD_RASTER, OutputKind.LOCAL_RASTER)
    assert {f.raster.kind for f in rasters} == {"world", "local"}
    for file in rasters:  # what the run says is what the file says
        assert file.raster == read_raster_facts(file.path)
        assert file.raster.levels_band == 2 and 0 < file.raster.peak <= 1


def test_a_runs_layers_are_named_without_reading_its_geopackage_back(engine, samples, tmp_path, monkeypatch):
    """The outcome lists the layers that hold rows from what the writer found and wrote: GDAL never opens
    the new GeoPackage by name during the run (it is created, filled and closed)."""
    from osgeo import gdal, ogr

    from geoclip_qgis.backend.results import OutputKind

    output = tmp_path / "run.gpkg"
    opened = []
    for module, name in ((ogr, "Open"), (gdal, "Open"), (gdal, "OpenEx")):
        original = getattr(module, name)

        def spy(path, *args, _original=original, **kwargs):
            if str(path) == str(output):
                opened.append(path)
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    outcome = execute(RunRequest(photos=[samples / "gps" / "DSCN0010.jpg"], output=str(output), top_k=2), engine)
    assert opened == []
    kinds = {file.layer: file.kind for file in outcome.files if file.path == str(output)}
    assert kinds == {
        "predictions": OutputKind.POINTS,
        "truth_lines": OutputKind.TRUTH_LINES,  # the photo has EXIF GPS: its error is measured
        "accuracy": OutputKind.ACCURACY,
        "regions": OutputKind.REGIONS,
        "place_radii": OutputKind.PLACE_RADII,
    }
    source = ogr.Open(str(output))  # and that is what the file holds
    held = {source.GetLayer(i).GetName() for i in range(source.GetLayerCount()) if source.GetLayer(i).GetFeatureCount()}
    assert held - {"runs", "answer_features"} == set(kinds)
