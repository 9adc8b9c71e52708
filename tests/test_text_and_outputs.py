"""Text queries through CLIP's text tower, GeoTIFF output, and the CLI's raster/area/fusion options."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from clip_factory import make_clip_checkpoint
from test_cli import run

from geoclip_qgis.backend import build_engine
from geoclip_qgis.backend.errors import WeightsError
from geoclip_qgis.backend.output.geotiff import raster_metadata, raster_name, write_geotiff


def test_text_tower_loads_only_for_text(tiny_clip, photo_dir):
    engine = build_engine(clip=tiny_clip, device="cpu", precision="fp32")
    engine.predict(sorted(photo_dir.iterdir()), top_k=1)
    assert engine._text is None  # image work never loads the text tower
    results = engine.predict_text(["a tropical beach with palm trees", "snowy mountain village"], top_k=4)
    assert engine._text is not None
    assert [r.photo for r in results] == ["text: a tropical beach with palm trees", "text: snowy mountain village"]
    for r in results:
        assert r.ok and len(r.candidates) == 4
        assert np.linalg.norm(r.feature) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(results[0].feature, results[1].feature)
    again = engine.predict_text(["a tropical beach with palm trees"], top_k=4)[0]
    np.testing.assert_allclose(again.feature, results[0].feature, atol=1e-5)  # padding changes rounding only


def test_text_needs_a_tokenizer(tmp_path):
    vision_only = make_clip_checkpoint(tmp_path / "no-tokenizer", with_text=False)
    engine = build_engine(clip=vision_only, device="cpu", precision="fp32")
    with pytest.raises(WeightsError, match="text queries need a full CLIP checkpoint"):
        engine.predict_text(["a harbour"], top_k=1)


def test_geotiff_extent_crs_and_metadata(raster_engine, photo_dir, tmp_path):
    engine = raster_engine
    from osgeo import gdal, osr

    result = engine.predict([photo_dir / "kauai.png"], top_k=1)[0]
    made = engine.rasters(result)
    world = write_geotiff(
        made.world,
        tmp_path / raster_name(result.photo, "world"),
        raster_metadata(made.world, result.photo, engine.model_name, 0.25, 0.01),
    )
    local = write_geotiff(made.local[0], tmp_path / raster_name(result.photo, "local"))
    assert world.name == "kauai_world.tif" and local.name == "kauai_local1.tif"
    ds = gdal.Open(str(world))
    assert (ds.RasterXSize, ds.RasterYSize) == (1440, 720)
    assert ds.GetGeoTransform() == (-180.0, 0.25, 0.0, 90.0, 0.0, -0.25)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "4326"
    meta = ds.GetMetadata()
    assert meta["GEOCLIP_QUERY"].endswith("kauai.png") and meta["GEOCLIP_RASTER"] == "world"
    assert "sum to 1" in meta["GEOCLIP_VALUES"] and meta["GEOCLIP_AREA"] == "whole world"
    values = ds.GetRasterBand(1).ReadAsArray()
    assert values.sum() == pytest.approx(1.0, abs=1e-4)
    ds_local = gdal.Open(str(local))
    west, cell, _, north, _, neg = ds_local.GetGeoTransform()
    assert cell == pytest.approx(0.01) and neg == pytest.approx(-0.01)
    assert (west, north) == pytest.approx((made.local[0].west, made.local[0].north))


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_cli_text_and_rasters(engine, tiny_clip, tmp_path):
    from osgeo import gdal

    out = run(
        "text",
        "a harbour with fishing boats",
        "--clip",
        tiny_clip,
        "--top-k",
        3,
        "--rasters",
        tmp_path / "r",
        "--precision",
        "bf16",
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3 and rows[0]["photo"] == "text: a harbour with fishing boats"
    tifs = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert "a_harbour_with_fishing_boats_world.tif" in tifs and "a_harbour_with_fishing_boats_local1.tif" in tifs
    assert len(tifs) <= 3  # one region, plus the top-1 answer's window when it lies elsewhere
    world = gdal.Open(str(tmp_path / "r" / "a_harbour_with_fishing_boats_world.tif"))
    assert world.GetMetadataItem("GEOCLIP_QUERY").startswith("text: ")
    top = [r for r in rows if r["rank"] == "1"][0]
    covering = []
    for name in tifs:
        if "_local" in name:
            west, cell, _, north, _, _ = gdal.Open(str(tmp_path / "r" / name)).GetGeoTransform()
            covering.append(
                west <= float(top["lon"]) <= west + 50 * cell and north - 50 * cell <= float(top["lat"]) <= north
            )
    assert any(covering), "the top-1 answer lies on a local raster"


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_cli_area_and_fusion(engine, tiny_clip, photo_dir, tmp_path):
    out = run(
        "predict", photo_dir, "--clip", tiny_clip, "--top-k", 5, "--area=-30,30,45,72", "--fuse", "--precision", "fp32"
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["area"] for r in rows} == {"bbox -30,30,45,72"}
    for r in rows:
        assert -30 <= float(r["lon"]) <= 45 and 30 <= float(r["lat"]) <= 72
    fused = [r for r in rows if r["photo"] == "fused: 4 photos"]
    assert [r["rank"] for r in fused] == ["1", "2", "3", "4", "5"]
    bad = run("predict", photo_dir, "--clip", tiny_clip, "--area", "10,20,30", check=False)
    assert bad.returncode == 2 and "4 numbers" in bad.stderr


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_an_answers_kind_is_stored_not_read_from_its_label(engine, kauai_png, skimage_data, tmp_path, monkeypatch):
    """Photos named like a text query's or a fused set's label ("text: …", "fused: …") stay photos: the
    kind is a column of every answer and area row, read back as it was written; the plugin names rows
    by it, and finds only photos' files."""
    import shutil
    import sqlite3

    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.results import AnswerKind, answer_name
    from geoclip_qgis.backend.workbench.run_file import photo_file, read_answers

    shutil.copy(kauai_png, tmp_path / "text: beach.png")
    shutil.copy(skimage_data / "coffee.png", tmp_path / "fused: 2 photos.png")
    monkeypatch.chdir(tmp_path)  # the labels are the paths as given: "text: beach.png"
    photos = ["text: beach.png", "fused: 2 photos.png"]
    request = RunRequest(photos=photos, texts=["beach"], fuse=True, top_k=1, output="run.gpkg", confidence=True)
    execute(request, engine)
    with sqlite3.connect(tmp_path / "run.gpkg") as db:
        stored = set(db.execute("SELECT photo, kind FROM predictions"))
        areas = set(db.execute("SELECT photo, kind FROM confidence_areas"))
    expected = {
        ("text: beach.png", "photo"),
        ("fused: 2 photos.png", "photo"),
        ("text: beach", "text"),
        ("fused: 2 photos", "fused"),
    }
    assert stored == expected and areas == expected
    answers = {a.photo: a for a in read_answers(tmp_path / "run.gpkg")}
    assert {label: a.result.kind.value for label, a in answers.items()} == dict(expected)
    assert photo_file(answers["text: beach.png"]) == str(tmp_path / "text: beach.png")
    assert photo_file(answers["text: beach"]) is None
    assert answer_name("text: beach.png", AnswerKind.PHOTO) == "text: beach.png"
    assert answer_name("text: beach", AnswerKind.TEXT) == "text: beach"


@pytest.mark.qgis
def test_the_plugin_names_answers_by_their_kind(engine, kauai_png, tmp_path, monkeypatch):
    import shutil

    from qgis_support import qgis_app

    qgis_app()
    from qgis.core import QgsExpression, QgsExpressionContext, QgsVectorLayer

    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.map.styles import style_points

    shutil.copy(kauai_png, tmp_path / "text: beach.png")
    monkeypatch.chdir(tmp_path)
    execute(RunRequest(photos=["text: beach.png"], texts=["a beach"], top_k=1, output="run.gpkg"), engine)
    layer = QgsVectorLayer(str(tmp_path / "run.gpkg") + "|layername=predictions", "answers", "ogr")
    assert layer.isValid()
    style_points(layer)
    names = {}
    for feature in layer.getFeatures():
        context = QgsExpressionContext()
        context.setFields(layer.fields())
        context.setFeature(feature)
        names[feature["photo"]] = QgsExpression(layer.displayExpression()).evaluate(context)
    assert names == {"text: beach.png": "text: beach", "text: a beach": "“a beach”"}


def test_the_plugin_never_reads_an_answers_kind_from_its_label():
    """The plugin asks the stored kind; no code of it tells answers apart by a "text: " or "fused: " prefix."""
    import re
    from pathlib import Path

    import geoclip_qgis

    plugin = Path(geoclip_qgis.__file__).parent
    pattern = re.compile(r"""startswith\(\(?\s*["'](text|fused): |LIKE\s+\\?'(text|fused): """)
    for path in plugin.rglob("*.py"):
        if "backend" not in path.relative_to(plugin).parts:
            assert not pattern.search(path.read_text(encoding="utf-8")), path
