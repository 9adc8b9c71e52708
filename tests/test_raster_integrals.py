"""Every number a raster or "how likely here?" gives is an integral of the model's density, checked
against a fine integral of the same density made here, independently, with the real GeoCLIP location
encoder (heads from the geoclip wheel). Queries: oracle features (the location encoder's feature of a
known place) and a real camera photo through the small generated CLIP.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoclip_qgis.backend.earth.likelihood import LikelihoodMap, how_likely
from geoclip_qgis.backend.geo import EARTH_RADIUS_KM, cell_areas_km2, haversine_km
from geoclip_qgis.backend.results import PhotoResult


@pytest.fixture(scope="module", autouse=True)
def default_budget():
    """The accuracy measured here is the default budget's (the session's other tests use fewer points)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("GEOCLIP_RASTER_POINTS", raising=False)
        yield


def test_the_point_budget_is_a_setting_checked_when_read(monkeypatch):
    from geoclip_qgis.backend.errors import GeoCLIPError
    from geoclip_qgis.backend.model.rasters import CPU_POINT_BUDGET, GPU_POINT_BUDGET, point_budget

    assert point_budget(torch.device("cpu")) == CPU_POINT_BUDGET
    assert point_budget(torch.device("cuda")) == GPU_POINT_BUDGET
    monkeypatch.setenv("GEOCLIP_RASTER_POINTS", "20000")
    assert point_budget(torch.device("cpu")) == point_budget(torch.device("cuda")) == 20000
    for bad in ("100", "lots", "-5", "1e6"):
        monkeypatch.setenv("GEOCLIP_RASTER_POINTS", bad)
        with pytest.raises(GeoCLIPError, match="GEOCLIP_RASTER_POINTS"):
            point_budget(torch.device("cpu"))


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


KAUAI = (22.07, -159.50)


def oracle(engine, lat, lon) -> PhotoResult:
    with torch.inference_mode():
        feature = engine.heads.location_features(torch.tensor([[lat, lon]], dtype=torch.float32))[0]
    return PhotoResult(f"oracle {lat},{lon}", feature=feature.numpy())


def model_logits(engine, result, points: np.ndarray, world_cell: float = 0.25, local_cell: float = 0.01) -> np.ndarray:
    """The model's log-density at points, in the engine's own arithmetic (bf16 or fp32)."""
    query = torch.from_numpy(result.feature)
    return engine.surface(world_cell, local_cell).logits_at(points, query)


def fine_integral(engine, result, made, north: float, west: float, size: float, n: int, cells=(0.25, 0.01)) -> float:
    """Share of the answer's probability in the cell (north, west, size): n x n midpoint samples, each
    weighted by its geodesic area — written here from the model alone, not with the engine's integrator."""
    lat = north - (np.arange(n) + 0.5) * size / n
    lon = west + (np.arange(n) + 0.5) * size / n
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), axis=-1).reshape(-1, 2)
    logits = model_logits(engine, result, grid, *cells)
    edges = np.radians(north - np.arange(n + 1) * size / n)
    rows = EARTH_RADIUS_KM**2 * math.radians(size / n) * (np.sin(edges[:-1]) - np.sin(edges[1:]))
    log_mass = logits.reshape(n, n) + np.log(rows)[:, None]
    return float(np.exp(log_mass - made.log_total).sum())


@pytest.fixture(scope="module")
def photo_answer(engine, samples):
    return engine.predict([samples / "gps" / "DSCN0010.jpg"], top_k=5)[0]


def _top_world_cells(made, share: float, limit: int):
    values = made.world.values.reshape(-1)
    order = np.argsort(-values, kind="stable")
    count = int(np.searchsorted(np.cumsum(values[order]), share)) + 1
    return [divmod(int(i), made.world.cols) for i in order[: min(count, limit)]]


@pytest.mark.parametrize("query", ["oracle", "photo"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_world_cells_are_integrals_not_centre_samples(engine, photo_answer, query):
    result = oracle(engine, *KAUAI) if query == "oracle" else photo_answer
    made = engine.rasters(result)
    world = made.world
    checked = _top_world_cells(made, 0.9, 12)
    for row, col in checked:
        fine = fine_integral(
            engine, result, made, world.north - row * world.cell, world.west + col * world.cell, world.cell, 40
        )
        assert float(world.values[row, col]) == pytest.approx(fine, rel=0.1), (row, col)
    # the peak is where the probability is: the world raster's most probable cell lies under the local raster
    lat, lon, _ = world.peak()
    local = made.local[0]
    assert local.south <= lat <= local.north and local.west <= lon <= local.east


def test_every_local_cell_is_sampled_and_the_window_integrates(engine):
    result = oracle(engine, *KAUAI)
    made = engine.rasters(result)
    local = made.local[0]
    # no 5 x 5 block repeats one value: every 0.01 deg cell was evaluated
    blocks = local.values.reshape(local.rows // 5, 5, local.cols // 5, 5).transpose(0, 2, 1, 3).reshape(-1, 25)
    assert not np.any(np.all(blocks == blocks[:, :1], axis=1))
    # the most probable local cells against a fine integral of each, and the window's whole total
    order = np.argsort(-local.values.reshape(-1))[:8]
    for index in order:
        row, col = divmod(int(index), local.cols)
        fine = fine_integral(
            engine, result, made, local.north - row * local.cell, local.west + col * local.cell, local.cell, 6
        )
        assert float(local.values[row, col]) == pytest.approx(fine, rel=0.02)
    total = fine_integral(engine, result, made, local.north, local.west, local.rows * local.cell, 250)
    assert float(local.values.sum()) == pytest.approx(total, rel=0.02)


def _disc_integral(engine, result, made, lat, lon, radius_km, rings=24, rays=48) -> float:
    """The density over a disc, by a fine polar midpoint rule written here."""
    r = radius_km * np.sqrt((np.arange(rings) + 0.5) / rings)
    bearing = np.arange(rays) * 2 * math.pi / rays
    r, bearing = np.repeat(r, rays), np.tile(bearing, rings)
    phi, lam, delta = math.radians(lat), math.radians(lon), r / EARTH_RADIUS_KM
    phi2 = np.arcsin(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(bearing))
    lam2 = lam + np.arctan2(np.sin(bearing) * np.sin(delta) * np.cos(phi), np.cos(delta) - np.sin(phi) * np.sin(phi2))
    points = np.stack([np.degrees(phi2), (np.degrees(lam2) + 180) % 360 - 180], axis=1)
    logits = model_logits(engine, result, points)
    cap = 2 * math.pi * EARTH_RADIUS_KM**2 * (1 - math.cos(radius_km / EARTH_RADIUS_KM))
    return float(np.exp(logits - made.log_total).mean() * cap)


def _grid_disc_integral(engine, result, made, lat, lon, radius_km, n=121) -> float:
    """The density over a disc on a fine lat/lon grid over its bounding box (cells of radius / 60)."""
    step = math.degrees(2 * radius_km / n / EARTH_RADIUS_KM)
    lon_step = step / math.cos(math.radians(lat))
    edges = lat + (np.arange(n + 1) - n / 2) * step
    lats = (edges[:-1] + edges[1:]) / 2
    lons = lon + (np.arange(n) + 0.5 - n / 2) * lon_step
    grid = np.stack(np.meshgrid(lats, lons, indexing="ij"), axis=-1).reshape(-1, 2)
    rows = (
        EARTH_RADIUS_KM**2
        * math.radians(lon_step)
        * np.abs(np.sin(np.radians(edges[1:])) - np.sin(np.radians(edges[:-1])))
    )
    inside = haversine_km(lat, lon, grid[:, 0], grid[:, 1]) <= radius_km
    logits = model_logits(engine, result, grid[inside])
    return float(np.sum(np.exp(logits - made.log_total) * np.repeat(rows, n)[inside]))


def _away_from_local(made) -> tuple[int, int]:
    """The most probable world cell that no local raster covers."""
    for row, col in _top_world_cells(made, 1.0, 1000):
        lat, lon = made.world.centre(row, col)
        if not any(r.south <= lat <= r.north and r.west <= lon <= r.east for r in made.local):
            return row, col
    raise AssertionError("every probable world cell lies under a local raster")


@pytest.mark.parametrize("query", ["oracle", "photo"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_likely_within_a_disc_integrates_the_density(engine, photo_answer, query):
    result = oracle(engine, *KAUAI) if query == "oracle" else photo_answer
    made = engine.rasters(result)
    judge = LikelihoodMap(made.world, made.local, (1.0, 25.0), engine.density(result, made))
    local = made.local[0]
    row, col = _away_from_local(made)
    world_centre = made.world.centre(row, col)
    off = (local.south - 25 / 111.2, (local.west + local.east) / 2)  # 25 km beyond the local raster
    for lat, lon in (local.peak()[:2], world_centre, off):
        found = judge.at(lat, lon)
        one = _disc_integral(engine, result, made, lat, lon, 1.0)
        assert found.masses[1.0] == pytest.approx(one, rel=0.03, abs=1e-12), (lat, lon)
        wide = _grid_disc_integral(engine, result, made, lat, lon, 25.0)
        assert found.masses[25.0] == pytest.approx(wide, rel=0.05, abs=1e-9), (lat, lon)
    # without the model, a disc counts the share of each edge cell inside it: never a whole cell, or nothing
    cells_only = LikelihoodMap(made.world, made.local, (1.0,))
    at_centre = cells_only.at(*world_centre).masses[1.0]
    area_share = math.pi / float(cell_areas_km2(made.world.north - row * made.world.cell, made.world.cell, 1)[0])
    assert at_centre == pytest.approx(float(made.world.values[row, col]) * area_share, rel=0.05)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_densest_cell_has_ratio_one_and_its_own_credible_level(engine):
    result = oracle(engine, *KAUAI)
    made = engine.rasters(result)
    judge = LikelihoodMap(made.world, made.local)
    densest = int(np.argmax(judge.cells.density))
    lat, lon = float(judge.cells.lat[densest]), float(judge.cells.lon[densest])
    found = judge.at(lat, lon)
    assert found.density_ratio == 1.0
    assert found.credible_level == pytest.approx(judge.cells.probability[densest] / judge.total, rel=1e-12)
    assert found.credible_level > 0
    # every refined cell's density as "how likely here" reads it is the confidence areas' density
    for index in np.argsort(-judge.cells.density)[:50]:
        assert (
            how_likely(made.world, judge.cells.lat[index], judge.cells.lon[index], made.local).density
            == (judge.cells.density[index])
        )


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_fp32_engine_has_an_fp32_world_grid(tiny_clip, engine):
    from geoclip_qgis.backend import build_engine

    fp32 = build_engine(clip=tiny_clip, device="cpu", precision="fp32", embedding_cache=False)
    fp32.load_heads() if hasattr(fp32, "load_heads") else fp32.load()
    coarse = fp32.surface(2.0, 0.05)
    assert coarse.world.features.dtype == torch.float32 and coarse.dtype == torch.float32
    with torch.inference_mode():
        exact = fp32.heads.location_features(coarse.world.coordinates[:500].float())
    assert torch.equal(coarse.world.features[:500], exact)
    half = engine.surface(2.0, 0.05)
    assert half.world.features.dtype == torch.bfloat16
    # the same oracle raster in fp32 and bf16: bf16 is off by a visible amount, fp32 is the model's own
    result = oracle(fp32, *KAUAI)
    made = fp32.rasters(result, world_cell=2.0, local_cell=0.05)
    row, col = np.unravel_index(np.argmax(made.world.values), made.world.values.shape)
    fine = fine_integral(fp32, result, made, 90 - row * 2.0, -180 + col * 2.0, 2.0, 120, cells=(2.0, 0.05))
    assert float(made.world.values[row, col]) == pytest.approx(fine, rel=0.05)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_rasters_repeat_exactly(engine, photo_answer):
    a, b = engine.rasters(photo_answer), engine.rasters(photo_answer)
    assert np.array_equal(a.world.values, b.world.values)
    assert all(np.array_equal(x.values, y.values) for x, y in zip(a.local, b.local))
    assert haversine_km(*a.local[0].peak()[:2], *b.local[0].peak()[:2]) == 0
