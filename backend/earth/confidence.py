"""Confidence areas: the smallest area holding 50 % (or 90 %, or any level) of one answer's probability.

From probability rasters (:mod:`..model.rasters`: probability per cell, the world raster summing to 1, NaN
outside an area of interest) the cells are sorted by probability *density* — probability per km²,
so that small polar cells and large equatorial ones compare fairly — and taken, densest first,
until their probability reaches the level. That set is the highest-density region: no other set
of cells of the same area holds more probability. Its cells are polygonised with GDAL
(``gdal.Polygonize`` on a mask in a MEM dataset) and dissolved into one multipolygon per level.

Local rasters refine it: the world cells under a local raster are replaced by that raster's cells
(they hold the same probability, in 0.01° instead of 0.25° pieces), so near the answer the area
follows the finer cells. Where two local rasters overlap, the first one given is used.

Drawable areas. An unsure answer's exact area is speckle: tens of thousands of single cells (a
5 MB multipolygon for one photo's 90 % area) that fill the map and say nothing a smooth outline
would not. So an area keeps at most :data:`MAX_PARTS` polygons:

1. the exact area, when it has that few parts, or when the least probable parts beyond the cap
   hold at most :data:`MAX_DROPPED` of the probability: they are left out and more cells, in the
   same order, make up for them;
2. else the world raster alone, its density first averaged over a window of ±r cells (twice: a
   tent reaching 2r cells) for r in :data:`SMOOTHING_RADII`, the first r at which step 1 succeeds
   for every level (the same r for all levels: the 50 % area's cells come first in the order the
   90 % area's are taken in, so it lies inside it but for what simplifying moves);
3. past the largest r, the least probable parts are left out whatever they hold (``mass`` then
   says what is left, and ``note`` says so).

An area with more than :data:`MAX_VERTICES` vertices is then simplified (OGR's
``SimplifyPreserveTopology``, Douglas–Peucker that keeps rings valid and apart) with a tolerance of
:data:`SIMPLIFY_CELLS` cells of the finest raster in it: its edge moves by at most one cell, the
data's own resolution. Simplifying and leaving parts out lose a little probability; more cells are
taken until the polygons hold the level again, so ``mass`` ≥ ``level`` except in step 3.

What is stored describes the polygons as they are: ``mass`` and ``cells`` are those of the cells
whose centres they hold (on each raster's own grid), ``area_km2`` their area. ``exact_km2`` keeps
the exact area's size, ``smoothing_deg``, ``dropped_parts``, ``simplified_deg`` and ``note`` what
was done. "How likely here?" (:mod:`.likelihood`) still ranks points on the exact density.

Areas are geodesic: a cell between latitudes φ1 and φ2, Δλ wide, covers
R² · Δλ · (sin φ2 − sin φ1) on the sphere of radius :data:`..geo.EARTH_RADIUS_KM` (GDAL 3.6 has no
geodesic area of its own); a polygon with straight edges in longitude and latitude covers
R² ∮ −sin φ dλ (:func:`geodesic_area_km2`), which for cells is the same sum.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GeoCLIPError
from ..geo import EARTH_RADIUS_KM, cell_areas_km2, wgs84

if TYPE_CHECKING:  # annotations only: importing .rasters would import torch
    from ..model.rasters import Raster

LEVELS = (0.5, 0.9)  # the confidence areas a run stores as polygons
RASTER_LEVELS = (0.25, 0.5, 0.75, 0.9)  # the areas the rasters' level band holds (LEVELS among them)
OUTSIDE = 1.0  # the level band's value for a cell in none of the areas
WORLD = -1  # the source index of world cells in Cells


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


def joining_levels(cells: Cells) -> np.ndarray:
    """(M,) for each cell, the share of the probability held by the cells taken before it, densest first
    (:func:`density_order`, the order confidence areas take cells in): the cell lies in the exact
    confidence area of level L exactly when this is below L: *How likely here?*'s credible level is this
    plus the cell's own share."""
    levels = np.empty(cells.probability.shape, dtype=np.float64)
    if not levels.size:
        return levels
    order = density_order(cells)
    held = np.cumsum(cells.probability[order])
    levels[order] = np.concatenate([[0.0], held[:-1]]) / held[-1]
    return levels


@dataclass(frozen=True)
class ConfidenceArea:
    """An area holding ``level`` of the probability, as one (multi)polygon: the smallest one (the
    highest-density region) when that is drawable, else a generalised one (see the module's notes).
    ``area_km2``, ``mass``, ``cells`` and ``parts`` describe the polygons as stored."""

    level: float  # asked for, e.g. 0.9
    wkt: str  # MULTIPOLYGON in EPSG:4326, longitude/latitude order
    area_km2: float  # geodesic, of the polygons
    mass: float  # the share of the raster's probability in the cells whose centres the polygons hold
    cells: int  # those cells (world and local together)
    parts: int  # separate polygons
    density_threshold: float  # probability per km² (smoothed when smoothing_deg > 0) of the area's edge
    refined: bool  # local rasters took part
    exact_km2: float = math.nan  # the smallest area holding the level (the exact highest-density region)
    smoothing_deg: float = 0.0  # the density was averaged over this radius before cells were taken
    dropped_parts: int = 0  # the least probable parts left out beyond MAX_PARTS
    simplified_deg: float = 0.0  # Douglas–Peucker tolerance applied (0: the cells' edges as they are)
    note: str = ""  # how it was generalised, in words ("" for the exact area)


# Generalisation: what keeps a diffuse answer's area drawable (an unsure photo's exact 90 % area can
# be tens of thousands of single cells, megabytes of polygons that cover the map in speckle).
MAX_PARTS = 100  # polygons per area at most; the least probable are left out beyond that...
MAX_DROPPED = 0.02  # ...when they hold at most this share of the probability (more cells make it up)
SMOOTHING_RADII = (1, 2, 3, 4, 6, 8, 12, 16)  # world cells; tried in turn while the area has too many parts
MAX_VERTICES = 2000  # an area with more vertices than this is simplified...
SIMPLIFY_CELLS = 1.0  # ...topology-preserving Douglas–Peucker, tolerance in cells of its finest raster
TOP_UPS = 4  # rounds of taking more cells to make up for what leaving parts out and simplifying lost


def _grid(raster: Raster, kind: int):
    from osgeo import gdal

    dataset = gdal.GetDriverByName("MEM").Create("", raster.cols, raster.rows, 1, kind)
    dataset.SetGeoTransform((raster.west, raster.cell, 0.0, raster.north, 0.0, -raster.cell))
    dataset.SetProjection(wgs84().ExportToWkt())
    return dataset


def _polygons(mask: np.ndarray, raster: Raster):
    """OGR polygons of the True cells of ``mask`` laid on ``raster``'s grid."""
    vectors, layer = _polygonised(mask, raster)
    return [feature.GetGeometryRef().Clone() for feature in layer]


def _polygonised(mask: np.ndarray, raster: Raster):
    """The True cells of ``mask`` as polygons (4-connected pieces) in a Memory layer, with the data
    source that owns it."""
    from osgeo import gdal, ogr

    dataset = _grid(raster, gdal.GDT_Byte)
    band = dataset.GetRasterBand(1)
    band.WriteArray(mask.astype(np.uint8))
    vectors = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vectors.CreateLayer("mask", wgs84(), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    if gdal.Polygonize(band, band, layer, 0, []) != 0:  # the band masks itself: zero cells make no polygon
        raise GeoCLIPError(f"cannot polygonise a confidence area: {gdal.GetLastErrorMsg()}")
    return vectors, layer


def _burn(layer, raster: Raster, attribute: str) -> np.ndarray:
    """(rows, cols) int32: the ``attribute`` of the polygon holding each cell's centre, 0 for none."""
    from osgeo import gdal

    dataset = _grid(raster, gdal.GDT_Int32)
    if gdal.RasterizeLayer(dataset, [1], layer, options=[f"ATTRIBUTE={attribute}"]) != 0:
        raise GeoCLIPError(f"cannot measure a confidence area: {gdal.GetLastErrorMsg()}")
    return dataset.GetRasterBand(1).ReadAsArray()


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


def geodesic_area_km2(geometry) -> float:
    """Area on the sphere of a (multi)polygon in longitude/latitude degrees whose edges are straight in
    those degrees (as drawn on a plate carrée map): by Green's theorem, R² ∮ −sin φ dλ, exact along
    each straight edge. For a cell it is R² · Δλ · (sin φ2 − sin φ1), as :func:`cell_areas_km2`."""
    from osgeo import ogr

    geometry = ogr.ForceToMultiPolygon(geometry.Clone())
    total = 0.0
    for p in range(geometry.GetGeometryCount()):
        polygon = geometry.GetGeometryRef(p)
        for r in range(polygon.GetGeometryCount()):
            points = np.radians(np.asarray(polygon.GetGeometryRef(r).GetPoints(), dtype=np.float64)[:, :2])
            if len(points) < 4:
                continue
            lon, lat = points[:, 0], points[:, 1]
            d_lon, d_lat, mid = np.diff(lon), np.diff(lat), (lat[1:] + lat[:-1]) / 2
            ring = abs(float(np.sum(-d_lon * np.sin(mid) * np.sinc(d_lat / (2 * np.pi)))))
            total += ring if r == 0 else -ring  # the outer ring, less the holes
    return EARTH_RADIUS_KM**2 * total


def _vertices(geometry) -> int:
    return sum(
        geometry.GetGeometryRef(p).GetGeometryRef(r).GetPointCount()
        for p in range(geometry.GetGeometryCount())
        for r in range(geometry.GetGeometryRef(p).GetGeometryCount())
    )


def _box_sum(values: np.ndarray, radius: int, axis: int, wrap: bool) -> np.ndarray:
    """Sum over a window of ±radius cells along one axis (zeros beyond the edge, or wrapped around)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    summed = np.cumsum(np.pad(values, pad, mode="wrap" if wrap else "constant"), axis=axis)
    summed = np.insert(summed, 0, 0.0, axis=axis)
    n = values.shape[axis]
    return np.take(summed, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis) - np.take(summed, np.arange(n), axis)


def smoothed_density(world: Raster, radius: int) -> np.ndarray:
    """(rows, cols) probability per km² averaged over a tent-shaped window reaching 2·radius cells (a
    ±radius box, twice), over the cells inside the area of interest only; NaN outside it. Longitude
    wraps around on a world raster that spans 360°."""
    values = world.values.astype(np.float64)
    valid = np.isfinite(values)
    density = np.where(valid, values / cell_areas_km2(world.north, world.cell, world.rows)[:, None], 0.0)
    weight = valid.astype(np.float64)
    wrap = abs(world.cols * world.cell - 360.0) < 1e-6
    for _ in range(2):
        for axis in (0, 1):
            density = _box_sum(density, radius, axis, wrap and axis == 1)
            weight = _box_sum(weight, radius, axis, wrap and axis == 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, density / weight, np.nan)


@dataclass
class _Ranking:
    """An order in which cells are taken: densest first (exact), or by smoothed density."""

    cells: Cells
    order: np.ndarray
    cumulative: np.ndarray  # probability taken along the order
    density: np.ndarray  # (M,) the density the order follows
    smoothing_deg: float

    @classmethod
    def of(cls, cells: Cells, density: np.ndarray, smoothing_deg: float = 0.0) -> _Ranking:
        order = np.argsort(-density, kind="stable")
        return cls(cells, order, np.cumsum(cells.probability[order]), density, smoothing_deg)

    def take(self, share: float) -> np.ndarray:
        """The first cells of the order whose probability reaches ``share`` of the total."""
        total = self.cumulative[-1]
        # the first index at which the running sum reaches the share (float sums: never past the end)
        last = min(int(np.searchsorted(self.cumulative, share * total, side="left")), len(self.order) - 1)
        return self.order[: last + 1]


def _rankings(world: Raster, local: Sequence[Raster]):
    """The exact ranking (world refined by local rasters), then world-only rankings by smoothed density."""
    cells = probability_cells(world, local)
    yield _Ranking.of(cells, cells.density)
    world_cells = probability_cells(world)
    for radius in SMOOTHING_RADII:
        smooth = smoothed_density(world, radius)[world_cells.row, world_cells.col]
        yield _Ranking.of(world_cells, smooth, radius * world.cell)


@dataclass
class _Built:
    geometry: object  # ogr MULTIPOLYGON
    inside: np.ndarray  # (M,) bool: cells whose centres it holds
    mass: float
    dropped_parts: int
    dropped_mass: float
    simplified_deg: float
    density_threshold: float


def _build(ranking: _Ranking, share: float, max_parts: int) -> _Built:
    """The area of the first cells of ``ranking`` holding ``share``: polygonised per raster, the least
    probable pieces beyond ``max_parts`` left out, dissolved, simplified when it has too many vertices."""
    from osgeo import ogr

    cells = ranking.cells
    total = ranking.cumulative[-1]
    chosen = ranking.take(share)
    piece = np.zeros(cells.probability.shape, dtype=np.int64)  # 0: not taken, else a piece number
    keep_alive, sources, offset = [], [], 0
    for source, raster in enumerate(cells.rasters, start=WORLD):
        picked = chosen[cells.source[chosen] == source]
        if not picked.size:
            continue
        mask = np.zeros(raster.values.shape, dtype=bool)
        mask[cells.row[picked], cells.col[picked]] = True
        vectors, layer = _polygonised(mask, raster)
        numbered = vectors.ExecuteSQL("SELECT FID + 1 AS piece, * FROM mask")
        grid = _burn(numbered, raster, "piece")
        vectors.ReleaseResultSet(numbered)
        here = np.flatnonzero(cells.source == source)
        found = grid[cells.row[here], cells.col[here]]
        piece[here] = np.where(found > 0, found + offset, 0)
        keep_alive.append(vectors)
        sources.append((source, layer, offset))
        offset += layer.GetFeatureCount()
    masses = np.bincount(piece, weights=cells.probability, minlength=offset + 1)[1:] / total
    kept = np.argsort(-masses, kind="stable")[:max_parts] if offset > max_parts else np.arange(offset)
    kept = kept[np.argsort(-masses[kept], kind="stable")]  # the most probable first
    world_polygons, local_polygons = [], []
    for number in kept:
        source, layer, start = next(s for s in reversed(sources) if s[2] <= number)
        feature = layer.GetFeature(int(number - start))  # kept while its geometry is copied
        polygon = feature.GetGeometryRef().Clone()
        (world_polygons if source == WORLD else local_polygons).append(polygon)
    windows = [(r.west, r.east, r.south, r.north) for r in cells.rasters[1:]]
    geometry = _dissolve(world_polygons, local_polygons, windows)
    is_kept = np.zeros(offset + 1, dtype=bool)
    is_kept[kept + 1] = True
    inside = is_kept[piece]
    dropped = offset - len(kept)
    dropped_mass = float(masses.sum() - masses[kept].sum())
    simplified = 0.0
    if _vertices(geometry) > MAX_VERTICES:
        finest = min(r.cell for s, r in enumerate(cells.rasters, start=WORLD) if (cells.source[chosen] == s).any())
        simplified = SIMPLIFY_CELLS * finest
        geometry = ogr.ForceToMultiPolygon(geometry.SimplifyPreserveTopology(simplified))
        inside = _inside(geometry, cells)
    if dropped or simplified:
        mass = float(cells.probability[inside].sum() / total)
    else:
        mass = float(ranking.cumulative[len(chosen) - 1] / total)  # exactly the running sum that stopped
    edge = chosen[-1]
    return _Built(geometry, inside, mass, dropped, dropped_mass, simplified, float(ranking.density[edge]))


def _inside(geometry, cells: Cells) -> np.ndarray:
    """(M,) bool: the cells whose centres the geometry holds, on each raster's own grid."""
    from osgeo import ogr

    vectors = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vectors.CreateLayer("area", wgs84(), ogr.wkbMultiPolygon)
    layer.CreateField(ogr.FieldDefn("inside", ogr.OFTInteger))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("inside", 1)
    feature.SetGeometry(geometry)
    layer.CreateFeature(feature)
    inside = np.zeros(cells.probability.shape, dtype=bool)
    for source, raster in enumerate(cells.rasters, start=WORLD):
        here = cells.source == source
        if here.any():
            inside[here] = _burn(layer, raster, "inside")[cells.row[here], cells.col[here]] > 0
    return inside


def _note(area: _Built, ranking: _Ranking, level: float, exact_km2: float) -> str:
    """What was done to the exact area, in words ("" when nothing was)."""
    said = []
    if ranking.smoothing_deg:
        said.append(f"density smoothed over {ranking.smoothing_deg:g}° (the exact area: {exact_km2:,.0f} km²)")
    if area.dropped_parts:
        said.append(
            f"{area.dropped_parts:,} least probable parts left out ({100 * area.dropped_mass:.2g} % of the probability)"
        )
    if area.simplified_deg:
        said.append(f"simplified at {area.simplified_deg:g}°")
    if area.mass < level:
        said.append(f"holds {100 * area.mass:.1f} %, less than {100 * level:g} %")
    return "; ".join(said)


def _attempt(ranking: _Ranking, level: float, max_parts: int, last_resort: bool) -> _Built | None:
    """The area at ``level`` on this ranking, taking more cells while leaving parts out and simplifying
    lose probability (at most TOP_UPS rounds); None when leaving parts out would lose more than
    MAX_DROPPED (a smoother ranking does better) unless this is the last resort."""
    share, built = level, None
    for _ in range(TOP_UPS):
        built = _build(ranking, share, max_parts)
        if built.dropped_mass > MAX_DROPPED and not last_resort:
            return None
        if built.mass >= level - 1e-9 or share >= 1.0:
            return built
        share = min(1.0, share + (level - built.mass))
    return built if last_resort else None


def _areas(world: Raster, local: Sequence[Raster], levels: Sequence[float], max_parts: int):
    """(the ranking the areas were built on, {level: its area}, the exact areas' km² by level)."""
    for level in levels:
        if not 0 < level <= 1:
            raise ValueError(f"a confidence level must lie in (0, 1], got {level}")
    if not np.nansum(world.values, dtype=np.float64) > 0:
        raise GeoCLIPError("the raster holds no probability")
    levels = sorted({float(level) for level in levels})  # the lower levels have fewer parts: quicker to turn down
    for index, ranking in enumerate(_rankings(world, local)):
        if index == 0:
            exact_km2 = {level: float(ranking.cells.area_km2[ranking.take(level)].sum()) for level in levels}
        last_resort = index == len(SMOOTHING_RADII)
        built: dict[float, _Built] = {}
        for level in levels:
            found = _attempt(ranking, level, max_parts, last_resort)
            if found is None:
                break
            built[level] = found
        if len(built) == len(levels):
            return ranking, _nested(built, ranking), exact_km2
    raise AssertionError("the last smoothing is a last resort: it always gives an area")  # pragma: no cover


def _nested(built: dict[float, _Built], ranking: _Ranking) -> dict[float, _Built]:
    """Each level's area holding the lower levels' areas: simplifying one area alone can cut a corner
    another keeps, and a cell then lies in the 75 % area but outside the 90 % one."""
    lower = None
    for level in sorted(built):
        area = built[level]
        if lower is not None and not area.geometry.Contains(lower.geometry):
            from osgeo import ogr

            geometry = ogr.ForceToMultiPolygon(area.geometry.Union(lower.geometry))
            inside = _inside(geometry, ranking.cells)
            mass = float(ranking.cells.probability[inside].sum() / ranking.cumulative[-1])
            area = built[level] = dataclasses.replace(area, geometry=geometry, inside=inside, mass=mass)
        lower = area
    return built


def _area(level: float, area: _Built, ranking: _Ranking, exact_km2: float) -> ConfidenceArea:
    return ConfidenceArea(
        level=level,
        wkt=area.geometry.ExportToWkt(),
        area_km2=geodesic_area_km2(area.geometry),
        mass=area.mass,
        cells=int(area.inside.sum()),
        parts=area.geometry.GetGeometryCount(),
        density_threshold=area.density_threshold,
        refined=len(ranking.cells.rasters) > 1,
        exact_km2=exact_km2,
        smoothing_deg=ranking.smoothing_deg,
        dropped_parts=area.dropped_parts,
        simplified_deg=area.simplified_deg,
        note=_note(area, ranking, level, exact_km2),
    )


def confidence_areas(
    world: Raster, local: Sequence[Raster] = (), levels: Sequence[float] = LEVELS, max_parts: int = MAX_PARTS
) -> list[ConfidenceArea]:
    """One :class:`ConfidenceArea` per level, from the world raster refined by ``local`` rasters: the
    exact highest-density region when it has at most ``max_parts`` parts, else generalised."""
    ranking, built, exact_km2 = _areas(world, local, levels, max_parts)
    return [_area(float(level), built[float(level)], ranking, exact_km2[float(level)]) for level in levels]


@dataclass
class DrawnAreas:
    """An answer's confidence areas at :data:`RASTER_LEVELS`, as polygons and as one level per raster
    cell: the smallest level whose area holds the cell (its centre, on the grid the area was built on),
    :data:`OUTSIDE` in none, NaN where the raster has no data. A style with classes up to 0.25, 0.5,
    0.75 and 0.9 on those grids draws the very cells of the polygons."""

    areas: list[ConfidenceArea]  # one per level, in RASTER_LEVELS order
    world_levels: np.ndarray  # (rows, cols) float32, as the world raster
    local_levels: list[np.ndarray]  # one per local raster, as each

    def stored(self, levels: Sequence[float] = LEVELS) -> list[ConfidenceArea]:
        """The areas a run stores as polygons."""
        return [area for area in self.areas if area.level in levels]


def drawn_areas(world: Raster, local: Sequence[Raster] = (), max_parts: int = MAX_PARTS) -> DrawnAreas:
    """The confidence areas of :data:`RASTER_LEVELS` (one build serves polygons and rasters alike)."""
    ranking, built, exact_km2 = _areas(world, local, RASTER_LEVELS, max_parts)
    cells = ranking.cells
    per_cell = np.full(cells.probability.shape, OUTSIDE)
    for level in sorted(built, reverse=True):  # the smallest level holding a cell is written last
        per_cell[built[level].inside] = level
    world_levels, local_levels = _grids(cells, per_cell, world, local)
    areas = [_area(level, built[level], ranking, exact_km2[level]) for level in RASTER_LEVELS]
    return DrawnAreas(areas, world_levels, local_levels)


def _grids(cells: Cells, per_cell: np.ndarray, world: Raster, local: Sequence[Raster]):
    """Per-cell values of ``cells`` (world cells, refined by some local rasters or none) as one grid per
    raster. A world cell under a local raster takes the smallest value of its local cells; a local cell
    that is not in ``cells`` takes the value of the cell that is: an earlier local raster's where windows
    overlap, its world cell's where the cells are the world's alone (a smoothed ranking)."""
    grids = [np.full(r.values.shape, np.nan, dtype=np.float64) for r in (world, *local)]
    position = [next(i for i, r in enumerate(local) if r is used) for used in cells.rasters[1:]]
    mine = cells.source == WORLD
    grids[0][cells.row[mine], cells.col[mine]] = per_cell[mine]
    for source, at in enumerate(position):
        mine = cells.source == source
        grids[1 + at][cells.row[mine], cells.col[mine]] = per_cell[mine]
        world_row = np.floor((world.north - cells.lat[mine]) / world.cell).astype(np.int64)
        world_col = np.floor((cells.lon[mine] - world.west) / world.cell).astype(np.int64)
        np.fmin.at(grids[0], (world_row, world_col), per_cell[mine])
    for at, raster in enumerate(local):
        grid = grids[1 + at]
        rows, cols = np.nonzero(np.isnan(grid) & np.isfinite(raster.values))
        if not rows.size:
            continue
        lat, lon = raster.north - (rows + 0.5) * raster.cell, raster.west + (cols + 0.5) * raster.cell
        sources = [(local[other], grids[1 + other]) for other in position if other != at] + [(world, grids[0])]
        for taken, values in reversed(sources):  # the first that holds the cell is written last
            row = np.floor((taken.north - lat) / taken.cell).astype(np.int64)
            col = np.floor((lon - taken.west) / taken.cell).astype(np.int64)
            inside = (row >= 0) & (row < taken.rows) & (col >= 0) & (col < taken.cols)
            found = np.full(rows.shape, np.nan)
            found[inside] = values[row[inside], col[inside]]
            grid[rows, cols] = np.where(np.isnan(found), grid[rows, cols], found)
    return grids[0].astype(np.float32), [grid.astype(np.float32) for grid in grids[1:]]
