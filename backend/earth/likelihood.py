""" "How likely here?": what one answer's probability rasters say about a given spot.

For a point (an analyst's hypothesis, or the photo's true position) and one answer's rasters:

- the probability within 1, 25 and 200 km: the answer's density integrated over the disc of that
  great-circle radius (:func:`..geo.haversine_km`). Cells (the world raster refined by the local
  rasters, :func:`.confidence.probability_cells`, each an integral) wholly inside count whole; of a
  cell on the disc's edge only the part inside counts — integrated with the model itself when the cell
  is large against the disc (a 1 km disc inside a 25 km cell), else by the share of its area inside;
- the density (probability per km²) of the refined cell holding the point, relative to the densest
  cell's (the same array of densities the confidence areas are cut from, so the densest cell is 1)
  (a ratio of 0.01 is a hundred times less likely per km²);
- the rank of the point's world cell among all world cells by density (1 = the most probable) and
  the number of cells ranked;
- the credible level: the share of probability in cells at least as dense as the point's, i.e.
  the level of the smallest confidence area (:mod:`.confidence`) that still contains the point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..geo import EARTH_RADIUS_KM, cell_areas_km2, haversine_km
from ..model.rasters import Raster
from ..progress import ProgressCallback, ShouldStop
from .confidence import WORLD, Cells, joining_levels, probability_cells

RADII_KM = (1.0, 25.0, 200.0)


@dataclass(frozen=True)
class Likelihood:
    id: str
    lat: float
    lon: float
    masses: dict[float, float]  # radius in km -> probability within it
    density: float  # probability per km² of the cell holding the point (0 outside the area)
    density_ratio: float  # density / the densest cell's density
    rank: int | None  # of the point's world cell, by density; None outside the area
    cells: int  # world cells ranked
    credible_level: float  # level of the smallest confidence area containing the point (NaN outside the area)

    def row(self) -> dict:
        """Flat columns for a table: id, lat, lon, mass_within_<r>km..., density_ratio, rank, ..."""
        masses = {f"mass_within_{radius:g}km": mass for radius, mass in self.masses.items()}
        return {
            "id": self.id,
            "lat": self.lat,
            "lon": self.lon,
            **masses,
            "density": self.density,
            "density_ratio": self.density_ratio,
            "rank": self.rank,
            "cells": self.cells,
            "credible_level": self.credible_level,
        }


def _cell_of(raster: Raster, lat: float, lon: float) -> tuple[int, int] | None:
    row = math.floor((raster.north - lat) / raster.cell)
    col = math.floor((lon - raster.west) / raster.cell)
    # a point on the south or east edge belongs to the last cell, not to none
    if row == raster.rows and math.isclose(lat, raster.south, abs_tol=1e-9):
        row -= 1
    if col == raster.cols and math.isclose(lon, raster.east, abs_tol=1e-9):
        col -= 1
    if 0 <= row < raster.rows and 0 <= col < raster.cols:
        return row, col
    return None


# A cell on a disc's edge and larger than 1/DISC_CELLS of its radius is integrated with the model itself
# over the part inside, where the model is at hand: one value per cell cannot say where in it the
# probability lies.
DISC_CELLS = 5
CELL_SPLIT = 16  # the part of a cell within a disc's bounding box is split 16 × 16 to find its share inside


class LikelihoodMap:
    """One answer's rasters, prepared once for asking about many points.

    ``density``: the answer's model density (probability per km² at (P, 2) lat, lon, normalised as the
    rasters are), when at hand: small discs are then integrated with it. Without it every disc is
    measured in cells, each cell on its edge counted by the share of its area inside.
    """

    def __init__(
        self,
        world: Raster,
        local: Sequence[Raster] = (),
        radii_km: Sequence[float] = RADII_KM,
        density: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.world = world
        self.radii = tuple(float(r) for r in radii_km)
        self.model_density = density
        self.cells: Cells = probability_cells(world, local)
        self.total = self.cells.total
        density_of = self.cells.density  # the one density per cell every figure below reads
        self.best_density = float(density_of.max()) if density_of.size else 0.0
        # the smallest confidence area holding each refined cell: the areas' own rule, plus the cell itself
        self._levels = joining_levels(self.cells) + self.cells.probability / self.total if self.total else None
        # where each raster's cells are in the refined set (-1: replaced by a local raster, or no data)
        self._index = [np.full(r.values.shape, -1, dtype=np.int64) for r in self.cells.rasters]
        for source, index in enumerate(self._index):
            mine = np.flatnonzero(self.cells.source == (WORLD if source == 0 else source - 1))
            index[self.cells.row[mine], self.cells.col[mine]] = mine
        self._size_deg = np.array([r.cell for r in self.cells.rasters])
        self._size_km = np.radians(self._size_deg) * EARTH_RADIUS_KM
        world_density = world.values / cell_areas_km2(world.north, world.cell, world.rows)[:, None]
        self._world_density = np.where(np.isfinite(world_density), world_density, 0.0)
        self._world_sorted = np.sort(world_density[np.isfinite(world_density)])

    def _refined_cell(self, lat: float, lon: float) -> int | None:
        """The point's cell in the refined set: the first local raster holding it (as
        :func:`.confidence.probability_cells` picks), else the world raster's; None outside the area."""
        for raster, index in zip(self.cells.rasters[1:], self._index[1:]):
            cell = _cell_of(raster, lat, lon)
            if cell is not None and index[cell] >= 0:
                return int(index[cell])
        cell = _cell_of(self.world, lat, lon)
        return int(self._index[0][cell]) if cell is not None and self._index[0][cell] >= 0 else None

    def _masses(self, lat: float, lon: float) -> dict[float, float]:
        if not self.radii:
            return {}
        cells = self.cells
        reach = math.degrees(max(self.radii) / EARTH_RADIUS_KM) + max(r.cell for r in cells.rasters)
        near = np.flatnonzero(np.abs(cells.lat - lat) <= reach)  # a latitude band first
        distance = haversine_km(lat, lon, cells.lat[near], cells.lon[near])
        return {radius: self._within(lat, lon, radius, near, distance) for radius in self.radii}

    def _within(self, lat: float, lon: float, radius: float, near: np.ndarray, distance: np.ndarray) -> float:
        """The probability within ``radius`` km: cells wholly inside count whole (each is an integral); a
        cell on the edge counts the part of it inside — with the model over that part when the cell is
        large against the disc, else by the share of its area inside."""
        cells = self.cells
        size_km = self._size_km[cells.source[near] + 1]
        half_diagonal = size_km * 0.75  # a little over √2/2: never calls an edge cell wholly in or out
        inside = near[distance + half_diagonal <= radius]
        on_edge = np.abs(distance - radius) < half_diagonal
        edge = near[on_edge]
        held = float(cells.probability[inside].sum()) / self.total
        if not edge.size:
            return held
        share, points, km2 = self._parts_inside(lat, lon, radius, edge)
        coarse = size_km[on_edge] * DISC_CELLS > radius if self.model_density is not None else np.zeros(edge.size, bool)
        held += float((cells.probability[edge[~coarse]] * share[~coarse]).sum()) / self.total
        if coarse.any():
            picked = points[coarse].reshape(-1, 2)
            weights = km2[coarse].reshape(-1)
            held += float(np.sum(self.model_density(picked[weights > 0]) * weights[weights > 0]))
        return held

    def _parts_inside(self, lat: float, lon: float, radius: float, edge: np.ndarray):
        """For each edge cell: the share of its area inside the disc, and the sub-cells that make it up —
        (E, S, 2) centres and (E, S) km² (0 outside the disc). The part of the cell within the disc's bounding
        box is split CELL_SPLIT × CELL_SPLIT, so a disc far smaller than a cell is measured as finely as a
        large one."""
        cells = self.cells
        size = self._size_deg[cells.source[edge] + 1]
        reach_lat = math.degrees(radius / EARTH_RADIUS_KM)
        reach_lon = reach_lat / max(math.cos(math.radians(lat)), 1e-9)
        centre_lon = lon + (cells.lon[edge] - lon + 180.0) % 360.0 - 180.0  # the cell's copy nearest the disc
        south = np.maximum(cells.lat[edge] - size / 2, lat - reach_lat)
        north = np.minimum(cells.lat[edge] + size / 2, lat + reach_lat)
        west = np.maximum(centre_lon - size / 2, lon - reach_lon)
        east = np.minimum(centre_lon + size / 2, lon + reach_lon)
        tall, wide = np.clip(north - south, 0, None), np.clip(east - west, 0, None)
        steps = (np.arange(CELL_SPLIT) + 0.5) / CELL_SPLIT
        sub_lat = south[:, None, None] + steps[None, :, None] * tall[:, None, None]
        sub_lon = west[:, None, None] + steps[None, None, :] * wide[:, None, None]
        sub_lat, sub_lon = np.broadcast_arrays(sub_lat, sub_lon)
        box_km2 = EARTH_RADIUS_KM**2 * np.radians(tall / CELL_SPLIT) * np.radians(wide / CELL_SPLIT)
        km2 = box_km2[:, None, None] * np.cos(np.radians(sub_lat))
        # a sub-cell the circle crosses counts by how far its centre is inside (a ramp one sub-cell wide),
        # not wholly or not at all: the area inside is then right to second order, not to first
        side = np.sqrt(np.maximum(km2, 1e-30))
        inside = np.clip(0.5 + (radius - haversine_km(lat, lon, sub_lat, sub_lon)) / side, 0.0, 1.0)
        km2 = (km2 * inside).reshape(edge.size, -1)
        cell_km2 = EARTH_RADIUS_KM**2 * np.radians(size) ** 2 * np.cos(np.radians(cells.lat[edge]))
        points = np.stack([sub_lat, (sub_lon + 180.0) % 360.0 - 180.0], axis=-1).reshape(edge.size, -1, 2)
        return km2.sum(axis=1) / cell_km2, points, km2

    def at(self, lat: float, lon: float, id: str = "") -> Likelihood:
        lat, lon = float(lat), float(lon)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"({lat}, {lon}) is not a latitude/longitude in degrees")
        refined = self._refined_cell(lat, lon)
        density = float(self.cells.density[refined]) if refined is not None else 0.0
        world_cell = _cell_of(self.world, lat, lon)
        inside = world_cell is not None and bool(np.isfinite(self.world.values[world_cell]))
        rank, level = None, float("nan")  # outside the area: no rank, and no confidence area holds it
        if inside:  # 1 + the number of world cells strictly denser than the point's
            world_density = self._world_density[world_cell]
            rank = 1 + int(self._world_sorted.size - np.searchsorted(self._world_sorted, world_density, side="right"))
            level = float(self._levels[refined]) if refined is not None and self._levels is not None else 0.0
        return Likelihood(
            id=str(id),
            lat=lat,
            lon=lon,
            masses=self._masses(lat, lon),
            density=density,
            density_ratio=density / self.best_density if self.best_density > 0 else 0.0,
            rank=rank,
            cells=int(self._world_sorted.size),
            credible_level=level if math.isnan(level) else min(level, 1.0),
        )


def how_likely(
    world: Raster,
    lat: float,
    lon: float,
    local: Sequence[Raster] = (),
    radii_km: Sequence[float] = RADII_KM,
    density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Likelihood:
    """What one answer's rasters (and its model density, if given) say about the point (lat, lon)."""
    return LikelihoodMap(world, local, radii_km, density).at(lat, lon)


def how_likely_many(
    world: Raster,
    points: Iterable[tuple[str, float, float]],
    local: Sequence[Raster] = (),
    radii_km: Sequence[float] = RADII_KM,
    density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Likelihood]:
    """The same for a list of hypotheses ``(id, lat, lon)``, in order; call ``.row()`` for table rows."""
    prepared = LikelihoodMap(world, local, radii_km, density)
    return [prepared.at(lat, lon, id) for id, lat, lon in points]


def for_answer(
    engine,
    result,
    points: Iterable[tuple[str, float, float]],
    area=None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> list[Likelihood]:
    """\"How likely here?\" for an answer (a photo, text or fused result with its query vector): its
    rasters are made again from the vector (the location encoder only), then each point is judged.
    ``progress``: the first use's encoding of the gallery and world grid, stage by stage, which
    ``should_stop`` can stop (:class:`..errors.Cancelled`)."""
    made = engine.rasters(result, area, progress=progress, should_stop=should_stop)
    return how_likely_many(made.world, points, made.local, density=engine.density(result, made, area))


# --------------------------------------------------------------------------- places that cannot be judged


@dataclass(frozen=True)
class SkippedPlace:
    """A place given to judge that has no usable position, and why."""

    id: str
    reason: str


def _shown(value) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _degrees(value, name: str) -> tuple[float | None, str]:
    """A coordinate as read_points reads it (a finite number), or None and why not."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"no {name}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{name} {_shown(value)} is not a number"
    if not math.isfinite(number):
        return None, f"{name} {_shown(value)} is not a finite number"
    return number, ""


def unread_places(
    path,
    layer: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    id_field: str | None = None,
) -> list[SkippedPlace]:
    """The places of a point layer or CSV that :func:`..location.point_embeddings.read_points` (called with the same
    arguments) leaves out for want of a usable position — no position, not a number, a latitude beyond
    ±90, one that cannot be reprojected — each named by the id read_points would give it, with why."""
    from osgeo import gdal, ogr

    from ..geo import transform_to_wgs84
    from .evaluation import LAT_COLUMNS, LON_COLUMNS

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    source = None if dataset is None else dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    if source is None:
        return []
    defn = source.GetLayerDefn()
    lowered = [defn.GetFieldDefn(i).GetName().lower() for i in range(defn.GetFieldCount())]

    def index(wanted: str | None, candidates: Sequence[str] = ()) -> int | None:
        for name in [wanted] if wanted else candidates:
            if name and name.lower() in lowered:
                return lowered.index(name.lower())
        return None

    id_index = index(id_field) if id_field else None
    from_columns = bool(lat_column or lon_column) or ogr.GT_Flatten(source.GetGeomType()) == ogr.wkbNone
    lat_index, lon_index = (index(lat_column, LAT_COLUMNS), index(lon_column, LON_COLUMNS)) if from_columns else (0, 0)
    if lat_index is None or lon_index is None:
        return []
    transform = None if from_columns else transform_to_wgs84(source.GetSpatialRef())
    skipped = []
    source.ResetReading()
    for feature in source:
        if from_columns:
            values = [feature.GetField(i) if feature.IsFieldSetAndNotNull(i) else None for i in (lat_index, lon_index)]
            (lat, why_lat), (lon, why_lon) = _degrees(values[0], "latitude"), _degrees(values[1], "longitude")
            reason = why_lat or why_lon
        else:
            lat = lon = None
            geometry = feature.GetGeometryRef()
            reason = "no position (no point geometry)"
            if geometry is not None and not geometry.IsEmpty():
                if ogr.GT_Flatten(geometry.GetGeometryType()) == ogr.wkbMultiPoint and geometry.GetGeometryCount() == 1:
                    geometry = geometry.GetGeometryRef(0)
                geometry = geometry.Clone()
                if transform is not None and geometry.Transform(transform) != 0:
                    reason = "its position cannot be reprojected to EPSG:4326"
                else:
                    lon, lat = geometry.GetX(), geometry.GetY()
        if lat is not None and lon is not None:
            if abs(lat) <= 90:
                continue
            reason = f"latitude {lat:g} is beyond ±90"
        named = feature.GetField(id_index) if id_index is not None else feature.GetFID()
        skipped.append(SkippedPlace(str(named), reason))
    return skipped
