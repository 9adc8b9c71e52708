"""Confidence rasters, areas of interest and fusion, with the real GeoCLIP location encoder.

The queries are "oracle" features: the location feature of a known place, which is what a perfect
photo of that place would give. The raster must then peak at that place.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoclip_qgis.backend.geo import haversine_km
from geoclip_qgis.backend.photos.area import Area
from geoclip_qgis.backend.results import PhotoResult


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


PLACES = {  # cities on each continent, islands, near the antimeridian and the poles
    "Paris": (48.8566, 2.3522),
    "Nairobi": (-1.2921, 36.8219),
    "Tokyo": (35.6762, 139.6503),
    "Lima": (-12.0464, -77.0428),
    "New York": (40.7128, -74.0060),
    "Sydney": (-33.8688, 151.2093),
    "Kauai": (22.07, -159.50),
    "Reykjavik": (64.1466, -21.9426),
    "Tristan da Cunha": (-37.11, -12.28),
    "Fiji (179.9 E)": (-16.5, 179.9),
    "Taveuni side (-179.9)": (-16.8, -179.9),
    "Svalbard": (78.2232, 15.6267),
    "McMurdo": (-77.846, 166.676),
    "Outback": (-25.0, 134.0),
}


def oracle(engine, lat, lon, label="oracle") -> PhotoResult:
    with torch.inference_mode():
        feature = engine.heads.location_features(torch.tensor([[lat, lon]], dtype=torch.float32))[0]
    return PhotoResult(label, feature=feature.numpy())


@pytest.fixture(scope="module")
def surface(engine):
    return engine.surface(0.25, 0.01)  # builds or reads the cached world grid


@pytest.mark.parametrize("name", sorted(PLACES))
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_oracle_raster_peaks_at_the_place(engine, surface, name):
    lat, lon = PLACES[name]
    made = engine.rasters(oracle(engine, lat, lon, name))
    world_lat, world_lon, _ = made.world.peak()
    local_lat, local_lon, _ = made.local[0].peak()
    world_km = haversine_km(lat, lon, world_lat, world_lon)
    local_km = haversine_km(lat, lon, local_lat, local_lon)
    assert world_km <= 25, f"world raster peak {world_km:.1f} km from {name}"
    assert local_km < world_km, f"local {local_km:.2f} km is not closer than world {world_km:.2f} km"
    assert local_km <= 2.0
    assert made.world.values.shape == (720, 1440) and made.world.cell == 0.25
    assert made.local[0].cell == 0.01


def test_raster_values_are_probability_per_cell(engine, surface):
    made = engine.rasters(oracle(engine, *PLACES["Paris"]), regions=2)
    world, local = made.world, made.local[0]
    assert world.values.dtype == np.float32 and np.all(world.values >= 0)
    assert world.values.sum() == pytest.approx(1.0, abs=1e-4)
    # the local raster's cells sum to the world probability of the cells it covers
    row0 = round((90 - local.north) / world.cell)
    col0 = round((local.west + 180) / world.cell)
    rows = round(local.rows * local.cell / world.cell)
    covered = world.values[row0 : row0 + rows, col0 : col0 + rows].sum()
    assert local.values.sum() == pytest.approx(covered, rel=1e-3)
    assert len(made.local) >= 2
    (a_lat, a_lon, _), (b_lat, b_lon, _) = made.local[0].peak(), made.local[1].peak()
    assert haversine_km(a_lat, a_lon, b_lat, b_lon) > 20  # two separate places, not one twice


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_area_restriction_never_leaves_the_area(engine, photo_dir):
    boxes = [
        Area.from_bbox("-10,35,30,60"),
        Area.from_bbox("170,-50,-170,-10"),  # the second crosses 180
        Area.from_wkt("POLYGON((0 0, 40 0, 40 40, 0 0))", "triangle"),
    ]
    photos = sorted(photo_dir.iterdir())
    for area in boxes:
        for result in engine.predict(photos, top_k=20, area=area):
            lat = np.array([c.lat for c in result.candidates])
            lon = np.array([c.lon for c in result.candidates])
            assert area.contains(lat, lon).all(), area.label
            assert sum(c.probability for c in result.candidates) <= 1 + 1e-6
        text = engine.rasters(engine.predict(photos[:1], top_k=3, area=area)[0], area=area)
        centres_inside = ~np.isnan(text.world.values)
        assert centres_inside.any() and np.nansum(text.world.values) == pytest.approx(1.0, abs=1e-4)
        west, south, east, north = area.bbox
        lat = 90 - (np.arange(720) + 0.5) * 0.25
        assert np.isnan(text.world.values[(lat > north + 0.5) | (lat < south - 0.5)]).all()


def test_whole_world_area_equals_no_area(engine, photo_dir):
    world = Area.from_bbox("-180,-90,180,90")
    photos = sorted(photo_dir.iterdir())
    for plain, restricted in zip(engine.predict(photos, top_k=5), engine.predict(photos, top_k=5, area=world)):
        assert [(c.lat, c.lon) for c in plain.candidates] == [(c.lat, c.lon) for c in restricted.candidates]
        np.testing.assert_allclose(
            [c.probability for c in plain.candidates], [c.probability for c in restricted.candidates], rtol=1e-6
        )
    result = engine.predict(photos[:1], top_k=1)[0]
    np.testing.assert_allclose(
        engine.rasters(result).world.values, engine.rasters(result, area=world).world.values, rtol=1e-5, atol=1e-12
    )


@pytest.mark.parametrize("base", [(38.5, -98.5), (48.85, 2.35), (-25.0, 134.0), (35.68, 139.69), (-1.29, 36.82)])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_fusing_two_nearby_places_peaks_between_them(engine, surface, base):
    a, b = base, (base[0], base[1] + 0.03)  # about 3 km apart
    fused = engine.fuse([oracle(engine, *a), oracle(engine, *b)], top_k=1)
    lat, lon, _ = engine.rasters(fused).local[0].peak()
    apart = haversine_km(*a, *b)
    assert haversine_km(*a, lat, lon) + haversine_km(*b, lat, lon) <= apart + 1.5  # one 0.01 deg cell


def test_fusion_beats_each_photo_alone(engine):
    """Photos of one place as noisy versions of its oracle feature: joint answers are right more often."""
    generator = torch.Generator().manual_seed(7)
    places = engine.gallery.coordinates[torch.randperm(len(engine.gallery), generator=generator)[:60]]
    with torch.inference_mode():
        truth = engine.heads.location_features(places)
    photos_per_place, noise = 4, 0.25  # per dimension: a single photo is right about 40% of the time
    noisy = truth[:, None, :] + noise * torch.randn(len(places), photos_per_place, 512, generator=generator)
    noisy = torch.nn.functional.normalize(noisy, dim=-1)

    def hit(candidates, place) -> bool:
        return haversine_km(candidates[0].lat, candidates[0].lon, float(place[0]), float(place[1])) <= 25

    single = [hit(c, p) for p, feats in zip(places, noisy) for c in engine.answer(feats, 1)]
    fused = [
        hit(engine.fuse([PhotoResult("p", feature=f.numpy()) for f in feats], 1).candidates, p)
        for p, feats in zip(places, noisy)
    ]
    single_rate, fused_rate = np.mean(single), np.mean(fused)
    assert 0.05 < single_rate < 0.9, single_rate  # the task is neither trivial nor hopeless
    assert fused_rate > single_rate + 0.1, (single_rate, fused_rate)
