"""Confidence areas: the smallest area holding 50 % (or 90 %, or any level) of one answer's probability.

From probability rasters (:mod:`.rasters`: probability per cell, the world raster summing to 1, NaN
outside an area of interest) the cells are sorted by probability *density* — probability per km²,
so that small polar cells and large equatorial ones compare fairly — and taken, densest first,
until their probability reaches the level. That set is the highest-density region: no other set
of cells of the same area holds more probability. Its cells are polygonised with GDAL
(``gdal.Polygonize`` on a mask in a MEM dataset) and dissolved into one multipolygon per level.

Local rasters refine it: the world cells under a local raster are replaced by that raster's cells
(they hold the same probability, in 0.01° instead of 0.25° pieces), so near the answer the area
follows the finer cells. Where two local rasters overlap, the first one given is used.

Areas are geodesic: a cell between latitudes φ1 and φ2, Δλ wide, covers
R² · Δλ · (sin φ2 − sin φ1) on the sphere of radius :data:`.geo.EARTH_RADIUS_KM` (GDAL 3.6 has no
geodesic area of its own). The area reported is the sum of the chosen cells, i.e. exactly the area
of the polygons drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import GeoCLIPError
from .geo import EARTH_RADIUS_KM
from .rasters import Raster

LEVELS = (0.5, 0.9)
WORLD = -1  # the source index of world cells in Cells


def cell_areas_km2(north: float, cell: float, rows: int) -> np.ndarray:
    """(rows,) area in km² of one cell in each row of a north-up grid of ``cell`` degrees."""
    top = np.radians(north - np.arange(rows) * cell)
    bottom = np.radians(north - (np.arange(rows) + 1) * cell)
    return EARTH_RADIUS_KM**2 * math.radians(cell) * (np.sin(top) - np.sin(bottom))


def _offset(value: float, cell: float, what: str) -> int:
    steps = value / cell
    if abs(steps - round(steps)) > 1e-6:
        raise GeoCLIPError(f"a local raster's {what} does not fall on the world raster's cell edges")
    return round(steps)


@dataclass
class Cells:
    """The cells of a world raster with the cells under local rasters replaced by the local cells.

    Every array has one entry per cell; cells outside an area of interest (NaN) are left out.
    """

    probability: np.ndarray  # (M,) float64
    area_km2: np.ndarray  # (M,) float64
    lat: np.ndarray  # (M,) cell centres, degrees
    lon: np.ndarray
    source: np.ndarray  # (M,) WORLD for a world cell, else the index of the local raster
    row: np.ndarray  # (M,) row and column within that raster
    col: np.ndarray
    rasters: list[Raster]  # the world raster, then the local rasters used

    @property
    def density(self) -> np.ndarray:
        """Probability per km²."""
        return self.probability / self.area_km2

    @property
    def total(self) -> float:
        return float(self.probability.sum())


def _cells_of(raster: Raster, keep: np.ndarray, source: int) -> dict[str, np.ndarray]:
    rows, cols = np.nonzero(keep & np.isfinite(raster.values))
    return {
        "probability": raster.values[rows, cols].astype(np.float64),
        "area_km2": cell_areas_km2(raster.north, raster.cell, raster.rows)[rows],
        "lat": raster.north - (rows + 0.5) * raster.cell,
        "lon": raster.west + (cols + 0.5) * raster.cell,
        "source": np.full(rows.shape, source, dtype=np.int32),
        "row": rows,
        "col": cols,
    }


def probability_cells(world: Raster, local: Sequence[Raster] = ()) -> Cells:
    """The world raster's cells, refined by the local rasters where they lie."""
    covered = np.zeros(world.values.shape, dtype=bool)  # world cells replaced by local ones
    parts = []
    used: list[Raster] = []
    for raster in local:
        ratio = world.cell / raster.cell
        sub = round(ratio)
        if abs(ratio - sub) > 1e-6 or raster.rows % sub or raster.cols % sub:
            raise GeoCLIPError("a local raster's cells must tile the world raster's cells")
        row0 = _offset(world.north - raster.north, world.cell, "north edge")
        col0 = _offset(raster.west - world.west, world.cell, "west edge")
        rows, cols = raster.rows // sub, raster.cols // sub
        if row0 < 0 or col0 < 0 or row0 + rows > world.rows or col0 + cols > world.cols:
            raise GeoCLIPError("a local raster reaches beyond the world raster")
        free = ~covered[row0 : row0 + rows, col0 : col0 + cols]  # world cells no earlier local raster took
        if not free.any():
            continue
        parts.append(_cells_of(raster, np.repeat(np.repeat(free, sub, 0), sub, 1), len(used)))
        covered[row0 : row0 + rows, col0 : col0 + cols] = True
        used.append(raster)
    parts.insert(0, _cells_of(world, ~covered, WORLD))
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Cells(**joined, rasters=[world, *used])


def density_order(cells: Cells) -> np.ndarray:
    """Cell indices, densest first (ties in a stable order, so results repeat)."""
    return np.argsort(-cells.density, kind="stable")


@dataclass(frozen=True)
class ConfidenceArea:
    """The smallest area holding ``level`` of the probability, as one (multi)polygon."""

    level: float  # asked for, e.g. 0.9
    wkt: str  # MULTIPOLYGON in EPSG:4326, longitude/latitude order
    area_km2: float  # geodesic, of the cells inside
    mass: float  # the share of the raster's probability actually inside (>= level)
    cells: int  # cells chosen (world and local together)
    parts: int  # separate polygons
    density_threshold: float  # probability per km² of the last cell taken: the area's edge
    refined: bool  # local rasters took part


def _polygons(mask: np.ndarray, raster: Raster):
    """OGR polygons of the True cells of ``mask`` laid on ``raster``'s grid."""
    from osgeo import gdal, ogr

    rows, cols = mask.shape
    dataset = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((raster.west, raster.cell, 0.0, raster.north, 0.0, -raster.cell))
    band = dataset.GetRasterBand(1)
    band.WriteArray(mask.astype(np.uint8))
    vectors = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vectors.CreateLayer("mask", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    if gdal.Polygonize(band, band, layer, 0, []) != 0:  # the band masks itself: zero cells make no polygon
        raise GeoCLIPError(f"cannot polygonise a confidence area: {gdal.GetLastErrorMsg()}")
    return [feature.GetGeometryRef().Clone() for feature in layer]


def _touches(envelope, box, slack: float = 1e-9) -> bool:
    """Whether two (west, east, south, north) boxes overlap or touch."""
    return (
        envelope[0] <= box[1] + slack
        and box[0] <= envelope[1] + slack
        and envelope[2] <= box[3] + slack
        and box[2] <= envelope[3] + slack
    )


def _dissolve(world_polygons: list, local_polygons: list, windows: list[tuple[float, float, float, float]]):
    """One multipolygon. Polygonize already joins the cells of one raster, so only world polygons
    that reach a local raster's window are unioned with that raster's polygons (a union of every
    piece would take minutes for a speckled answer with tens of thousands of them)."""
    from osgeo import ogr

    result = ogr.Geometry(ogr.wkbMultiPolygon)
    locals_ = ogr.Geometry(ogr.wkbMultiPolygon)
    for polygon in local_polygons:
        locals_.AddGeometry(polygon)
    merged = locals_.UnionCascaded() if locals_.GetGeometryCount() else None
    for polygon in world_polygons:
        if merged is not None and any(_touches(polygon.GetEnvelope(), w) for w in windows):
            merged = merged.Union(polygon)  # binary unions: far cheaper than one cascaded union here
        else:
            result.AddGeometry(polygon)
    if merged is not None:
        merged = ogr.ForceToMultiPolygon(merged)
        for index in range(merged.GetGeometryCount()):
            result.AddGeometry(merged.GetGeometryRef(index))
    return result


def confidence_areas(
    world: Raster, local: Sequence[Raster] = (), levels: Sequence[float] = LEVELS
) -> list[ConfidenceArea]:
    """One :class:`ConfidenceArea` per level, from the world raster refined by ``local`` rasters."""
    for level in levels:
        if not 0 < level <= 1:
            raise ValueError(f"a confidence level must lie in (0, 1], got {level}")
    cells = probability_cells(world, local)
    total = cells.total
    if not total > 0:
        raise GeoCLIPError("the raster holds no probability")
    order = density_order(cells)
    cumulative = np.cumsum(cells.probability[order])
    areas = []
    for level in levels:
        # the first index at which the running sum reaches the level (float sums: never past the end)
        last = min(int(np.searchsorted(cumulative, level * total, side="left")), len(order) - 1)
        chosen = order[: last + 1]
        world_polygons, local_polygons = [], []
        for source, raster in enumerate(cells.rasters, start=WORLD):
            picked = chosen[cells.source[chosen] == source]
            if picked.size:
                mask = np.zeros(raster.values.shape, dtype=bool)
                mask[cells.row[picked], cells.col[picked]] = True
                (world_polygons if source == WORLD else local_polygons).extend(_polygons(mask, raster))
        windows = [(r.west, r.east, r.south, r.north) for r in cells.rasters[1:]]
        geometry = _dissolve(world_polygons, local_polygons, windows)
        areas.append(
            ConfidenceArea(
                level=float(level),
                wkt=geometry.ExportToWkt(),
                area_km2=float(cells.area_km2[chosen].sum()),
                mass=float(cumulative[last] / total),
                cells=int(chosen.size),
                parts=geometry.GetGeometryCount(),
                density_threshold=float(cells.density[order[last]]),
                refined=len(cells.rasters) > 1,
            )
        )
    return areas
