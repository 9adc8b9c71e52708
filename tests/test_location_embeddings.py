"""GeoCLIP's location encoder as a GIS tool, on the real trained heads of the geoclip wheel: point
embeddings (arrays and files), embedding maps, similar places, and the embed/embedmap/similar commands."""

from __future__ import annotations

import csv
import io
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch

from geoclip_qgis.backend.errors import Cancelled
from geoclip_qgis.backend.geo import haversine_km
from geoclip_qgis.backend.location import embedding_maps, location_features, point_embeddings, similar_places
from geoclip_qgis.backend.model import gallery as gallery_module
from geoclip_qgis.backend.model.heads import HeadsFiles, load_heads
from geoclip_qgis.backend.progress import Progress
from geoclip_qgis.backend.store.weights import gallery_csv

gdal = pytest.importorskip("osgeo.gdal")
ogr = pytest.importorskip("osgeo.ogr")
osr = pytest.importorskip("osgeo.osr")

MERCATOR_RADIUS = 6378137.0


@pytest.fixture(scope="module")
def model(wheel_model_dir) -> location_features.LocationModel:
    files = HeadsFiles(wheel_model_dir, gallery_csv(wheel_model_dir))
    return location_features.LocationModel(load_heads(files), files, torch.device("cpu"), "release heads")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors.astype(np.float64), axis=1)


# ------------------------------------------------------------------------------------ properties


def test_nearby_points_are_more_similar_than_far_ones(model):
    rng = np.random.default_rng(7)
    lat = np.degrees(np.arcsin(rng.uniform(-0.85, 0.95, 200)))
    lon = rng.uniform(-179, 179, 200)
    here = model.encode(np.stack([lat, lon], axis=1))
    near = model.encode(np.stack([lat + rng.uniform(-0.01, 0.01, 200), lon + rng.uniform(-0.01, 0.01, 200)], axis=1))
    partner = rng.permutation(200)
    far = haversine_km(lat, lon, lat[partner], lon[partner]) > 2000
    near_similarity = np.sum(here * near, axis=1)
    far_similarity = np.sum(here * here[partner], axis=1)[far]
    assert far.sum() > 100
    assert near_similarity.mean() > far_similarity.mean()
    assert np.median(near_similarity) > np.quantile(far_similarity, 0.95)


def test_one_place_one_vector_across_the_antimeridian(model):
    lats = [-45.0, 0.0, 17.5, 66.0]
    east = model.encode([[lat, 180.0] for lat in lats])
    west = model.encode([[lat, -180.0] for lat in lats])
    assert np.array_equal(east, west)
    with torch.inference_mode():  # the vector is the model's own at -180
        raw = model.heads.location_features(torch.tensor([[lat, -180.0] for lat in lats])).numpy()
    np.testing.assert_allclose(west, raw, atol=1e-6)
    assert np.array_equal(model.encode([[10.0, 190.0]]), model.encode([[10.0, -170.0]]))


def test_poles_are_finite_unit_vectors(model):
    poles = model.encode([[90.0, 0.0], [90.0, 45.0], [90.0, 180.0], [-90.0, 0.0], [-90.0, -120.0]])
    assert np.isfinite(poles).all()
    np.testing.assert_allclose(unit_rows(poles), 1.0, atol=1e-5)
    # One pole, one vector (the raw model gives a pole a different vector at each longitude); rows of
    # one batch may differ in the last bits, hence the tolerance.
    np.testing.assert_allclose(poles[1:3], poles[[0, 0]], atol=1e-6)
    np.testing.assert_allclose(poles[4], poles[3], atol=1e-6)
    assert not np.allclose(poles[0], poles[3])


def test_encode_points_in_chunks_equals_the_model_in_one_go(model, monkeypatch):
    monkeypatch.setattr(location_features, "CHUNK", 256)  # small chunks, so a few hundred points take two
    rng = np.random.default_rng(3)
    count = 256 + 100
    points = np.stack([rng.uniform(-89, 89, count), rng.uniform(-179, 179, count)], axis=1)
    calls = []
    vectors = location_features.encode_points(model.heads, points, "cpu", calls.append)
    with torch.inference_mode():
        direct = model.heads.location_features(torch.from_numpy(points.astype(np.float32))).numpy()
    assert vectors.dtype == np.float32 and vectors.shape == (len(points), 512)
    np.testing.assert_allclose(vectors, direct, atol=2e-5)
    np.testing.assert_allclose(unit_rows(vectors), 1.0, atol=1e-5)
    assert {(p.stage, p.total, p.unit) for p in calls} == {("Encoding locations", len(points), "points")}
    assert calls[0].done == 0 and calls[-1].done == len(points)

    with pytest.raises(Cancelled):
        location_features.encode_points(model.heads, points, "cpu", should_stop=lambda: True)
    with pytest.raises(location_features.LocationError, match="latitude"):
        location_features.encode_points(model.heads, [[91.0, 0.0]])
    with pytest.raises(location_features.LocationError, match="not a number"):
        location_features.encode_points(model.heads, [[np.nan, 0.0]])


def test_gallery_encoding_reports_its_stage_and_stops_between_chunks(model, monkeypatch, tmp_path):
    monkeypatch.setattr(gallery_module, "CHUNK", 100)
    monkeypatch.setenv("GEOCLIP_CACHE_DIR", str(tmp_path))
    coordinates = np.stack([np.linspace(-60, 60, 250), np.linspace(-170, 170, 250)], axis=1).astype(np.float32)
    stage = gallery_module.GALLERY_ENCODING
    seen = []
    features = gallery_module.encode_locations(model.heads, torch.from_numpy(coordinates), seen.append, stage=stage)
    assert features.shape == (250, 512)
    assert seen[0] == Progress(stage, 0, 250, None, "places") and (seen[-1].done, seen[-1].fraction) == (250, 1.0)
    assert all(p.stage == stage and p.total == 250 for p in seen)

    asked = []

    def stop_before_the_second_chunk() -> bool:
        asked.append(1)
        return len(asked) > 1

    seen.clear()
    with pytest.raises(Cancelled):  # a first use stopped on request: nothing is kept as the cache
        gallery_module.cached_location_features(
            model.heads,
            "stopped",
            lambda: coordinates,
            model.device,
            seen.append,
            should_stop=stop_before_the_second_chunk,
        )
    assert len(asked) == 2 and seen[0].done == 0 and max(p.done for p in seen) <= 100
    assert ("stopped", str(model.device)) not in gallery_module._memory
    assert not (tmp_path / "features" / "stopped.safetensors").exists()


# ----------------------------------------------------------------------------------- point files


def _mercator_gpkg(path, points):
    """A GeoPackage point layer in EPSG:3857 with text, integer, real and date fields; one feature has
    no geometry."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("sites", srs, ogr.wkbPoint)
    for name, kind in (
        ("name", ogr.OFTString),
        ("visits", ogr.OFTInteger),
        ("score", ogr.OFTReal),
        ("seen", ogr.OFTDate),
    ):
        layer.CreateField(ogr.FieldDefn(name, kind))
    fids = []
    for index, position in enumerate([*points, None]):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("name", f"site {index}")
        feature.SetField("visits", index * 3)
        feature.SetField("score", index / 4)
        feature.SetField("seen", f"2024/01/{index + 1:02d}")
        if position is not None:
            point = ogr.Geometry(ogr.wkbPoint)
            point.AddPoint_2D(*position)
            feature.SetGeometry(point)
        layer.CreateFeature(feature)
        fids.append(feature.GetFID())
    dataset = None
    return fids[:-1]


def _inverse_mercator(x, y):
    lon = math.degrees(x / MERCATOR_RADIUS)
    lat = math.degrees(2 * math.atan(math.exp(y / MERCATOR_RADIUS)) - math.pi / 2)
    return lat, lon


def test_vector_file_round_trip(model, tmp_path):
    points = [
        (261600.0, 6250000.0),
        (-8238000.0, 4970000.0),
        (16800000.0, -4000000.0),
        (0.0, 0.0),
        (-13630000.0, 4540000.0),
    ]
    fids = _mercator_gpkg(tmp_path / "sites.gpkg", points)
    outcome = point_embeddings.embed_file(
        model, tmp_path / "sites.gpkg", tmp_path / "out.gpkg", tmp_path / "out.npz", pca_components=2
    )
    assert outcome.points == len(points) and outcome.skipped == 1
    assert [p.name for p in outcome.written] == ["out.gpkg", "out.npz"]
    assert not list(tmp_path.glob("*.partial*"))

    expected_positions = np.array([_inverse_mercator(x, y) for x, y in points])
    expected = location_features.encode_points(model.heads, expected_positions)

    dataset = ogr.Open(str(tmp_path / "out.gpkg"))
    layer = dataset.GetLayerByName(point_embeddings.POINTS_LAYER)
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    defn = layer.GetLayerDefn()
    embedding_field = defn.GetFieldDefn(defn.GetFieldIndex(point_embeddings.EMBEDDING_FIELD))
    assert embedding_field.GetType() == ogr.OFTString and embedding_field.GetSubType() == ogr.OFSTJSON
    rows = list(layer)
    assert len(rows) == len(points)
    vectors = np.stack(
        [point_embeddings.embedding_from_json(f.GetField(point_embeddings.EMBEDDING_FIELD)) for f in rows]
    )
    positions = np.array([(f.GetGeometryRef().GetY(), f.GetGeometryRef().GetX()) for f in rows])
    np.testing.assert_allclose(positions, expected_positions, atol=1e-7)
    np.testing.assert_allclose(vectors, expected, atol=2e-6)
    assert [f.GetField("source_id") for f in rows] == fids
    assert [f.GetField("name") for f in rows] == [f"site {i}" for i in range(len(points))]
    assert [f.GetField("visits") for f in rows] == [i * 3 for i in range(len(points))]
    assert [f.GetFieldAsString("seen") for f in rows] == [f"2024/01/{i + 1:02d}" for i in range(len(points))]

    with np.load(tmp_path / "out.npz", allow_pickle=False) as arrays:
        assert arrays["ids"].tolist() == fids
        assert np.array_equal(arrays["embeddings"], vectors)  # the JSON text gives back the float32 values
        np.testing.assert_allclose(arrays["lat"], expected_positions[:, 0], atol=1e-7)
        pcs = (arrays["embeddings"] - arrays["pca_mean"]) @ arrays["pca_components"].T
        np.testing.assert_allclose(arrays["pcs"], pcs, atol=1e-5)
        components = arrays["pca_components"]
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-5)
    fields_pcs = np.array([[f.GetField("pc1"), f.GetField("pc2")] for f in rows])
    np.testing.assert_allclose(fields_pcs, pcs, atol=1e-5)
    assert fields_pcs[:, 0].var() >= fields_pcs[:, 1].var()


def test_point_files_that_cannot_be_used_are_refused(model, tmp_path):
    path = tmp_path / "lines.geojson"
    path.write_text(
        '{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},'
        '"geometry":{"type":"LineString","coordinates":[[0,0],[1,1]]}}]}'
    )
    with pytest.raises(location_features.LocationError, match="points"):
        point_embeddings.read_points(path)
    table = tmp_path / "no_position.csv"
    table.write_text("name,x\na,1\n")
    with pytest.raises(location_features.LocationError, match="latitude/longitude"):
        point_embeddings.read_points(table)
    clash = tmp_path / "clash.csv"
    clash.write_text("lat,lon,embedding\n1,2,x\n")
    with pytest.raises(location_features.LocationError, match="embedding"):
        point_embeddings.embed_file(model, clash, gpkg=tmp_path / "clash.gpkg")
    assert not (tmp_path / "clash.gpkg").exists()


# ---------------------------------------------------------------------------------- embedding maps

SMALL = (5.0, 44.0, 7.0, 46.5)  # 8 x 10 cells of 0.25 deg


def test_embedding_map_rgb_geotiff(model, tmp_path):
    made = embedding_maps.embedding_map(model, tmp_path / "map.tif", SMALL, 0.25)
    dataset = gdal.Open(str(made.path))
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (8, 10, 3)
    assert dataset.GetGeoTransform() == pytest.approx((5.0, 0.25, 0.0, 46.5, 0.0, -0.25))
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    assert srs.GetAuthorityCode(None) == "4326"
    colours = [dataset.GetRasterBand(i).GetColorInterpretation() for i in (1, 2, 3)]
    assert colours == [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]
    assert all(dataset.GetRasterBand(i).DataType == gdal.GDT_Byte for i in (1, 2, 3))
    metadata = dataset.GetMetadata()
    assert metadata["GEOCLIP_CELL_DEG"] == "0.25" and "principal components" in metadata["GEOCLIP_VALUES"]
    assert dataset.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    pixels = dataset.ReadAsArray()
    assert pixels.min() == 0 and pixels.max() == 255  # the 1st..99th percentiles stretch to the full range

    # The bytes are the scaled principal components of the cell centres' features.
    grid = made.grid
    features = location_features.encode_points(
        model.heads, grid.centres(), dtype=location_features.grid_dtype(model.device)
    )
    scores = made.pca.project(features)
    low, high = made.byte_ranges[:, 0], made.byte_ranges[:, 1]
    expected = np.clip(np.rint((scores - low) / (high - low) * 255), 0, 255).T.reshape(3, 10, 8)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_embedding_map_streams_tiles_to_the_same_raster(model, tmp_path):
    one = embedding_maps.embedding_map(model, tmp_path / "one.tif", SMALL, 0.25, tile_rows=1000)
    tiles = []
    many = embedding_maps.embedding_map(
        model,
        tmp_path / "many.tif",
        SMALL,
        0.25,
        tile_rows=3,
        progress=lambda event: tiles.append((event.stage, event.done, event.total)),
    )
    assert one.tiles == 1 and many.tiles == 4
    assert [t for t in tiles if t[0] == "Embedding map"] == [("Embedding map", i, 4) for i in range(5)]
    assert np.array_equal(gdal.Open(str(one.path)).ReadAsArray(), gdal.Open(str(many.path)).ReadAsArray())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_embedding_map_bytes_do_not_depend_on_tiles_across_encoder_blocks(model, tmp_path, precision):
    """A grid of 1,280 cells spans two of the encoder's fixed blocks (ENCODE_BATCH): tiles of 3 and 7 rows
    cut those blocks anywhere, and the map is still the same, byte for byte, as in one tile."""
    extent = (0.0, 40.0, 10.0, 48.0)  # 40 x 32 cells of 0.25 deg
    assert 40 * 32 > embedding_maps.ENCODE_BATCH
    maps = [
        embedding_maps.embedding_map(model, tmp_path / f"{rows}.tif", extent, 0.25, precision=precision, tile_rows=rows)
        for rows in (1000, 3, 7)
    ]
    assert [m.tiles for m in maps] == [1, 11, 5]
    first, *others = (gdal.Open(str(m.path)).ReadAsArray() for m in maps)
    for other in others:
        assert np.array_equal(first, other)


def test_embedding_map_float_bands_hold_components_and_features(model, tmp_path):
    pca = embedding_maps.embedding_map(
        model, tmp_path / "pca.tif", SMALL, 0.25, bands="pca", components=5, precision="fp32", tile_rows=4
    )
    features = location_features.encode_points(model.heads, pca.grid.centres())
    values = gdal.Open(str(pca.path)).ReadAsArray()
    assert values.shape == (5, 10, 8) and values.dtype == np.float32
    np.testing.assert_allclose(values, pca.pca.project(features).T.reshape(5, 10, 8), atol=1e-4)

    tiny = (5.0, 44.0, 5.5, 44.5)
    every = embedding_maps.embedding_map(model, tmp_path / "all.tif", tiny, 0.25, bands="all", precision="fp32")
    values = gdal.Open(str(every.path)).ReadAsArray()
    assert values.shape == (512, 2, 2)
    expected = location_features.encode_points(model.heads, every.grid.centres())
    np.testing.assert_allclose(values.reshape(512, 4).T, expected, atol=2e-5)


def test_cancelled_map_leaves_no_finished_looking_file(model, tmp_path):
    seen = []

    def stop_after_first_tile():
        return ("Embedding map", 1, 5) in seen

    with pytest.raises(Cancelled):
        embedding_maps.embedding_map(
            model,
            tmp_path / "map.tif",
            SMALL,
            0.25,
            tile_rows=2,
            progress=lambda event: seen.append((event.stage, event.done, event.total)),
            should_stop=stop_after_first_tile,
        )
    assert ("Embedding map", 1, 5) in seen and ("Embedding map", 2, 5) not in seen
    assert list(tmp_path.iterdir()) == []


def test_world_map_reuses_the_rasters_cached_world_grid(model, tmp_path):
    cell = 30.0
    rows, cols = 6, 12
    key = gallery_module.features_key(model.files, f"world-{cell}", "bf16")
    coordinates = torch.from_numpy(embedding_maps.Grid.over(embedding_maps.WORLD, cell).centres())
    marked = torch.nn.functional.normalize(
        torch.randn(rows * cols, 512, generator=torch.Generator().manual_seed(1)), dim=-1
    ).to(torch.bfloat16)
    gallery_module._memory[(key, "cpu")] = gallery_module.Gallery(coordinates, marked, key)  # stands in for the cache
    try:
        reused = embedding_maps.embedding_map(model, tmp_path / "reused.tif", embedding_maps.WORLD, cell, bands="all")
        encoded = embedding_maps.embedding_map(
            model, tmp_path / "encoded.tif", embedding_maps.WORLD, cell, bands="all", precision="fp32"
        )
    finally:
        del gallery_module._memory[(key, "cpu")]
    assert "cached" in reused.features and "encoded" in encoded.features
    values = gdal.Open(str(reused.path)).ReadAsArray().reshape(512, -1).T
    assert np.array_equal(values, marked.float().numpy())
    fresh = gdal.Open(str(encoded.path)).ReadAsArray().reshape(512, -1).T
    np.testing.assert_allclose(fresh, location_features.encode_points(model.heads, coordinates.numpy()), atol=2e-5)


# --------------------------------------------------------------------------------- similar places


def test_similar_places(model, tmp_path):
    lat, lon = 48.875, 2.375  # a cell centre of the 0.25 deg grid below
    found = similar_places.similar_places(
        model, lat, lon, tmp_path / "similar.tif", (0.0, 47.0, 5.0, 51.0), 0.25, top=15
    )
    values = gdal.Open(str(found.raster)).ReadAsArray()
    row, col = found.grid.cell_of(lat, lon)
    assert np.unravel_index(np.argmax(values), values.shape) == (row, col)
    assert values[row, col] > 0.99 and values.max() <= 1.0 + 1e-5 and values.min() >= -1.0 - 1e-5
    assert found.peak == pytest.approx((lat, lon, float(values[row, col])), abs=1e-6)

    similarity = [p.similarity for p in found.places]
    assert len(found.places) == 15 and similarity == sorted(similarity, reverse=True)
    assert [p.rank for p in found.places] == list(range(1, 16))
    assert min(p.distance_km for p in found.places) >= similar_places.EXCLUDE_KM
    query = location_features.encode_points(model.heads, [[lat, lon]])[0]
    recomputed = location_features.encode_points(model.heads, [[p.lat, p.lon] for p in found.places]) @ query
    np.testing.assert_allclose(recomputed, similarity, atol=1e-4)

    unexcluded = similar_places.similar_places(model, lat, lon, top=15, exclude_km=0.0)
    assert unexcluded.raster is None
    assert unexcluded.places[0].distance_km < similar_places.EXCLUDE_KM  # the exclusion is what kept the list away
    assert unexcluded.places[0].similarity > found.places[0].similarity

    spread = similar_places.similar_places(model, lat, lon, top=6, spread_km=200.0)
    places = np.array([[p.lat, p.lon] for p in spread.places])
    apart = haversine_km(places[:, None, 0], places[:, None, 1], places[None, :, 0], places[None, :, 1])
    assert (apart[~np.eye(len(places), dtype=bool)] >= 200.0).all()

    similar_places.write_places_gpkg(found, tmp_path / "places.gpkg")
    dataset = ogr.Open(str(tmp_path / "places.gpkg"))  # kept open while its layer is read
    layer = dataset.GetLayerByName(similar_places.PLACES_LAYER)
    written = [(f.GetField("rank"), f.GetField("similarity"), f.GetGeometryRef().GetX()) for f in layer]
    assert written == [(p.rank, pytest.approx(p.similarity), pytest.approx(p.lon)) for p in found.places]


# ------------------------------------------------------------------------------------ the commands


def run_cli(*argv) -> tuple[int, str, str]:
    """The command line's own entry point (``geoclip-qgis ...``), in this process."""
    from geoclip_qgis.backend.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def test_embed_command_on_a_csv(wheel_model_dir, tmp_path):
    table = tmp_path / "places.csv"
    table.write_text("name,Latitude,LNG,code\nParis,48.85,2.35,01234\nnowhere,,3,7\nSuva,-18.14,178.44,99\n")
    status, out, err = run_cli(
        "embed",
        table,
        "--out",
        tmp_path / "e.gpkg",
        "--npz",
        tmp_path / "e.npz",
        "--heads",
        wheel_model_dir,
        "--device",
        "cpu",
        "--quiet",
    )
    assert status == 0, err
    assert out.split() == [str(tmp_path / "e.gpkg"), str(tmp_path / "e.npz")]
    with np.load(tmp_path / "e.npz", allow_pickle=False) as arrays:
        assert arrays["ids"].tolist() == [1, 3]  # data rows; the row without a position is skipped
        np.testing.assert_allclose(arrays["lon"], [2.35, 178.44])
        np.testing.assert_allclose(unit_rows(arrays["embeddings"]), 1.0, atol=1e-5)
    dataset = ogr.Open(str(tmp_path / "e.gpkg"))
    layer = dataset.GetLayer(0)
    assert [f.GetField("code") for f in layer] == ["01234", "99"]


def test_embedmap_and_similar_commands(wheel_model_dir, tmp_path):
    common = ("--heads", wheel_model_dir, "--device", "cpu", "--quiet")
    status, out, err = run_cli("embedmap", tmp_path / "m.tif", "--extent=-10,40,10,50", "--cell", "2", *common)
    assert status == 0, err
    assert out.strip() == str(tmp_path / "m.tif")
    dataset = gdal.Open(out.strip())
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (10, 5, 3)

    status, out, err = run_cli(
        "similar",
        "-33.875",
        "151.125",
        "--top",
        "4",
        "--raster",
        tmp_path / "s.tif",
        "--extent=150,-35,152,-33",
        "--cell",
        "0.25",
        *common,
    )
    assert status == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert tuple(rows[0]) == similar_places.PLACE_COLUMNS and len(rows) == 5
    similarity = [float(r[3]) for r in rows[1:]]
    assert similarity == sorted(similarity, reverse=True)
    assert all(float(r[4]) >= 25.0 for r in rows[1:])
    assert gdal.Open(str(tmp_path / "s.tif")).ReadAsArray().max() > 0.99


@pytest.mark.parametrize(
    "argv, message",
    [
        (("embedmap", "OUT", "--extent=10,0,-10,5"), "extent"),
        (("embedmap", "OUT", "--cell", "-1"), "cell size"),
        (("embed", "MISSING", "--npz", "x.npz"), "no such file"),
        (("embed", "MISSING"), "at least one output"),
        (("similar", "95", "0"), "latitude"),
    ],
)
def test_command_errors_are_one_line_and_status_2(wheel_model_dir, tmp_path, argv, message):
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING", "x.npz") else a for a in argv]
    status, out, err = run_cli(*argv, "--heads", wheel_model_dir, "--device", "cpu", "--quiet")
    assert status == 2
    assert out == "" and "Traceback" not in err
    assert err.startswith("geoclip-qgis: error:") and message in err
    assert list(tmp_path.iterdir()) == []


def test_missing_heads_are_reported(tmp_path):
    status, _, err = run_cli("similar", "10", "10", "--heads", tmp_path / "nowhere", "--quiet")
    assert status == 2 and "GeoCLIP heads not found" in err


# ------------------------------------------------------------------------------------- in QGIS


@pytest.mark.qgis
def test_processing_algorithms(tmp_path):
    pytest.importorskip("qgis.core")
    from qgis_support import qgis_app

    qgis_app()
    import processing
    from qgis.core import (
        QgsApplication,
        QgsFeature,
        QgsGeometry,
        QgsPointXY,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingOutputLayerDefinition,
        QgsProject,
        QgsRasterLayer,
        QgsVectorLayer,
    )
    from qgis_support import geoclip_provider

    geoclip_provider()  # the plugin's provider, as QGIS loads it
    registry = QgsApplication.processingRegistry()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()

    layer = QgsVectorLayer("Point?crs=EPSG:3857&field=name:string&field=visits:integer", "sites", "memory")
    points = [(261600.0, 6250000.0), (-8238000.0, 4970000.0)]
    features = []
    for index, (x, y) in enumerate(points):
        feature = QgsFeature(layer.fields())
        feature.setAttributes([f"site {index}", index])
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    done = processing.run(
        "geoclip:location_embeddings",
        {"INPUT": layer, "PCA": 1, "OUTPUT": str(tmp_path / "e.gpkg"), "NPZ": str(tmp_path / "e.npz")},
        context=context,
        feedback=feedback,
    )
    assert done["POINTS"] == 2
    with np.load(tmp_path / "e.npz", allow_pickle=False) as arrays:
        expected = np.array([_inverse_mercator(x, y) for x, y in points])
        np.testing.assert_allclose(np.stack([arrays["lat"], arrays["lon"]], axis=1), expected, atol=1e-6)
        vectors = arrays["embeddings"]
    written = QgsVectorLayer(f"{tmp_path / 'e.gpkg'}|layername={point_embeddings.POINTS_LAYER}", "e", "ogr")
    assert [f["name"] for f in written.getFeatures()] == ["site 0", "site 1"]
    # QGIS reads the JSON field as an array of numbers, usable in expressions.
    assert np.array_equal(np.array([f["embedding"] for f in written.getFeatures()], dtype=np.float32), vectors)

    # The command line on the same points, saved as a file, gives the same vectors.
    from qgis.core import QgsVectorFileWriter

    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    saved = tmp_path / "sites.gpkg"
    error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(saved), context.transformContext(), options)
    assert error[0] == QgsVectorFileWriter.WriterError.NoError
    status, _, err = run_cli("embed", saved, "--npz", tmp_path / "cli.npz", "--quiet")
    assert status == 0, err
    with np.load(tmp_path / "cli.npz", allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["embeddings"], vectors)

    # Run as the toolbox does, so the outputs are loaded and styled. Extents read xmin,xmax,ymin,ymax.
    registry_algorithm = registry.createAlgorithmById("geoclip:embedding_map")
    parameters = {
        "EXTENT": "-10,10,40,50 [EPSG:4326]",
        "CELL": 2.0,
        "BANDS": 0,
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "m.tif"), QgsProject.instance()),
    }
    assert registry_algorithm.prepare(parameters, context, feedback)
    assert registry_algorithm.runPrepared(parameters, context, feedback)["OUTPUT"] == str(tmp_path / "m.tif")
    details = context.layerToLoadOnCompletionDetails(str(tmp_path / "m.tif"))
    raster = QgsRasterLayer(str(tmp_path / "m.tif"), "m")
    assert raster.bandCount() == 3 and raster.width() == 10 and raster.height() == 5
    details.postProcessor().postProcessLayer(raster, context, feedback)
    assert type(raster.renderer()).__name__ == "QgsMultiBandColorRenderer"

    done = processing.run(
        "geoclip:similar_places",
        {
            "POINT": "2.375,48.875 [EPSG:4326]",
            "TOP": 3,
            "EXTENT": "0,5,47,51 [EPSG:4326]",
            "CELL": 0.25,
            "OUTPUT": str(tmp_path / "s.tif"),
            "PLACES": str(tmp_path / "p.gpkg"),
        },
        context=context,
        feedback=feedback,
    )
    assert done["PEAK_SIMILARITY"] > 0.99
    places = QgsVectorLayer(done["PLACES"], "p", "ogr")
    similarity = [f["similarity"] for f in places.getFeatures()]
    assert len(similarity) == 3 and similarity == sorted(similarity, reverse=True)
