""" "How likely here?": what one answer's probability rasters say about a given spot.

For a point (an analyst's hypothesis, or the photo's true position) and one answer's rasters:

- the probability within 1, 25 and 200 km: the cells whose centres lie within that great-circle
  distance (:func:`.geo.haversine_km`). Cells come from the world raster refined by the local
  rasters (:func:`.confidence.probability_cells`): where a local raster lies, its 0.01° cells
  stand in for the world cells, so a 1 km disc is measured in cells smaller than itself (away from
  local rasters a disc smaller than a world cell may hold no cell centre, and so no probability);
- the density (probability per km²) at the point, relative to the best place's density
  (1 = as likely as anywhere; a ratio of 0.01 is a hundred times less likely per km²);
- the rank of the point's world cell among all world cells by density (1 = the most probable) and
  the number of cells ranked;
- the credible level: the share of probability in cells at least as dense as the point's, i.e.
  the level of the smallest confidence area (:mod:`.confidence`) that still contains the point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .confidence import Cells, cell_areas_km2, probability_cells
from .geo import EARTH_RADIUS_KM, haversine_km
from .rasters import Raster

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


def _density_at(raster: Raster, cell: tuple[int, int]) -> float:
    value = float(raster.values[cell])
    if not math.isfinite(value):
        return 0.0
    return value / float(cell_areas_km2(raster.north - cell[0] * raster.cell, raster.cell, 1)[0])


class LikelihoodMap:
    """One answer's rasters, prepared once for asking about many points."""

    def __init__(self, world: Raster, local: Sequence[Raster] = (), radii_km: Sequence[float] = RADII_KM):
        self.world = world
        self.radii = tuple(float(r) for r in radii_km)
        self.cells: Cells = probability_cells(world, local)
        self.total = self.cells.total
        density = self.cells.density
        self.best_density = float(density.max()) if density.size else 0.0
        # refined cells by density, ascending, with the probability at least as dense as each
        order = np.argsort(density, kind="stable")
        self._dense_sorted = density[order]
        self._mass_at_least = np.cumsum(self.cells.probability[order][::-1])[::-1]
        world_density = world.values / cell_areas_km2(world.north, world.cell, world.rows)[:, None]
        world_density = world_density[np.isfinite(world_density)]
        self._world_sorted = np.sort(world_density)

    def _masses(self, lat: float, lon: float) -> dict[float, float]:
        if not self.radii:
            return {}
        reach = math.degrees(max(self.radii) / EARTH_RADIUS_KM)
        near = np.flatnonzero(np.abs(self.cells.lat - lat) <= reach + 1e-9)  # a latitude band first
        distance = haversine_km(lat, lon, self.cells.lat[near], self.cells.lon[near])
        probability = self.cells.probability[near]
        return {radius: float(probability[distance <= radius].sum() / self.total) for radius in self.radii}

    def _refined_density(self, lat: float, lon: float) -> float:
        """Density of the cell that the refined cell set has at the point: the first local raster
        holding it (as :func:`.confidence.probability_cells` picks), else the world raster."""
        for raster in self.cells.rasters[1:]:
            cell = _cell_of(raster, lat, lon)
            if cell is not None:
                return _density_at(raster, cell)
        cell = _cell_of(self.world, lat, lon)
        return _density_at(self.world, cell) if cell is not None else 0.0

    def at(self, lat: float, lon: float, id: str = "") -> Likelihood:
        lat, lon = float(lat), float(lon)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"({lat}, {lon}) is not a latitude/longitude in degrees")
        density = self._refined_density(lat, lon)
        world_cell = _cell_of(self.world, lat, lon)
        world_density = _density_at(self.world, world_cell) if world_cell is not None else 0.0
        inside = world_cell is not None and bool(np.isfinite(self.world.values[world_cell]))
        rank, level = None, float("nan")  # outside the area: no rank, and no confidence area holds it
        if inside:  # 1 + the number of world cells strictly denser than the point's
            rank = 1 + int(self._world_sorted.size - np.searchsorted(self._world_sorted, world_density, side="right"))
            first = int(np.searchsorted(self._dense_sorted, density, side="left"))
            level = float(self._mass_at_least[first] / self.total) if first < self._dense_sorted.size else 0.0
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
    world: Raster, lat: float, lon: float, local: Sequence[Raster] = (), radii_km: Sequence[float] = RADII_KM
) -> Likelihood:
    """What one answer's rasters say about the point (lat, lon)."""
    return LikelihoodMap(world, local, radii_km).at(lat, lon)


def how_likely_many(
    world: Raster,
    points: Iterable[tuple[str, float, float]],
    local: Sequence[Raster] = (),
    radii_km: Sequence[float] = RADII_KM,
) -> list[Likelihood]:
    """The same for a list of hypotheses ``(id, lat, lon)``, in order; call ``.row()`` for table rows."""
    prepared = LikelihoodMap(world, local, radii_km)
    return [prepared.at(lat, lon, id) for id, lat, lon in points]


def for_answer(
    engine, result, points: Iterable[tuple[str, float, float]], area=None, progress=None
) -> list[Likelihood]:
    """\"How likely here?\" for an answer (a photo, text or fused result with its query vector): its
    rasters are made again from the vector (the location encoder only), then each point is judged.
    ``progress``: the first use's encoding of the gallery and world grid, stage by stage."""
    made = engine.rasters(result, area, progress=progress)
    return how_likely_many(made.world, points, made.local)


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
    """The places of a point layer or CSV that :func:`.point_embeddings.read_points` (called with the same
    arguments) leaves out for want of a usable position — no position, not a number, a latitude beyond
    ±90, one that cannot be reprojected — each named by the id read_points would give it, with why."""
    from osgeo import gdal, ogr, osr

    from .evaluation import LAT_COLUMNS, LON_COLUMNS
    from .location_features import wgs84

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
    transform = None
    srs = source.GetSpatialRef()
    if not from_columns and srs is not None and not srs.IsSame(wgs84()):
        srs = srs.Clone()
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        transform = osr.CoordinateTransformation(srs, wgs84())
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
