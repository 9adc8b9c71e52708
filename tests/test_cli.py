"""The command line, run as a user runs it: a separate process, real files in and out."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "geoclip_qgis.backend"]


def run(*args, check=True, timeout=600):
    out = subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "100"}
    )
    if check and out.returncode not in (0,):
        raise AssertionError(f"exit {out.returncode}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def warm(engine):
    """The session engine has written the gallery cache the CLI processes read."""
    return engine


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_csv_on_stdout(warm, tiny_clip, photo_dir):
    out = run(
        "predict",
        photo_dir / "kauai.png",
        photo_dir / "missing.jpg",
        "--clip",
        tiny_clip,
        "--top-k",
        3,
        "--precision",
        "fp32",
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert out.stdout.startswith("photo,rank,lat,lon,probability,")
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert rows[3]["photo"].endswith("missing.jpg") and rows[3]["error"] == "file not found"
    assert "answered 1, skipped 0, failed 1" in out.stderr
    assert "failed 1: file not found" in out.stderr


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_folder_to_geopackage_and_geojson(warm, tiny_clip, photo_dir, tmp_path):
    from osgeo import ogr

    gpkg = tmp_path / "out.gpkg"
    (photo_dir / "broken.jpg").write_text("no")
    out = run("predict", photo_dir, "--clip", tiny_clip, "--top-k", 2, "--out", gpkg)
    assert "answered 4, skipped 0, failed 1" in out.stderr
    ds = ogr.Open(str(gpkg))
    points = ds.GetLayerByName("predictions")
    assert points.GetFeatureCount() == 8
    assert points.GetSpatialRef().GetAuthorityCode(None) == "4326"
    names = [points.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(points.GetLayerDefn().GetFieldCount())]
    assert names[:5] == ["photo", "rank", "lat", "lon", "probability"]
    for feature in points:
        geometry = feature.GetGeometryRef()
        assert geometry.GetX() == pytest.approx(feature.GetField("lon"))
        assert geometry.GetY() == pytest.approx(feature.GetField("lat"))
    dscn = [f for f in ds.GetLayerByName("predictions") if f.GetField("photo").endswith("DSCN0010.jpg")]
    assert dscn[0].GetField("exif_lat") == pytest.approx(43.4674483, abs=1e-6)
    assert dscn[0].GetField("error_km") > 0
    errors = [(f.GetField("photo"), f.GetField("error")) for f in ds.GetLayerByName("errors")]
    assert len(errors) == 1 and errors[0][0].endswith("broken.jpg")

    geojson = tmp_path / "out.geojson"
    run(
        "predict",
        photo_dir / "kauai.png",
        photo_dir / "broken.jpg",
        "--clip",
        tiny_clip,
        "--top-k",
        1,
        "--out",
        geojson,
    )
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 2
    assert features[0]["geometry"]["type"] == "Point"
    assert features[1]["geometry"] is None and "not an image" in features[1]["properties"]["error"]


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_exit_codes_and_messages(warm, tiny_clip, tmp_path):
    bad = run("predict", tmp_path / "nope.jpg", "--clip", tiny_clip, check=False)
    assert bad.returncode == 1
    no_weights = run("predict", tmp_path / "x.jpg", "--clip", tmp_path / "nowhere", check=False)
    assert no_weights.returncode == 2
    assert "CLIP backbone (openai/clip-vit-large-patch14) not found" in no_weights.stderr
    assert "Traceback" not in no_weights.stderr
    wrong_format = run("predict", tmp_path / "x.jpg", "--clip", tiny_clip, "--out", tmp_path / "x.shp", check=False)
    assert wrong_format.returncode == 2 and "use .csv, .gpkg or .geojson" in wrong_format.stderr


def test_models_status(tiny_clip):
    out = run("models", "status", "--clip", tiny_clip, "--json")
    report = json.loads(out.stdout)
    assert report["backbone"]["path"] == str(tiny_clip)
    assert report["heads"]["source"] == "geoclip wheel"
    text = run("models", "status", "--clip", tiny_clip, "--no-checksums").stdout
    assert "GeoCLIP heads:" in text and "location_encoder_weights.pth" in text and "torch " in text


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "geoclip-qgis"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("geoclip-qgis ")


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_truth_lines_join_exif_position_to_top1(warm, tiny_clip, samples, tmp_path):
    from osgeo import ogr

    gpkg = tmp_path / "truth.gpkg"
    run(
        "predict",
        samples / "gps" / "DSCN0010.jpg",
        samples / "orientation" / "landscape_1.jpg",
        "--clip",
        tiny_clip,
        "--out",
        gpkg,
        "--top-k",
        3,
    )
    ds = ogr.Open(str(gpkg))
    lines = list(ds.GetLayerByName("truth_lines"))
    assert len(lines) == 1  # only the photo with EXIF GPS
    line = lines[0].GetGeometryRef()
    top1 = [
        f for f in ds.GetLayerByName("predictions") if f.GetField("rank") == 1 and "DSCN0010" in f.GetField("photo")
    ][0]
    assert line.GetPoint_2D(0) == pytest.approx((11.8851267, 43.4674483), abs=1e-6)
    assert line.GetPoint_2D(1) == pytest.approx((top1.GetField("lon"), top1.GetField("lat")))
    assert lines[0].GetField("error_km") == pytest.approx(top1.GetField("error_km"))


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_places_hints_and_countries_on_the_command_line(warm, tiny_clip, photo_dir, samples, tmp_path):
    """Distinct places by default (each with its radius and the gallery point it was refined from), the
    gallery's raw points on request, a hint recorded on every row, a country by name keeping every
    answer in it, and an unknown name refused with the closest names."""
    from osgeo import ogr

    from geoclip_qgis.backend.earth.places import nearest_places

    photo = photo_dir / "kauai.png"
    common = ["--clip", tiny_clip, "--precision", "fp32", "--top-k", 5]
    places = list(csv.DictReader(io.StringIO(run("predict", photo, *common).stdout)))
    assert len({(r["lat"], r["lon"]) for r in places}) == len(places)
    assert all(float(r["radius_km"]) >= 1 and r["gallery_lat"] and r["gallery_lon"] for r in places)
    raw = list(csv.DictReader(io.StringIO(run("predict", photo, *common, "--gallery-points").stdout)))
    assert all(r["radius_km"] == "" and (r["lat"], r["lon"]) == (r["gallery_lat"], r["gallery_lon"]) for r in raw)

    gpkg = tmp_path / "hinted.gpkg"
    run(
        "predict", photo, *common, "--hint", "a harbour town", "--hint-weight", 0.8, "--country", "Japan", "--out", gpkg
    )
    source = ogr.Open(str(gpkg))
    rows = [f.items() for f in source.GetLayerByName("predictions")]
    assert {(r["hint"], r["hint_weight"], r["area"]) for r in rows} == {("a harbour town", 0.8, "Japan")}
    assert {p.country_code for p in nearest_places([r["lat"] for r in rows], [r["lon"] for r in rows])} == {"JP"}
    circles = source.GetLayerByName("place_radii")
    assert circles.GetFeatureCount() == len(rows)
    for circle in circles:
        rank = circle.GetField("rank")
        centre = next(r for r in rows if r["rank"] == rank)
        assert circle.GetField("radius_km") == pytest.approx(centre["radius_km"])
        assert circle.GetGeometryRef().Contains(ogr.CreateGeometryFromWkt(f"POINT ({centre['lon']} {centre['lat']})"))

    wrong = run("predict", photo, *common, "--country", "Frnace", check=False)
    assert wrong.returncode == 2 and "did you mean 'France'" in wrong.stderr and "Traceback" not in wrong.stderr
    both = run("predict", photo, *common, "--country", "France", "--area=0,40,10,50", check=False)
    assert both.returncode == 2 and "give one area" in both.stderr

    table = tmp_path / "truth.csv"
    table.write_text(
        "IMG_ID,LAT,LON\n" + "".join(f"{p.name},43.4674,11.8851\n" for p in (samples / "gps").glob("*.jpg"))
    )
    evaluated = run("evaluate", table, "--images", samples / "gps", *common[:4], "--refine")
    assert "gallery " in evaluated.stdout and "refined " in evaluated.stdout
    assert "candidates: distinct places (25 km apart), refined" in evaluated.stdout
