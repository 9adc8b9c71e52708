"""Which points lie inside a polygon (backend/photos/polygons.py): the batched rule must give exactly what OGR's
per-point ``polygon.Contains(point)`` gives (the reference below, the engine's rule before), edges and
vertices included, and fast enough for the 100K gallery against QGIS's 240-country world map."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from geoclip_qgis.backend.earth import regions
from geoclip_qgis.backend.errors import GeoCLIPError
from geoclip_qgis.backend.photos import polygons
from geoclip_qgis.backend.photos.area import Area
from geoclip_qgis.backend.photos.polygons import (
    InvalidPolygonError,
    PointIndex,
    points_in_polygon,
    polygon_parts,
)

ogr = pytest.importorskip("osgeo.ogr")

WORLD_MAP = Path("/usr/share/qgis/resources/data/world_map.gpkg")


def reference(lat, lon, polygon) -> np.ndarray:
    """The old rule, one point at a time: OGR Contains (points on an edge or vertex are outside)."""
    geometry = ogr.CreateGeometryFromWkt(polygon) if isinstance(polygon, str) else polygon
    point = ogr.Geometry(ogr.wkbPoint)
    inside = np.zeros(len(lat), dtype=bool)
    for i, (y, x) in enumerate(zip(lat, lon)):
        point.SetPoint_2D(0, float(x), float(y))
        inside[i] = geometry.Contains(point)
    return inside


def vertices_of(geometry) -> np.ndarray:
    """(K, 2) x, y of every vertex of a (multi)polygon."""
    if geometry.GetGeometryType() == ogr.wkbLinearRing or geometry.GetGeometryCount() == 0:
        return np.array(geometry.GetPoints() or [], dtype=np.float64).reshape(-1, 2)[:, :2]
    return np.concatenate([vertices_of(geometry.GetGeometryRef(i)) for i in range(geometry.GetGeometryCount())])


def sample_points(geometry, seed: int, count: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Random points around the geometry, its vertices, the middle of every edge, points on whole and
    half degrees (on the axis-parallel edges), and a few repeated: lat, lon."""
    rng = np.random.default_rng(seed)
    west, east, south, north = geometry.GetEnvelope()
    pad_x, pad_y = 0.1 * (east - west) + 1, 0.1 * (north - south) + 1
    x = [rng.uniform(west - pad_x, east + pad_x, count)]
    y = [rng.uniform(south - pad_y, north + pad_y, count)]
    corners = vertices_of(geometry)
    x += [corners[:, 0], (corners[:-1, 0] + corners[1:, 0]) / 2]
    y += [corners[:, 1], (corners[:-1, 1] + corners[1:, 1]) / 2]
    x.append(np.round(rng.uniform(west - 1, east + 1, count) * 2) / 2)
    y.append(np.round(rng.uniform(south - 1, north + 1, count) * 2) / 2)
    lon, lat = np.concatenate(x), np.concatenate(y)
    repeat = rng.choice(lon.size, 50)
    return np.concatenate([lat, lat[repeat]]), np.concatenate([lon, lon[repeat]])


def assert_same_as_reference(wkt: str, seed: int = 0, expect_inside: bool = True) -> np.ndarray:
    geometry = ogr.CreateGeometryFromWkt(wkt)
    assert geometry.IsValid(), wkt
    lat, lon = sample_points(geometry, seed)
    mask = points_in_polygon(lat, lon, wkt)
    expected = reference(lat, lon, geometry)
    np.testing.assert_array_equal(mask, expected)
    assert mask.any() == expect_inside and not mask.all()
    return mask


@pytest.mark.parametrize(
    "wkt",
    [
        # a polygon with a square hole and a triangular one (diagonal edge through whole-degree points)
        "POLYGON((0 0,10 0,10 10,0 10,0 0),(2 2,4 2,4 4,2 4,2 2),(5 5,8 5,8 8,5 5))",
        # a multipolygon: two squares touching at a corner, a triangle with a hole, far apart
        "MULTIPOLYGON(((0 0,2 0,2 2,0 2,0 0)),((2 2,4 2,4 4,2 4,2 2)),((20 0,30 0,20 10,20 0),(21 1,23 1,21 3,21 1)))",
        # crossing the antimeridian as two parts (a world-wide box as one geometry)
        "MULTIPOLYGON(((170 -20,180 -20,180 -10,170 -10,170 -20)),((-180 -20,-170 -20,-170 -10,-180 -10,-180 -20)))",
        # concave: a star and a C shape
        "POLYGON((0 10,2 3,9 3,3 -1,6 -8,0 -4,-6 -8,-3 -1,-9 3,-2 3,0 10))",
        "MULTIPOLYGON(((0 0,6 0,6 2,2 2,2 4,6 4,6 6,0 6,0 0)))",
        # odd coordinates: nothing exactly representable on diagonal edges
        "POLYGON((-73.9876 40.7128,-73.9012 40.8123,-73.8001 40.7017,-73.85 40.6512,-73.9876 40.7128))",
    ],
)
def test_mask_equals_per_point_contains(wkt):
    assert_same_as_reference(wkt)


def test_points_on_vertices_and_edges_are_outside():
    square = "POLYGON((0 0,4 0,4 4,0 4,0 0),(1 1,1 3,3 3,1 1))"  # hole with a diagonal edge
    lat = np.array([0, 2, 4, 2, 1, 2, 2.5, 2, 1, 3, 0.5, 3.5])
    lon = np.array([0, 0, 4, 4, 1, 2, 2.5, 1.5, 2, 2, 0.5, 3.5])
    # corner, left edge, corner, right edge, hole vertex, hole diagonal x2, in the hole, inside x4
    expected = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1], dtype=bool)
    np.testing.assert_array_equal(reference(lat, lon, square), expected)
    np.testing.assert_array_equal(points_in_polygon(lat, lon, square), expected)


def zigzag(teeth: int) -> str:
    """A comb of 45-degree teeth with 4 * teeth vertices; the middle of each edge lies exactly on it."""
    top = [(i / 8, 20 + (i % 2) / 8) for i in range(2 * teeth + 1)]
    bottom = [(i / 8, -((i % 2) / 8)) for i in range(2 * teeth, -1, -1)]
    ring = top + bottom + top[:1]
    return "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in ring) + "))"


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_many_vertices_with_points_on_diagonal_edges():
    """Enough edges and points for the edge grid (not the all-pairs test) to find the points on edges."""
    wkt = zigzag(300)  # 1200 edges
    geometry = ogr.CreateGeometryFromWkt(wkt)
    lat, lon = sample_points(geometry, seed=3, count=1000)
    edges = len(vertices_of(geometry)) - 1
    assert edges * len(lat) > polygons._BRUTE_FORCE_PAIRS  # the grid path
    mask = points_in_polygon(lat, lon, wkt)
    np.testing.assert_array_equal(mask, reference(lat, lon, geometry))
    on_edge = np.isin(lon + 1j * lat, vertices_of(geometry) @ np.array([1, 1j]))  # vertices: outside
    assert on_edge.sum() > 1000 and not mask[on_edge].any() and mask.sum() > 500


def test_shapes_and_non_numbers():
    wkt = "POLYGON((0 0,10 0,10 10,0 10,0 0))"
    lat = np.array([[5.0, np.nan], [5.0, 20.0]])
    lon = np.array([[5.0, 5.0], [np.inf, 5.0]])
    np.testing.assert_array_equal(points_in_polygon(lat, lon, wkt), [[True, False], [False, False]])
    assert points_in_polygon(np.zeros(0), np.zeros(0), wkt).shape == (0,)
    index = PointIndex([1.0, 2.0], [1.0, 2.0])
    assert index.inside("POLYGON EMPTY").tolist() == [False, False]


def test_invalid_polygons_are_repaired_with_a_warning(caplog):
    cases = {
        "bowtie": "POLYGON((0 0,10 10,10 0,0 10,0 0))",
        "hole outside": "POLYGON((0 0,4 0,4 4,0 4,0 0),(6 6,8 6,8 8,6 8,6 6))",
    }
    for name, wkt in cases.items():
        geometry = ogr.CreateGeometryFromWkt(wkt)
        assert not geometry.IsValid()
        repaired = geometry.MakeValid()
        lat, lon = sample_points(geometry, seed=7)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="geoclip_qgis"):
            mask = points_in_polygon(lat, lon, wkt, name=f"zone {name!r}")
        np.testing.assert_array_equal(mask, reference(lat, lon, repaired))
        assert mask.sum() > 100
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"zone {name!r}" in warnings[0] and "MakeValid" in warnings[0]
    # the bowtie's two triangles both count (an unrepaired Contains would see only part of it)
    assert points_in_polygon([5.0, 5.0], [2.0, 8.0], cases["bowtie"]).tolist() == [True, True]


def test_without_make_valid_an_invalid_polygon_is_a_named_error(monkeypatch):
    monkeypatch.delattr(ogr.Geometry, "MakeValid")
    with pytest.raises(InvalidPolygonError, match="zone 'bowtie' is not a valid polygon.*MakeValid"):
        polygon_parts("POLYGON((0 0,10 10,10 0,0 10,0 0))", "zone 'bowtie'")
    assert len(polygon_parts("POLYGON((0 0,1 0,1 1,0 0))")) == 1  # a valid one needs no repair


def test_area_contains_uses_the_same_rule():
    wkt = "MULTIPOLYGON(((170 -20,180 -20,180 -10,170 -10,170 -20)),((-180 -20,-170 -20,-170 -10,-180 -10,-180 -20)))"
    area = Area.from_wkt(wkt, "Fiji-ish")
    lat, lon = sample_points(ogr.CreateGeometryFromWkt(wkt), seed=11)
    grid_lat, grid_lon = lat[:3000].reshape(60, 50), lon[:3000].reshape(60, 50)
    inside = area.contains(grid_lat, grid_lon)
    assert inside.shape == (60, 50)
    np.testing.assert_array_equal(inside.reshape(-1), reference(lat[:3000], lon[:3000], wkt))
    np.testing.assert_array_equal(area.contains(lat, lon), reference(lat, lon, wkt))
    assert area.contains(-15.0, 175.0).item() and not area.contains(-15.0, 0.0).item()


# ------------------------------------------------------------------------------------ zones_of


def test_zones_of_reports_progress_per_polygon_and_stops_when_asked():
    from geoclip_qgis.backend.errors import Cancelled

    rng = np.random.default_rng(2)
    lat_lon = np.stack([rng.uniform(-30, 30, 5000), rng.uniform(-30, 30, 5000)], axis=1)
    wkts = [
        "POLYGON((0 0,10 0,10 10,0 10,0 0))",
        "POLYGON((-20 -20,0 -25,5 5,-20 -20))",
        "MULTIPOLYGON(((1 1,3 1,3 3,1 1)),((-10 10,-5 10,-5 15,-10 10)))",
    ]
    seen = []
    zones = regions.zones_of(lat_lon, wkts, ["a", "b", "c"], progress=seen.append)
    assert [(p.done, p.total) for p in seen][0] == (0, 3) and (seen[-1].done, seen[-1].total) == (3, 3)
    assert seen[-1].unit == "polygons" and seen[-1].fraction == 1.0
    for wkt, members in zip(wkts, zones.members):
        expected = np.flatnonzero(reference(lat_lon[:, 0], lat_lon[:, 1], wkt))
        np.testing.assert_array_equal(members, expected)
        assert members.dtype == np.int64 and members.size > 10

    seen.clear()
    asked = []

    def cancel_after_the_first() -> bool:  # asked before each polygon: yes from the second on
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(Cancelled, match="1 of 3"):
        regions.zones_of(lat_lon, wkts, progress=seen.append, should_stop=cancel_after_the_first)
    assert len(asked) == 2 and max(p.done for p in seen) <= 1  # no other polygon was started

    with pytest.raises(GeoCLIPError, match="zone 'line' is not a polygon"):
        regions.zones_of(lat_lon, ["LINESTRING(0 0,1 1)"], ["line"])


# ------------------------------------------------------------------------- QGIS's world map


@pytest.fixture(scope="module")
def gallery(wheel_model_dir) -> np.ndarray:
    """The release's 100K gallery, (N, 2) lat, lon."""
    return np.loadtxt(wheel_model_dir / "gps_gallery" / "coordinates_100K.csv", delimiter=",", skiprows=1)


@pytest.mark.skipif(not WORLD_MAP.is_file(), reason="QGIS's world map is not installed")
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_world_map_countries_for_the_whole_gallery(gallery):
    source = ogr.Open(str(WORLD_MAP))
    layer = source.GetLayerByName("countries")
    names, wkts = [], []
    for feature in layer:
        names.append(feature.GetField("NAME"))
        wkts.append(feature.GetGeometryRef().ExportToWkt())
    assert len(wkts) == 240

    start = time.perf_counter()
    zones = regions.zones_of(gallery, wkts, names)
    took = time.perf_counter() - start
    assert took < 60, f"240 countries x 100K gallery points took {took:.1f} s"

    count = np.zeros(len(gallery), dtype=np.int64)
    for members in zones.members:
        count[members] += 1
    assert (count == 1).sum() > 0.9 * len(gallery)  # the rest: at sea, on tiny islands
    # a point in two countries only where the map itself overlaps: both per-point Contains say so
    for index in np.flatnonzero(count > 1):
        holders = [i for i, members in enumerate(zones.members) if index in members]
        lat, lon = gallery[index : index + 1, 0], gallery[index : index + 1, 1]
        assert all(reference(lat, lon, wkts[i])[0] for i in holders), names[holders[0]]

    # exact, country by country, against the per-point rule on a sample of gallery points
    sample = np.random.default_rng(0).choice(len(gallery), 150, replace=False)
    lat, lon = gallery[sample, 0], gallery[sample, 1]
    for wkt, name, members in zip(wkts, names, zones.members):
        geometry = ogr.CreateGeometryFromWkt(wkt)
        west, east, south, north = geometry.GetEnvelope()
        maybe = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
        expected = np.zeros(len(sample), dtype=bool)
        expected[maybe] = reference(lat[maybe], lon[maybe], geometry)
        np.testing.assert_array_equal(np.isin(sample, members), expected, err_msg=name)


def _mercator_square(path, half_side_m: float):
    from osgeo import ogr, osr

    crs = osr.SpatialReference()
    crs.ImportFromEPSG(3857)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("zones", crs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    h = half_side_m
    feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({-h} {-h},{h} {-h},{h} {h},{-h} {h},{-h} {-h}))"))
    layer.CreateFeature(feature)
    source = None
    return path


def test_a_polygon_beyond_its_coordinate_system_is_a_named_error(tmp_path):
    """An EPSG:3857 square 10^12 m wide reprojects to longitudes of millions of degrees: refused by name,
    not silently given a share of the gallery. One inside the projection's domain reads as usual."""
    from geoclip_qgis.backend.errors import GeoCLIPError
    from geoclip_qgis.backend.photos.area import Area
    from geoclip_qgis.backend.workbench.judging import read_polygons

    huge = _mercator_square(tmp_path / "huge.gpkg", 5e11)
    with pytest.raises(GeoCLIPError, match="beyond its coordinate system's valid area"):
        read_polygons(huge)
    with pytest.raises(GeoCLIPError, match="beyond its coordinate system's valid area"):
        Area.from_file(huge)
    wkts, _ = read_polygons(_mercator_square(tmp_path / "fine.gpkg", 1e6))
    from osgeo import ogr

    west, east, south, north = ogr.CreateGeometryFromWkt(wkts[0]).GetEnvelope()
    assert -9 < west < -8.9 and 8.9 < east < 9 and -9 < south < -8.9 and 8.9 < north < 9
