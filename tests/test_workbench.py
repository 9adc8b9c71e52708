"""The analyst's workbench: place names, probability by region, confidence areas, "how likely here?"
and the HTML case report.

Model answers come from oracle queries (the real location encoder's feature of a known place, what a
perfect photo of it would give) through the engine's own raster code; expected values are geographic
facts or are recomputed here another way (brute force, direct raster sums, an equal-area projection).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from geoclip_qgis.backend import geo
from geoclip_qgis.backend.earth import confidence, likelihood, places, regions
from geoclip_qgis.backend.geo import EARTH_RADIUS_KM, haversine_km
from geoclip_qgis.backend.model.place_options import PlaceOptions
from geoclip_qgis.backend.results import PhotoResult
from geoclip_qgis.backend.version import __version__
from geoclip_qgis.backend.workbench import report

# Known places, none on a 0.25 deg cell edge (a point on a polygon's edge is not "contained").
PLACES = {"Paris": (48.8566, 2.3522), "Nairobi": (-1.2921, 36.8219), "Lima": (-12.0464, -77.0428)}


def oracle_feature(engine, lat, lon, scale=1.0) -> torch.Tensor:
    with torch.inference_mode():
        return engine.heads.location_features(torch.tensor([[lat, lon]], dtype=torch.float32))[0] * scale


def gallery_probabilities(engine, feature: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return engine.heads.logits(feature[None], engine.gallery.features)[0].softmax(-1).double().numpy()


@pytest.fixture(scope="module")
def rasters_of(engine):
    made = {}

    def get(name, scale=1.0):
        if (name, scale) not in made:
            feature = oracle_feature(engine, *PLACES[name], scale)
            made[name, scale] = engine.rasters(PhotoResult(name, feature=feature.numpy()))
        return made[name, scale]

    return get


# ------------------------------------------------------------------------------------- place names


@pytest.mark.parametrize(
    "point, name, region, country, code",
    [
        ((48.8566, 2.3522), "Paris", "Île-de-France", "France", "FR"),
        ((-33.8688, 151.2093), "Sydney", "New South Wales", "Australia", "AU"),
        ((40.7128, -74.0060), "New York City", "New York", "United States", "US"),
        ((51.5074, -0.1278), "London", "England", "United Kingdom", "GB"),
        ((-1.2921, 36.8219), "Nairobi", "Nairobi County", "Kenya", "KE"),
        ((78.2232, 15.6267), "Longyearbyen", "Svalbard", "Svalbard and Jan Mayen", "SJ"),
    ],
)
def test_nearest_place_of_known_points(point, name, region, country, code):
    place = places.nearest_place(*point)
    assert (place.name, place.region, place.country, place.country_code) == (name, region, country, code)
    assert place.distance_km == pytest.approx(float(haversine_km(*point, place.lat, place.lon)), rel=1e-9)
    assert place.distance_km < 5
    assert place.label().startswith(name)


def test_nearest_place_is_great_circle_nearest_everywhere():
    """The tree agrees with brute force, also across the antimeridian and near the poles."""
    table = places.gazetteer()
    rng = np.random.default_rng(3)
    lat = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 150))), [-16.8, 16.0, 70.5, -54.0, 65.0]])
    lon = np.concatenate([rng.uniform(-180, 180, 150), [-179.99, 179.95, -179.5, 179.9, -168.5]])
    index, distance = table.nearest(lat, lon)
    for i in range(lat.size):
        brute = haversine_km(lat[i], lon[i], table.lat, table.lon)
        assert distance[i] == pytest.approx(brute.min(), rel=1e-6, abs=1e-6)
        assert brute[index[i]] == pytest.approx(brute.min(), rel=1e-6, abs=1e-6)
    fiji = places.nearest_place(-16.8, -179.99)  # east of the antimeridian, Fiji's islands on both sides
    assert fiji.country_code == "FJ" and fiji.distance_km < 150


def test_far_points_keep_their_distance_and_population_filter():
    mcmurdo = places.nearest_place(-77.846, 166.676)  # no populated place in Antarctica's gazetteer
    assert mcmurdo.distance_km > 1000 and mcmurdo.name
    assert mcmurdo.distance_km == pytest.approx(float(haversine_km(-77.846, 166.676, mcmurdo.lat, mcmurdo.lon)))
    near_nyc = places.nearest_place(40.70, -74.00, min_population=1_000_000)
    assert near_nyc.name == "New York City" and near_nyc.population >= 1_000_000
    many = places.nearest_places(np.full(5000, 48.8566), np.full(5000, 2.3522))
    assert len(many) == 5000 and {p.name for p in many} == {"Paris"}
    assert "GeoNames" in places.PLACES_CREDIT and "CC BY 4.0" in places.PLACES_CREDIT


# ---------------------------------------------------------------------------- probability by region


@pytest.fixture(scope="module")
def assignment(engine):
    return regions.gallery_regions(engine.gallery.coordinates, engine.gallery.key)


@pytest.mark.parametrize(
    "name, point, country, region",
    [
        ("Paris", (48.8566, 2.3522), "France", "Île-de-France"),
        ("Sydney", (-33.8688, 151.2093), "Australia", "New South Wales"),
        ("Nairobi", (-1.2921, 36.8219), "Kenya", "Nairobi County"),
        ("Chicago", (41.8781, -87.6298), "United States", "Illinois"),
    ],
)
def test_region_ranking_of_oracle_answers(engine, assignment, name, point, country, region):
    p = gallery_probabilities(engine, oracle_feature(engine, *point))
    rows = regions.region_probabilities(p, assignment, photo=name)
    for level, top_name in ((regions.COUNTRY, country), (regions.ADMIN1, region)):
        ranked = [r for r in rows if r.level == level]
        assert ranked[0].region == top_name and ranked[0].probability > 0.5
        assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
        masses = [r.probability for r in ranked]
        assert masses == sorted(masses, reverse=True)
        assert sum(masses) == pytest.approx(p.sum(), rel=1e-9)  # every gallery point counted once
        assert all(r.photo == name for r in ranked)
    admin1_top = next(r for r in rows if r.level == regions.ADMIN1)
    assert admin1_top.country == country
    top3 = regions.region_probabilities(p, assignment, top=3)
    assert len(top3) == 6 and top3[:3] == [dataclasses.replace(r, photo="") for r in rows[:3]]


def test_probability_inside_one_country_stays_in_it(engine, assignment):
    """Mass spread over gallery points deep inside France and inside Texas lands there, nowhere else."""
    lat_lon = engine.gallery.coordinates.numpy()
    france = (lat_lon[:, 0] > 46) & (lat_lon[:, 0] < 48) & (lat_lon[:, 1] > 1) & (lat_lon[:, 1] < 4)
    texas = (lat_lon[:, 0] > 30) & (lat_lon[:, 0] < 33) & (lat_lon[:, 1] > -100) & (lat_lon[:, 1] < -97)
    assert france.sum() > 50 and texas.sum() > 50
    p = np.zeros(len(lat_lon))
    p[france] = 0.7 / france.sum()
    p[texas] = 0.3 / texas.sum()
    rows = regions.region_probabilities(p, assignment)
    countries = [(r.region, round(r.probability, 9)) for r in rows if r.level == regions.COUNTRY]
    assert countries == [("France", 0.7), ("United States", 0.3)]
    texas_row = next(r for r in rows if r.level == regions.ADMIN1 and r.region == "Texas")
    assert texas_row.probability == pytest.approx(0.3) and texas_row.country_code == "US"


def test_gallery_assignment_is_cached_on_disk_without_pickle(engine, assignment):
    from geoclip_qgis.backend.store.weights import cache_dir

    files = list((cache_dir() / "regions").glob(f"{engine.gallery.key}-*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:  # plain arrays only
        assert data["country"].shape == (len(engine.gallery),)
        assert all(data[key].dtype != object for key in data.files)
    regions._memory.clear()
    again = regions.gallery_regions(engine.gallery.coordinates, engine.gallery.key)
    assert again is not assignment
    np.testing.assert_array_equal(again.country, assignment.country)
    np.testing.assert_array_equal(again.region, assignment.region)
    assert again.regions == assignment.regions and again.countries == assignment.countries


def test_zonal_probability_over_user_polygons(engine):
    lat_lon = engine.gallery.coordinates.numpy().astype(np.float64)
    lat, lon = lat_lon[:, 0], lat_lon[:, 1]
    wkts = [
        "POLYGON((-10 35, 30 35, 30 60, -10 60, -10 35))",  # a box over Europe
        "POLYGON((-125 25, -70 25, -125 50, -125 25))",
    ]  # a triangle over the western United States
    zones = regions.zones_of(lat_lon, wkts, ["Europe box", "US triangle"])
    in_box = (lon > -10) & (lon < 30) & (lat > 35) & (lat < 60)
    # inside the triangle: east of -125, north of 25, and below the line from (-70, 25) to (-125, 50)
    in_triangle = (lon > -125) & (lat > 25) & (lat - 25 < (lon + 70) * (25 / -55))
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(len(lat), 0.1))
    rows = regions.zonal_probabilities(p, zones, photo="x")
    by_name = {r.region: r for r in rows}
    assert by_name["Europe box"].probability == pytest.approx(p[in_box].sum(), rel=1e-6)
    assert by_name["US triangle"].probability == pytest.approx(p[in_triangle].sum(), rel=1e-6)
    assert [r.rank for r in rows] == [1, 2] and rows[0].probability >= rows[1].probability
    assert {r.level for r in rows} == {regions.ZONE}
    # an oracle answer in Paris puts nearly everything in the European box
    paris = gallery_probabilities(engine, oracle_feature(engine, *PLACES["Paris"]))
    top = regions.zonal_probabilities(paris, zones)[0]
    assert top.region == "Europe box" and top.probability > 0.99


def test_country_top1_accuracy():
    truth = [(48.8566, 2.3522), (35.6762, 139.6503), (-33.8688, 151.2093), (40.7128, -74.0060)]
    answers = [(45.7640, 4.8357), (34.6937, 135.5023), (-36.8485, 174.7633), (42.3601, -71.0589)]
    # Lyon is in France, Osaka in Japan, Boston in the US; Auckland is not in Australia
    assert regions.country_top1_accuracy(truth, answers) == pytest.approx(0.75)
    assert regions.country_top1_accuracy(truth, truth) == 1.0
    assert math.isnan(regions.country_top1_accuracy(np.zeros((0, 2)), np.zeros((0, 2))))


# ---------------------------------------------------------------------------------- confidence areas


def _geometry(wkt):
    from osgeo import ogr

    return ogr.CreateGeometryFromWkt(wkt)


def _point(lat, lon):
    from osgeo import ogr

    return ogr.CreateGeometryFromWkt(f"POINT ({lon} {lat})")


def _equal_area_km2(wkt, lat, lon) -> float:
    """Area of a lon/lat polygon in a Lambert azimuthal equal-area projection on the same sphere."""
    from osgeo import osr

    geometry = _geometry(wkt)
    geometry.Segmentize(0.01)  # straight lon/lat edges become curves once projected
    wgs84, laea = osr.SpatialReference(), osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    laea.ImportFromProj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +R={EARTH_RADIUS_KM * 1000} +units=m")
    geometry.Transform(osr.CoordinateTransformation(wgs84, laea))
    return geometry.GetArea() / 1e6


def test_confidence_area_takes_the_densest_cells_not_the_most_probable():
    """A small polar cell with less probability than a large equatorial one is still denser per km²."""
    from geoclip_qgis.backend.model.rasters import Raster

    values = np.full((180, 360), 0.35 / (180 * 360 - 2), dtype=np.float64)
    values[10, 100] = 0.30  # 79..80 N: a cell about a sixth of an equatorial one's area
    values[90, 200] = 0.35  # 0..1 S
    world = Raster(values.astype(np.float32), -180.0, 90.0, 1.0, "world")
    polar = confidence.confidence_areas(world, levels=(0.3,))[0]
    assert polar.cells == 1 and polar.mass == pytest.approx(0.30, rel=1e-5)
    assert _geometry(polar.wkt).Contains(_point(79.5, -79.5))
    sphere = EARTH_RADIUS_KM**2 * math.radians(1.0) * (math.sin(math.radians(80)) - math.sin(math.radians(79)))
    assert polar.area_km2 == pytest.approx(sphere, rel=1e-9)
    both = confidence.confidence_areas(world, levels=(0.6,))[0]
    assert both.cells == 2 and both.parts == 2 and both.mass == pytest.approx(0.65, rel=1e-5)
    equator = likelihood.how_likely(world, -0.5, 20.5)
    assert equator.rank == 2 and equator.credible_level == pytest.approx(0.65, rel=1e-5)
    assert equator.density_ratio == pytest.approx(
        0.35 / 0.30 * polar.area_km2 / geo.cell_areas_km2(1.0, 1.0, 1)[0], rel=1e-5
    )


@pytest.mark.parametrize("name", sorted(PLACES))
@pytest.mark.parametrize("refined", [False, True], ids=["world", "world+local"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_confidence_areas_of_oracle_answers(rasters_of, name, refined):
    lat, lon = PLACES[name]
    made = rasters_of(name)
    areas = confidence.confidence_areas(made.world, made.local if refined else ())
    assert [a.level for a in areas] == [0.5, 0.9]
    half, most = areas
    for area in areas:
        geometry = _geometry(area.wkt)
        assert geometry.IsValid() and geometry.GetGeometryName() == "MULTIPOLYGON"
        assert geometry.Contains(_point(lat, lon)), f"{name}: {area.level} area misses the place"
        assert area.level <= area.mass <= 1 + 1e-9
        assert area.refined is refined and area.parts == geometry.GetGeometryCount()
        assert area.area_km2 == pytest.approx(_equal_area_km2(area.wkt, lat, lon), rel=0.01)
    assert _geometry(half.wkt).Difference(_geometry(most.wkt)).GetArea() < 1e-12  # nested
    assert half.area_km2 <= most.area_km2 and half.cells <= most.cells
    if not refined:  # the world cells whose centres lie inside hold exactly the mass reported
        world = made.world
        rows, cols = np.nonzero(world.values > 0)
        geometry = _geometry(half.wkt)
        west, east, south, north = geometry.GetEnvelope()
        lats, lons = world.north - (rows + 0.5) * world.cell, world.west + (cols + 0.5) * world.cell
        near = (lats > south) & (lats < north) & (lons > west) & (lons < east)
        inside = [i for i in np.flatnonzero(near) if geometry.Contains(_point(lats[i], lons[i]))]
        assert len(inside) == half.cells
        total = np.nansum(world.values, dtype=np.float64)
        mass = world.values[rows[inside], cols[inside]].astype(np.float64).sum() / total
        assert mass == pytest.approx(half.mass, rel=1e-6)


@pytest.mark.parametrize("name", ["Nairobi", "Lima"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_sharper_queries_have_smaller_confidence_areas(rasters_of, name):
    sizes = []
    for scale in (1.0, 2.0):
        made = rasters_of(name, scale)
        sizes.append([a.area_km2 for a in confidence.confidence_areas(made.world, made.local)])
    (half_1, most_1), (half_2, most_2) = sizes
    assert half_2 < half_1 and most_2 < most_1


def test_local_rasters_give_a_finer_area_than_the_world_alone(rasters_of):
    made = rasters_of("Nairobi")
    world_only = confidence.confidence_areas(made.world, levels=(0.5,))[0]
    refined = confidence.confidence_areas(made.world, made.local, levels=(0.5,))[0]
    assert refined.area_km2 < world_only.area_km2  # 0.01 deg cells follow the peak more closely
    cells = confidence.probability_cells(made.world, made.local)
    assert cells.total == pytest.approx(np.nansum(made.world.values, dtype=np.float64), rel=1e-4)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_confidence_areas_and_likelihood_respect_an_area_of_interest(engine):
    from geoclip_qgis.backend.photos.area import Area

    area = Area.from_bbox("-10,35,30,60")  # Europe; the oracle place, Nairobi, lies outside it
    feature = oracle_feature(engine, *PLACES["Nairobi"])
    made = engine.rasters(PhotoResult("Nairobi in Europe", feature=feature.numpy()), area=area)
    for found in confidence.confidence_areas(made.world, made.local):
        west, east, south, north = _geometry(found.wkt).GetEnvelope()
        assert west >= -10.25 and east <= 30.25 and south >= 34.75 and north <= 60.25
        assert found.level <= found.mass <= 1 + 1e-9
    outside = likelihood.how_likely(made.world, *PLACES["Nairobi"], local=made.local)
    assert outside.rank is None and math.isnan(outside.credible_level) and outside.density == 0
    assert all(mass == 0 for mass in outside.masses.values())
    inside = likelihood.how_likely(made.world, 48.8566, 2.3522, local=made.local)
    assert inside.rank is not None and inside.cells == int(np.isfinite(made.world.values).sum())


# ------------------------------------------------------------------------------ how likely here?


def _direct_masses(made, lat, lon, radii, use_local, sub=64):
    """Mass within each radius, straight from the rasters: every cell (a local raster's where one lies,
    else the world's) counted by the share of its area inside the disc, measured on sub x sub sub-cells
    weighted by their area."""
    world = made.world
    rows, cols = np.indices(world.values.shape)
    w_lat, w_lon = world.north - (rows + 0.5) * world.cell, world.west + (cols + 0.5) * world.cell
    keep = np.ones(world.values.shape, dtype=bool)
    values, lats, lons, sizes = [], [], [], []
    for raster in made.local if use_local else []:
        under = (w_lat > raster.south) & (w_lat < raster.north) & (w_lon > raster.west) & (w_lon < raster.east)
        keep &= ~under
        r, c = np.indices(raster.values.shape)
        values.append(raster.values.ravel())
        lats.append((raster.north - (r + 0.5) * raster.cell).ravel())
        lons.append((raster.west + (c + 0.5) * raster.cell).ravel())
        sizes.append(np.full(raster.values.size, raster.cell))
    values.append(world.values[keep])
    lats.append(w_lat[keep])
    lons.append(w_lon[keep])
    sizes.append(np.full(int(keep.sum()), world.cell))
    values, lats, lons, sizes = (np.concatenate(v).astype(np.float64) for v in (values, lats, lons, sizes))
    total = np.nansum(world.values, dtype=np.float64)
    steps = (np.arange(sub) + 0.5) / sub
    found = {}
    for radius in radii:
        reach = radius + haversine_km(0, 0, sizes, sizes)  # the centre within a cell's diagonal of the disc
        near = np.flatnonzero((haversine_km(lat, lon, lats, lons) <= reach) & np.isfinite(values))
        # sample the part of each cell inside the disc's bounding box: fine for small discs in large cells
        d_lat = np.degrees(radius / EARTH_RADIUS_KM)
        d_lon = min(180.0, d_lat / max(np.cos(np.radians(abs(lat) + d_lat)), 1e-6))
        half = sizes[near] / 2
        south = np.maximum(lats[near] - half, lat - d_lat)
        north = np.minimum(lats[near] + half, lat + d_lat)
        west = np.maximum(lons[near] - half, lon - d_lon)
        east = np.minimum(lons[near] + half, lon + d_lon)
        ok = (north > south) & (east > west)
        near, south, north, west, east, half = (v[ok] for v in (near, south, north, west, east, half))
        sub_lat = south[:, None, None] + (north - south)[:, None, None] * steps[:, None]
        sub_lon = west[:, None, None] + (east - west)[:, None, None] * steps[None, :]
        weight = np.broadcast_to(np.cos(np.radians(sub_lat)), (near.size, sub, sub))
        inside = haversine_km(lat, lon, sub_lat, sub_lon) <= radius
        box_area = (east - west) * (np.sin(np.radians(north)) - np.sin(np.radians(south)))
        cell_lat = lats[near]
        cell_area = 2 * half * (np.sin(np.radians(cell_lat + half)) - np.sin(np.radians(cell_lat - half)))
        share = (weight * inside).sum(axis=(1, 2)) / weight.sum(axis=(1, 2)) * box_area / cell_area
        found[radius] = float((values[near] * share).sum() / total)
    return found


@pytest.mark.parametrize("use_local", [False, True], ids=["world", "world+local"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_how_likely_here_agrees_with_direct_sums(rasters_of, use_local):
    lat, lon = PLACES["Nairobi"]
    made = rasters_of("Nairobi")
    local = made.local if use_local else ()
    if use_local:
        first = made.local[0]
        assert first.south + 0.02 < lat < first.north - 0.02 and first.west + 0.02 < lon < first.east - 0.02
    for point in [(lat, lon), (lat + 0.3, lon - 0.2), (lat - 1.5, lon + 2.0)]:
        found = likelihood.how_likely(made.world, *point, local=local)
        direct = _direct_masses(made, *point, likelihood.RADII_KM, use_local)
        for radius in likelihood.RADII_KM:  # the engine measures edge cells on 16 x 16 sub-cells
            assert found.masses[radius] == pytest.approx(direct[radius], rel=2e-2, abs=1e-9)
        masses = [found.masses[r] for r in likelihood.RADII_KM]
        assert masses == sorted(masses)  # more distance, no less probability
    at_place = likelihood.how_likely(made.world, lat, lon, local=local)
    assert at_place.masses[200.0] > 0.9
    # 1 km holds part of a cell: a share of a 0.01 deg cell's probability, or a sliver of a 0.25 deg one's
    assert (at_place.masses[1.0] > 0.01) if use_local else (0 < at_place.masses[1.0] < 0.01)


def test_how_likely_ranks_hypotheses_and_matches_confidence_areas(rasters_of):
    lat, lon = PLACES["Paris"]
    made = rasters_of("Paris")
    hypotheses = [("the place", lat, lon), ("Lyon", 45.764, 4.8357), ("Tokyo", 35.6762, 139.6503)]
    found = likelihood.how_likely_many(made.world, hypotheses, local=made.local)
    assert [h.id for h in found] == ["the place", "Lyon", "Tokyo"]
    place, lyon, tokyo = found
    assert place.density_ratio > lyon.density_ratio > tokyo.density_ratio >= 0
    assert 0 < place.density_ratio <= 1 and place.rank <= 4
    assert place.rank < lyon.rank < tokyo.rank <= place.cells == made.world.values.size
    world_density = made.world.values / geo.cell_areas_km2(made.world.north, made.world.cell, made.world.rows)[:, None]
    row, col = int((made.world.north - 45.764) // 0.25), int((4.8357 - made.world.west) // 0.25)
    assert lyon.rank == 1 + int((world_density > world_density[row, col]).sum())
    assert place.credible_level < lyon.credible_level < tokyo.credible_level <= 1
    rows = [h.row() for h in found]
    assert set(rows[0]) >= {"id", "mass_within_1km", "mass_within_25km", "mass_within_200km", "rank"}
    # the credible level says which confidence areas hold a point
    half, most = (_geometry(a.wkt) for a in confidence.confidence_areas(made.world, made.local))
    assert place.credible_level <= 0.5 and half.Contains(_point(lat, lon))
    assert tokyo.credible_level > 0.9 and not most.Contains(_point(35.6762, 139.6503))


# ---------------------------------------------------------------------------------------- report


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts, and every src attribute."""

    def __init__(self):
        super().__init__()
        self.tables, self.sources, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        self.sources += [value for key, value in attrs if key == "src"]

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _camera_photo(path):
    """A JPEG with EXIF from a camera that writes markup into its model name."""
    image = Image.fromarray((np.random.default_rng(1).random((600, 800, 3)) * 255).astype("uint8"))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Evil & Co"
    exif[ExifTags.Base.Model] = "<b>X-100</b>"
    exif[ExifTags.Base.DateTime] = "2024:05:01 12:34:56"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", (48.0, 51.0, 23.76)
    gps[ExifTags.GPS.GPSLongitudeRef], gps[ExifTags.GPS.GPSLongitude] = "E", (2.0, 21.0, 7.92)
    gps[ExifTags.GPS.GPSImgDirection] = 135.5
    image.save(path, exif=exif)
    return path


def test_html_report(engine, rasters_of, tmp_path):
    photo = _camera_photo(tmp_path / "street.jpg")
    result = engine.predict([photo], top_k=5)[0]
    assert result.ok and result.exif_lat is not None
    made = rasters_of("Paris")
    answer = report.answer_from_result(
        result,
        regions=regions.region_probabilities(
            gallery_probabilities(engine, torch.from_numpy(result.feature)),
            regions.gallery_regions(engine.gallery.coordinates, engine.gallery.key),
            result.photo,
        ),
        confidence=confidence.confidence_areas(made.world, made.local),
        hypotheses=likelihood.how_likely_many(made.world, [("hotel <roof>", 48.85, 2.35)], made.local),
    )
    hostile = report.ReportAnswer(
        "<script>alert('x')</script>.jpg", answer.candidates[:2], thumbnail_jpeg=answer.thumbnail_jpeg
    )
    provenance = report.provenance_for(engine, {"top_k": 5, "area": "a & b"}, run_at="2024-05-02T10:00:00+00:00")
    data = report.ReportData("Case <42>", [answer, hostile], provenance)
    path = report.write_html_report(data, tmp_path / "out" / "case.html")
    text = path.read_text(encoding="utf-8")

    assert "<script" not in text.lower() and "&lt;script&gt;" in text  # the hostile name is only text
    assert "<b>X-100</b>" not in text and "&lt;b&gt;X-100&lt;/b&gt;" in text
    assert "Evil &amp; Co" in text and "Case &lt;42&gt;" in text and "hotel &lt;roof&gt;" in text
    assert html_escaped(str(photo)) in text

    page = _Tables()
    page.feed(text)
    assert page.sources and all(s.startswith("data:image/jpeg;base64,") for s in page.sources)
    thumbnail = Image.open(io.BytesIO(base64.b64decode(page.sources[0].split(",", 1)[1])))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= report.THUMBNAIL_SIDE
    assert thumbnail.size[0] > thumbnail.size[1]  # the photo's shape, landscape

    candidate_tables = [t for t in page.tables if t[0][:2] == ["rank", "probability"]]
    first = candidate_tables[0]
    assert len(first) == 1 + len(result.candidates) and first[0][-1] == "km to EXIF position"
    for row, candidate in zip(first[1:], result.candidates):
        place = places.nearest_place(candidate.lat, candidate.lon)
        assert row[0] == str(candidate.rank) and row[2] == f"{candidate.lat:.5f}" and row[3] == f"{candidate.lon:.5f}"
        assert row[4] == place.name and row[7] == place.country
        truth_km = haversine_km(result.exif_lat, result.exif_lon, candidate.lat, candidate.lon)
        assert float(row[-1].replace(",", "")) == pytest.approx(truth_km, abs=0.06)
    assert len(candidate_tables[1]) == 3  # the hostile entry's two candidates

    exif_rows = {row[0]: row[1] for row in next(t for t in page.tables if t[0] == ["EXIF", "value"])}
    assert exif_rows["Time (camera clock)"] == "2024-05-01T12:34:56" and exif_rows["Direction"] == "135.5°"
    assert exif_rows["GPS"].startswith("48.856600, 2.352200 (near Paris")
    confidence_rows = next(t for t in page.tables if t[0][0] == "level")
    assert [r[0] for r in confidence_rows[1:]] == ["50 %", "90 %"]

    heads = engine.heads_files
    for name in ("image_encoder_mlp_weights.pth", "location_encoder_weights.pth", "logit_scale_weights.pth"):
        assert hashlib.sha256(heads.weight_path(name).read_bytes()).hexdigest() in text
    assert hashlib.sha256(photo.read_bytes()).hexdigest() in text
    assert __version__ in text and html_escaped(engine.model_name) in text and "a &amp; b" in text
    assert "GeoNames" in text


def html_escaped(value: str) -> str:
    import html

    return html.escape(value, quote=True)


# ---------------------------------------------------------------------------- in a run, end to end


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_run_keeps_place_names_regions_areas_and_query_vectors(engine, tiny_clip, photo_dir, tmp_path):
    """What the workbench reads is written by every run into a GeoPackage."""
    import sqlite3

    from osgeo import ogr
    from test_cli import run

    from geoclip_qgis.backend.workbench.run_file import read_answers, read_provenance

    gpkg = tmp_path / "case.gpkg"
    run(
        "predict",
        photo_dir,
        "--clip",
        tiny_clip,
        "--precision",
        "fp32",
        "--top-k",
        3,
        "--out",
        gpkg,
        "--confidence",
        "--fuse",
    )
    with sqlite3.connect(gpkg) as db:
        named = db.execute("SELECT place, region, country, place_km, lat, lon FROM predictions").fetchall()
        regions = db.execute("SELECT photo, level, region, probability, rank FROM regions").fetchall()
    assert named and all(place and country and place_km >= 0 for place, _, country, place_km, _, _ in named)
    place = places.nearest_place(named[0][4], named[0][5])
    assert (named[0][0], named[0][2]) == (place.name, place.country)
    for photo in {r[0] for r in regions}:
        for level in ("country", "admin1"):
            ranked = [r for r in regions if r[0] == photo and r[1] == level]
            assert [r[4] for r in ranked] == list(range(1, len(ranked) + 1))
            assert [r[3] for r in ranked] == sorted((r[3] for r in ranked), reverse=True)
            assert 0 < sum(r[3] for r in ranked) <= 1 + 1e-9
    source = ogr.Open(str(gpkg))  # kept: its layers die with it
    areas = source.GetLayerByName("confidence_areas")
    by_photo = {}
    for feature in areas:
        by_photo.setdefault(feature.GetField("photo"), {})[feature.GetField("level")] = feature
    assert len(by_photo) == 5  # four photos and the joint answer
    for levels in by_photo.values():
        half, most = levels[0.5], levels[0.9]
        assert half.GetField("area_km2") <= most.GetField("area_km2")
        assert most.GetField("mass") >= 0.9 and half.GetField("mass") >= 0.5
        inner, outer = half.GetGeometryRef(), most.GetGeometryRef()
        points = ogr.Geometry(ogr.wkbMultiPoint)  # one point inside each of 25 parts, tested in one call
        for i in range(0, inner.GetGeometryCount(), max(1, inner.GetGeometryCount() // 25)):
            points.AddGeometry(inner.GetGeometryRef(i).PointOnSurface())
        assert points.GetGeometryCount() > 0 and outer.Contains(points)  # the 50 % area lies in the 90 %

    answers = {a.photo: a for a in read_answers(gpkg)}
    kauai = answers[str(photo_dir / "kauai.png")]
    fresh = engine.predict([photo_dir / "kauai.png"], top_k=3, places=PlaceOptions())[0]  # as runs answer
    np.testing.assert_allclose(kauai.result.feature, fresh.feature, atol=1e-6)  # the query vector kept
    assert [c.lat for c in kauai.result.candidates] == [c.lat for c in fresh.candidates]
    assert len(kauai.areas) == 2 and kauai.regions[0].rank == 1
    record = read_provenance(gpkg)
    assert record["parameters"]["top_k"] == 3 and record["parameters"]["confidence_areas"] is True
    assert "heads/weights/location_encoder_weights.pth" in record["weights_sha256"]
    assert any(name.startswith("clip/") and name.endswith("model.safetensors") for name in record["weights_sha256"])


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_report_and_likely_commands_on_a_run_file(engine, tiny_clip, photo_dir, tmp_path):
    import csv
    import io
    import sqlite3

    from test_cli import run

    gpkg = tmp_path / "case.gpkg"
    (photo_dir / "<script>odd.png").write_bytes((photo_dir / "camera.png").read_bytes())
    run("predict", photo_dir, "--clip", tiny_clip, "--precision", "fp32", "--top-k", 3, "--out", gpkg)
    report = tmp_path / "report.html"
    out = run("report", gpkg, "--out", report)
    assert out.stdout.strip() == str(report)
    text = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;odd.png" in text and "<script>" not in text
    assert text.count("data:image/jpeg;base64,") == 5  # every photo still on disk is shown
    assert "location_encoder_weights.pth" in text and "Provenance" in text

    places_csv = tmp_path / "hypotheses.csv"
    with sqlite3.connect(gpkg) as db:
        top_lat, top_lon = db.execute(
            "SELECT lat, lon FROM predictions WHERE rank = 1 AND photo LIKE '%kauai.png'"
        ).fetchone()
    places_csv.write_text(
        f"name,lat,lon\ntop,{top_lat},{top_lon}\nfar,{-top_lat},{top_lon - 170 if top_lon > 0 else top_lon + 170}\n"
    )
    out = run(
        "likely",
        gpkg,
        places_csv,
        "--photo",
        str(photo_dir / "kauai.png"),
        "--clip",
        tiny_clip,
        "--id-field",
        "name",
        "--precision",
        "bf16",
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["id"] for r in rows] == ["top", "far"]
    top, far = rows
    assert float(top["mass_within_200km"]) > float(far["mass_within_200km"])
    assert float(top["mass_within_1km"]) <= float(top["mass_within_25km"]) <= float(top["mass_within_200km"])
    assert int(top["rank"]) < int(far["rank"]) and float(top["density_ratio"]) > float(far["density_ratio"])


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_evaluation_reports_the_share_of_answers_in_the_right_country(engine, tiny_clip, samples):
    from test_cli import run

    out = run("evaluate", samples / "gps", "--clip", tiny_clip, "--precision", "fp32")
    first = out.stdout.splitlines()[0]
    assert "top-1 in the right country" in first
    share = float(first.rsplit(" ", 1)[-1].rstrip("%"))
    assert 0.0 <= share <= 100.0
