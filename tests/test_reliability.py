"""Nothing lost, nothing silently wrong: outputs, caches and bundles under faults and hostile input.

Each test is a regression test for a probe that once failed: full disks, names that are not UTF-8,
thin images, two runs into one file, other tools' files, resumes with changed settings, colliding
raster names, stdout hygiene, bad options, formula injection, hostile bundles and folders, terminal
escapes, errors that looked like crashes, unusable caches, privacy, and huge non-images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import resource
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_batch import committed_photos, variants
from test_cli import CLI, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def warm(engine):
    return engine


@pytest.fixture(scope="module")
def many(tmp_path_factory, skimage_data) -> Path:
    """120 distinct small photos."""
    folder = tmp_path_factory.mktemp("many") / "photos"
    variants([skimage_data / n for n in ("astronaut.png", "coffee.png", "chelsea.png")], folder, 120)
    return folder


def predict(*args, limit_bytes: int | None = None, env: dict | None = None, timeout: int = 600):
    """The CLI as a process; ``limit_bytes`` caps the size of every file it writes (RLIMIT_FSIZE): a disk
    that fills up, for that process, without root. Python ignores SIGXFSZ, so a write past it fails
    with EFBIG as it would with ENOSPC."""

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [*CLI, "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap if limit_bytes else None,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
    )


def named_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "geoclip-qgis: error:" in out.stderr, out.stderr[-2000:]
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr[-2000:])


def gpkg_is_whole(path: Path, top_k: int) -> dict:
    """The GeoPackage is valid SQLite, GDAL reads it, its stored counts are true, its spatial index
    holds every point, and every photo in it is whole (``top_k`` rows)."""
    from osgeo import ogr

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = dict(db.execute("SELECT table_name, feature_count FROM gpkg_ogr_contents"))
        actual = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        assert counts["predictions"] == actual
        assert db.execute("SELECT COUNT(*) FROM rtree_predictions_geom").fetchone()[0] == actual
        triggers = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"trigger_insert_feature_count_predictions", "rtree_predictions_geom_insert"} <= triggers
        per_photo = db.execute("SELECT COUNT(*) FROM predictions GROUP BY photo_sha256").fetchall()
    assert all(count == top_k for (count,) in per_photo)
    assert ogr.Open(str(path)).GetLayerByName("predictions").GetFeatureCount() == actual
    return {"rows": actual, "photos": len(per_photo)}


# -------------------------------------------------------------------------------------- disk full


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_full_disk_geopackage_stops_with_exit_2_keeps_committed_batches_and_resumes(warm, tiny_clip, many, tmp_path):
    gpkg = tmp_path / "full.gpkg"
    args = [many, "--clip", tiny_clip, "--out", gpkg, "--no-cache", "--top-k", 5, "--batch-size", 4]
    out = predict(*args, limit_bytes=300_000)
    named_error(out, "cannot write", "committed before are kept")
    assert "answered" not in out.stderr.split("error:")[-1]  # no summary claiming success
    kept = gpkg_is_whole(gpkg, 5)
    assert 0 < kept["photos"] < 120
    again = predict(*args)
    assert again.returncode == 0, again.stderr
    assert f"skipped {kept['photos']}: answered in an earlier run" in again.stderr
    assert gpkg_is_whole(gpkg, 5)["photos"] == 120


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_full_disk_geojson_leaves_no_file_and_csv_keeps_only_whole_rows(warm, tiny_clip, many, tmp_path):
    geojson = tmp_path / "full.geojson"
    out = predict(many, "--clip", tiny_clip, "--out", geojson, "--no-cache", limit_bytes=40_000)
    named_error(out, "cannot write")
    assert not geojson.exists() and not list(tmp_path.glob("*.partial"))

    table = tmp_path / "full.csv"
    out = predict(many, "--clip", tiny_clip, "--out", table, "--no-cache", limit_bytes=40_000)
    named_error(out, "cannot write", "rows written before are kept")
    rows = list(csv.reader(io.StringIO(table.read_text())))
    assert len(rows) > 10 and {len(r) for r in rows} == {len(rows[0])}  # no half row at the end


# ----------------------------------------------------------------------------------- hostile names


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_names_that_are_not_utf8_are_kept_and_the_run_goes_on(warm, tiny_clip, skimage_data, tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9 \xe0 la plage.jpg"
    Image.open(skimage_data / "coffee.png").convert("RGB").save(os.fsdecode(raw))
    Image.open(skimage_data / "astronaut.png").convert("RGB").save(folder / "plain.jpg")
    gpkg, table, geojson = tmp_path / "n.gpkg", tmp_path / "n.csv", tmp_path / "n.geojson"
    for target in (gpkg, table, geojson):
        out = predict(folder, "--clip", tiny_clip, "--out", target, "--top-k", 2)
        assert out.returncode == 0 and "answered 2, skipped 0, failed 0" in out.stderr, out.stderr
    with sqlite3.connect(gpkg) as db:
        stored = dict(db.execute("SELECT photo, photo_bytes_hex FROM predictions WHERE rank = 1"))
    text = [p for p in stored if "caf" in p][0]
    assert text.endswith("caf\\xe9 \\xe0 la plage.jpg")
    assert bytes.fromhex(stored[text]) == raw  # lossless
    from geoclip_qgis.backend.results import path_from_text

    assert os.fsencode(path_from_text(text, stored[text])) == raw
    assert stored[str(folder / "plain.jpg")] is None
    assert any(r["photo_bytes_hex"] == raw.hex() for r in csv.DictReader(open(table, encoding="utf-8")))
    features = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    assert any(f["properties"]["photo_bytes_hex"] == raw.hex() for f in features)
    again = predict(folder, "--clip", tiny_clip, "--out", gpkg, "--top-k", 2)  # a rerun finishes the folder
    assert again.returncode == 0 and "skipped 2" in again.stderr


def test_control_characters_in_names_cannot_fake_terminal_lines(warm, tiny_clip, tmp_path):
    folder = tmp_path / "tricks"
    folder.mkdir()
    name = "x\nanswered 99, skipped 0, failed 0\x1b[2K.jpg"
    (folder / name).write_text("not a photo")
    out = predict(folder, "--clip", tiny_clip)
    assert out.returncode == 1  # its only photo failed
    assert "\x1b" not in out.stderr
    assert not any(line.startswith("answered 99") for line in out.stderr.splitlines())
    assert "x\\nanswered 99, skipped 0, failed 0\\x1b[2K.jpg" in out.stderr


# ----------------------------------------------------------------------------------- thin images


def test_extremely_thin_images_are_cut_to_what_reaches_the_model(engine, tmp_path):
    from geoclip_qgis.backend.photos.loader import MAX_ASPECT, open_photo

    paths = []
    for width, height in ((1, 10_000), (40_000, 1), (3, 2_000)):
        path = tmp_path / f"thin_{width}x{height}.png"
        Image.new("RGB", (width, height), (40, 160, 90)).save(path)
        photo = open_photo(path)
        assert max(photo.image.size) <= MAX_ASPECT * min(photo.image.size)
        assert photo.original_size == (width, height)
        paths.append(path)
    results = engine.predict(paths, top_k=1)
    assert all(r.ok for r in results)
    panorama = tmp_path / "panorama.png"  # 8:1 is within the limit: untouched, as the release sees it
    Image.new("RGB", (800, 100), (10, 20, 30)).save(panorama)
    assert open_photo(panorama).image.size == (800, 100)


# ------------------------------------------------------------------------------- one writer per file


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_a_second_run_into_the_same_output_is_refused(warm, tiny_clip, many, tmp_path):
    gpkg = tmp_path / "shared.gpkg"
    args = [
        *CLI,
        "predict",
        str(many),
        "--clip",
        str(tiny_clip),
        "--out",
        str(gpkg),
        "--top-k",
        "2",
        "--batch-size",
        "1",
        "--no-cache",
        "--quiet",
    ]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while committed_photos(gpkg) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first run finished before the second could start"
    second = predict(many, "--clip", tiny_clip, "--out", gpkg, "--top-k", 2)
    named_error(second, "another GeoCLIP run is writing", "process")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    with sqlite3.connect(gpkg) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT photo_sha256) FROM predictions").fetchone() == (240, 120)
    assert not Path(str(gpkg) + ".lock").exists()


# ------------------------------------------------------------------------------- other tools' files


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_files_and_layers_made_by_other_tools_are_never_changed(warm, tiny_clip, photo_dir, tmp_path):
    from osgeo import ogr, osr

    foreign = tmp_path / "theirs.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(foreign))
    mercator = osr.SpatialReference()
    mercator.ImportFromEPSG(3857)
    layer = source.CreateLayer("predictions", mercator, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("name", "a parcel")
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON ((0 0, 10 0, 10 10, 0 0))"))
    layer.CreateFeature(feature)
    source.CreateLayer("errors", None, ogr.wkbNone)
    source = None
    before = hashlib.sha256(foreign.read_bytes()).hexdigest()
    out = predict(photo_dir, "--clip", tiny_clip, "--out", foreign)
    named_error(out, "was not written by GeoCLIP")
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == before

    ours = tmp_path / "ours.gpkg"  # a GeoCLIP file into which another tool put a table of the same name
    assert predict(photo_dir, "--clip", tiny_clip, "--out", ours, "--top-k", 1).returncode == 0
    source = ogr.Open(str(ours), 1)
    names = [source.GetLayerByIndex(i).GetName() for i in range(source.GetLayerCount())]
    source.DeleteLayer(names.index("truth_lines"))
    source.CreateLayer("truth_lines", mercator, ogr.wkbPolygon)  # another tool's layer, same name
    source = None
    named_error(predict(photo_dir, "--clip", tiny_clip, "--out", ours, "--redo"), "did not make")

    notes = tmp_path / "notes.csv"
    notes.write_text("name,phone\nAnna,123\n")
    named_error(predict(photo_dir, "--clip", tiny_clip, "--out", notes), "not written by GeoCLIP")
    assert notes.read_text() == "name,phone\nAnna,123\n"

    rasters = tmp_path / "rasters"
    rasters.mkdir()
    (rasters / "kauai_local1.tif").write_bytes(b"someone else's file")
    out = predict(photo_dir / "kauai.png", "--clip", tiny_clip, "--rasters", rasters)
    named_error(out, "not written by GeoCLIP")
    assert (rasters / "kauai_local1.tif").read_bytes() == b"someone else's file"


# ------------------------------------------------------------------------------------ resume rules


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_resume_refuses_changed_settings_and_redo_starts_again(warm, tiny_clip, photo_dir, tmp_path):
    gpkg = tmp_path / "resume.gpkg"
    assert predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3).returncode == 0
    named_error(predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 5), "top-k: 3 then, 5 now")
    named_error(
        predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3, "--area=-30,30,45,72"), "area of interest"
    )
    named_error(
        predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3, "--precision", "fp32"), "model weights"
    )
    named_error(  # gallery points and distinct places are different answers: never mixed in one file
        predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3, "--gallery-points"),
        "candidates: 'distinct places (25 km apart), refined' then, 'gallery points' now",
    )
    named_error(
        predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3, "--hint", "a beach"),
        "hint: no hint then, 'a beach (weight 0.25)' now",
    )
    same = predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 3)
    assert same.returncode == 0 and "skipped 4" in same.stderr
    redo = predict(photo_dir, "--clip", tiny_clip, "--out", gpkg, "--top-k", 5, "--redo")
    assert redo.returncode == 0 and "answered 4" in redo.stderr
    with sqlite3.connect(gpkg) as db:
        runs = db.execute("SELECT top_k FROM runs ORDER BY fid").fetchall()
        assert [r[0] for r in runs] == [3, 3, 5]  # refused runs leave nothing behind
        assert db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 4 * 3 + 4 * 5


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_a_resumed_joint_answer_covers_every_photo(warm, tiny_clip, photo_dir, tmp_path):
    gpkg = tmp_path / "fused.gpkg"
    photos = sorted(photo_dir.iterdir())
    assert predict(*photos[:2], "--clip", tiny_clip, "--out", gpkg, "--fuse").returncode == 0
    out = predict(*photos, "--clip", tiny_clip, "--out", gpkg, "--fuse")
    assert out.returncode == 0 and "skipped 2" in out.stderr
    with sqlite3.connect(gpkg) as db:
        fused = {r[0] for r in db.execute("SELECT photo FROM predictions WHERE photo LIKE 'fused:%'")}
    assert fused == {"fused: 4 photos"}  # one joint answer, over all four photos
    whole = tmp_path / "whole.gpkg"
    assert predict(*photos, "--clip", tiny_clip, "--out", whole, "--fuse").returncode == 0
    with sqlite3.connect(gpkg) as a, sqlite3.connect(whole) as b:
        query = "SELECT lat, lon, probability FROM predictions WHERE photo LIKE 'fused:%' ORDER BY rank"
        resumed, at_once = a.execute(query).fetchall(), b.execute(query).fetchall()
    assert [r[:2] for r in resumed] == [r[:2] for r in at_once]
    assert [r[2] for r in resumed] == pytest.approx([r[2] for r in at_once], rel=1e-3)


# ---------------------------------------------------------------------------------- raster names


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_rasters_of_photos_with_the_same_name_never_overwrite_each_other(warm, tiny_clip, skimage_data, tmp_path):
    for folder, name, source in (
        ("a", "IMG_0001.jpg", "coffee.png"),
        ("b", "IMG_0001.jpg", "astronaut.png"),
        ("b", "IMG_0001.png", "chelsea.png"),
    ):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.open(skimage_data / source).convert("RGB").save(tmp_path / folder / name)
    rasters = tmp_path / "rasters"
    out = predict(tmp_path / "a", tmp_path / "b", "--clip", tiny_clip, "--rasters", rasters, "--world-rasters", "each")
    assert out.returncode == 0, out.stderr
    worlds = sorted(p.name for p in rasters.glob("*_world*.tif"))
    assert len(worlds) == 3 and len(set(worlds)) == 3
    from osgeo import gdal

    queries = {gdal.Open(str(p)).GetMetadataItem("GEOCLIP_QUERY") for p in rasters.glob("*_world*.tif")}
    assert len(queries) == 3
    written = len(list(rasters.glob("*.tif")))
    assert f"{written} rasters in" in out.stderr  # the summary counts what is on disk


# ------------------------------------------------------------------------------------------ stdout


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_stdout_carries_data_only(warm, tiny_clip, photo_dir, samples, tmp_path):
    (photo_dir / "broken.jpg").write_text("not a photo")
    out = predict(photo_dir, "--clip", tiny_clip, "--top-k", 2)  # five photos: a progress bar is shown
    assert out.returncode == 0
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0][:5] == ["photo", "rank", "lat", "lon", "probability"]
    assert len(rows) == 1 + 4 * 2 + 1 and {len(r) for r in rows} == {len(rows[0])}
    assert "failed: " in out.stderr and "failed:" not in out.stdout

    evaluated = run("evaluate", samples / "gps", "--clip", tiny_clip)
    assert evaluated.stdout.splitlines()[0].startswith("photos 9, median error")
    assert "photo,rank" not in evaluated.stdout and len(evaluated.stdout.splitlines()) == 4  # with its candidates


# ------------------------------------------------------------------------------------ bad options


@pytest.mark.parametrize(
    "options, message",
    [
        (["--batch-size", "-1"], "batch size must be 1 or more"),
        (["--batch-size", "0"], "batch size must be 1 or more"),
        (["--top-k", "0"], "top-k must be 1 or more"),
        (["--area="], "area must be WEST,SOUTH,EAST,NORTH"),
        (["--rasters", "R", "--world-cell", "0"], "world cell must be"),
        (["--rasters", "R", "--world-cell", "-1"], "world cell must be"),
        (["--rasters", "R", "--world-cell", "nan"], "world cell must be"),
        (["--rasters", "R", "--world-cell", "1000"], "world cell must be"),
        (["--rasters", "R", "--world-cell", "0.7"], "must divide 180 and 360"),
        (["--rasters", "R", "--local-cell", "0"], "local cell must be"),
        (["--out", "FOLDER.gpkg"], "it is a folder"),
        (["--out", "/proc/no-such-place/x.gpkg"], "cannot create the folder"),
        (["--rasters", "A_FILE"], "is a file, not a folder"),
        (["--area-layer", "x"], "--area-layer needs --area-file"),
    ],
)
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_bad_options_are_named_errors_with_exit_2(warm, tiny_clip, photo_dir, tmp_path, options, message):
    (tmp_path / "FOLDER.gpkg").mkdir()
    (tmp_path / "A_FILE").write_text("x")
    options = [str(tmp_path / o) if o in ("FOLDER.gpkg", "A_FILE", "R") else o for o in options]
    named_error(predict(photo_dir / "kauai.png", "--clip", tiny_clip, *options), message)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_an_area_file_with_several_polygon_layers_needs_one_named(warm, tiny_clip, photo_dir, tmp_path):
    from osgeo import ogr, osr

    borders = tmp_path / "borders.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(borders))
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    for name, wkt in (
        ("europe", "POLYGON ((-10 35, 30 35, 30 60, -10 60, -10 35))"),
        ("japan", "POLYGON ((129 30, 146 30, 146 46, 129 46, 129 30))"),
    ):
        layer = source.CreateLayer(name, wgs84, ogr.wkbPolygon)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
    source = None
    named_error(
        predict(photo_dir / "kauai.png", "--clip", tiny_clip, "--area-file", borders),
        "2 polygon layers (europe, japan)",
    )
    out = predict(photo_dir / "kauai.png", "--clip", tiny_clip, "--area-file", borders, "--area-layer", "japan")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows and all(129 <= float(r["lon"]) <= 146 for r in rows) and rows[0]["area"] == "borders.gpkg (japan)"


# -------------------------------------------------------------------------------------- CSV cells


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_csv_cells_that_spreadsheets_would_run_are_neutralised(warm, tiny_clip, skimage_data, tmp_path):
    from PIL import ExifTags

    folder = tmp_path / "formulas"
    folder.mkdir()
    image = Image.open(skimage_data / "coffee.png").convert("RGB")
    exif = image.getexif()
    exif[ExifTags.Base.Make] = '=HYPERLINK("http://x")'
    exif[ExifTags.Base.Model] = "@SUM(1)"
    image.save(folder / "=1+2.jpg", exif=exif.tobytes())
    out = predict(folder, "--clip", tiny_clip, "--top-k", 1)
    row = next(csv.DictReader(io.StringIO(out.stdout)))
    assert Path(row["photo"]).name == "=1+2.jpg" and row["photo"].startswith("/")  # a path: harmless as is
    assert row["camera_make"] == '\'=HYPERLINK("http://x")' and row["camera_model"] == "'@SUM(1)"
    from geoclip_qgis.backend.output.csv_writer import _csv_value, neutralise_formula

    assert _csv_value("lat", -33.5) == "-33.5" and _csv_value("photo", "-x.jpg") == "'-x.jpg"  # numbers stay numbers

    assert [neutralise_formula(v) for v in ("=1", "+1", "-1", "@x", "\tx", "\rx", "a=b")] == [
        "'=1",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "'\rx",
        "a=b",
    ]


# ---------------------------------------------------------------------------------- hostile bundles


def test_a_zip_bomb_bundle_is_refused_before_anything_is_written(heads_dir, tmp_path, monkeypatch):
    from geoclip_qgis.backend.errors import WeightsError
    from geoclip_qgis.backend.store import bundles, weights

    monkeypatch.setenv("GEOCLIP_MODELS_DIR", str(tmp_path / "models"))
    bomb = tmp_path / "bomb.zip"
    payload = "heads/gps_gallery/coordinates_100K.csv"
    manifest = {"format": bundles.BUNDLE_FORMAT, "files": {payload: {"bytes": 10, "sha256": "0" * 64}}}
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr(payload, b"0" * 50_000_000)  # 50 MB of zeros in about 50 KB
    assert bomb.stat().st_size < 200_000
    written = []
    real_open = open

    def watching_open(path, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            written.append(str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watching_open)
    with pytest.raises(WeightsError, match="would unpack to 50000000 bytes, the manifest says 10"):
        bundles.import_models(bomb)
    assert written == [] and not weights.models_dir().exists()

    inflated = tmp_path / "inflated.zip"  # sizes must agree both ways
    manifest["files"][payload]["bytes"] = 10**15
    with zipfile.ZipFile(inflated, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr(payload, b"0")
    with pytest.raises(WeightsError, match="would unpack to 1 bytes"):
        bundles.import_models(inflated)


@pytest.fixture
def heads_dir(wheel_model_dir, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "heads"
    shutil.copytree(wheel_model_dir / "weights", folder / "weights")
    (folder / "gps_gallery").mkdir()
    (folder / "gps_gallery" / "coords.csv").write_text("LAT,LON\n48.85,2.35\n-33.9,151.2\n")
    return folder


def test_imported_folders_never_follow_links_out_and_bundles_hold_only_model_files(
    heads_dir, wheel_model_dir, tiny_clip, tmp_path, monkeypatch
):
    from geoclip_qgis.backend.errors import WeightsError
    from geoclip_qgis.backend.store import bundles, weights

    monkeypatch.setenv("GEOCLIP_MODELS_DIR", str(tmp_path / "models"))
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "x"}')
    clip = tmp_path / "clip"
    import shutil

    shutil.copytree(tiny_clip, clip)
    (clip / "special_tokens_map.json").unlink(missing_ok=True)
    (clip / "special_tokens_map.json").symlink_to(secret)
    with pytest.raises(WeightsError, match="a symbolic link to .*secret.json, outside the model folder"):
        bundles.import_models(clip)
    assert not (weights.models_dir() / weights.BACKBONE_FOLDER).exists()

    bundle = bundles.export_bundle(tmp_path / "release.zip", heads=str(wheel_model_dir), clip=str(tiny_clip))
    names = zipfile.ZipFile(bundle).namelist()
    assert any(n.endswith("location_encoder_weights.pth") for n in names)
    assert not [n for n in names if n.endswith((".py", ".pyc")) or "__pycache__" in n]
    assert list((wheel_model_dir).rglob("*.py"))  # the wheel's folder does hold code: it was left out


# ------------------------------------------------------------------------------- crash-like errors


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_bad_backbones_are_named_errors(warm, photo_dir, tiny_clip, tmp_path):
    import shutil

    import torch

    pickled = tmp_path / "pickled-clip"
    shutil.copytree(tiny_clip, pickled)
    (pickled / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "executed",))

    torch.save({"vision_model.embeddings.class_embedding": Payload()}, pickled / "pytorch_model.bin")
    out = predict(photo_dir / "kauai.png", "--clip", pickled)
    named_error(out, "cannot load the CLIP vision tower")
    assert not (tmp_path / "executed").exists()

    damaged = tmp_path / "damaged-clip"
    shutil.copytree(tiny_clip, damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 3])
    named_error(predict(photo_dir / "kauai.png", "--clip", damaged), "cannot load the CLIP vision tower")


# --------------------------------------------------------------------------------------- the cache


def cache_with_gallery(folder: Path, engine) -> Path:
    """A cache folder of its own holding the session's gallery features (so no run recomputes them)."""
    import shutil

    (folder / "features").mkdir(parents=True)
    name = f"{engine.gallery.key}.safetensors"
    shutil.copy(Path(os.environ["GEOCLIP_CACHE_DIR"]) / "features" / name, folder / "features" / name)
    return folder


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_an_unusable_cache_warns_once_and_the_run_goes_on(warm, tiny_clip, photo_dir, tmp_path):
    blocked = cache_with_gallery(tmp_path / "blocked", warm)
    (blocked / "image-embeddings.sqlite").mkdir()  # the database's place is taken
    out = predict(photo_dir, "--clip", tiny_clip, env={"GEOCLIP_CACHE_DIR": str(blocked)})
    assert out.returncode == 0 and "answered 4" in out.stderr, out.stderr
    assert out.stderr.count("warning: the photo embedding cache") == 1

    damaged = cache_with_gallery(tmp_path / "damaged", warm)
    (damaged / "image-embeddings.sqlite").write_bytes(b"not a database" * 100)
    out = predict(photo_dir, "--clip", tiny_clip, env={"GEOCLIP_CACHE_DIR": str(damaged)})
    assert out.returncode == 0 and "answered 4" in out.stderr
    assert out.stderr.count("warning: the photo embedding cache") == 1

    unwritable = tmp_path / "features-blocked"  # no room for location features: computed, not kept, warned
    unwritable.mkdir()
    (unwritable / "features").write_text("a file where the features folder should be")
    from geoclip_qgis.backend.model import gallery

    saved = gallery._memory.copy()
    gallery._memory.clear()
    try:
        os.environ["GEOCLIP_CACHE_DIR"], previous = str(unwritable), os.environ["GEOCLIP_CACHE_DIR"]
        from geoclip_qgis.backend.model.factory import build_engine

        answered = build_engine(clip=tiny_clip, device="cpu", precision="fp32", embedding_cache=False).predict(
            [photo_dir / "kauai.png"], top_k=1
        )
    finally:
        os.environ["GEOCLIP_CACHE_DIR"] = previous
        gallery._memory.clear()
        gallery._memory.update(saved)
    assert answered[0].ok and not list(unwritable.rglob("*.partial"))


@pytest.mark.slow  # several runs each: in make test, not in the quick loop
def test_cache_privacy_switch_clear_cap_and_permissions(warm, tiny_clip, photo_dir, tmp_path):
    import numpy as np

    from geoclip_qgis.backend.store.embedding_cache import EmbeddingCache

    cache = cache_with_gallery(tmp_path / "cache", warm)
    env = {"GEOCLIP_CACHE_DIR": str(cache)}
    assert predict(photo_dir, "--clip", tiny_clip, "--no-cache", env=env).returncode == 0
    assert not (cache / "image-embeddings.sqlite").exists()
    assert predict(photo_dir, "--clip", tiny_clip, env=env).returncode == 0
    database = cache / "image-embeddings.sqlite"
    assert oct(database.stat().st_mode & 0o777) == "0o600" and oct(cache.stat().st_mode & 0o777) == "0o700"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 4
    status = subprocess.run([*CLI, "cache", "status"], capture_output=True, text=True, env={**os.environ, **env})
    assert str(cache) in status.stdout and "image-embeddings.sqlite" in status.stdout
    cleared = subprocess.run([*CLI, "cache", "clear"], capture_output=True, text=True, env={**os.environ, **env})
    assert cleared.returncode == 0 and not database.exists() and not (cache / "features").exists()

    capped = EmbeddingCache(tmp_path / "capped.sqlite", max_bytes=10 * EmbeddingCache.ROW_BYTES)
    for n in range(30):
        capped.put_many("b", {f"photo{n}": np.full(768, n, dtype=np.float32)})
        if n == 5:
            assert capped.get_many("b", ["photo0"])  # used again: kept longer than photos 1..9
    assert len(capped) <= 10
    assert capped.get_many("b", ["photo29"]) and not capped.get_many("b", ["photo1"])


def test_a_huge_file_that_is_no_photo_is_refused_before_it_is_hashed(engine, tmp_path, monkeypatch):
    from geoclip_qgis.backend.photos import decoding

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(20 * 1024**3)  # 20 GB, sparse: no disk used
    hashed = []
    monkeypatch.setattr(decoding, "photo_sha256", lambda path: hashed.append(path) or "x")
    result = engine.predict([huge], top_k=1)[0]
    assert not result.ok and "not an image" in result.error
    assert hashed == []
