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
from geoclip_qgis.backend.geotiff import raster_metadata, raster_name, write_geotiff


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
