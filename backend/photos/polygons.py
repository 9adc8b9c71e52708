"""Which points lie inside a polygon: the one rule for user zones and areas of interest, fast enough
for the 100K-point gallery against QGIS's 240-country world map.

The rule is OGR's ``polygon.Contains(point)`` (GEOS underneath): a point is inside when it lies in the
polygon's interior; a point on an edge or a vertex, a hole's included, is outside; holes are respected.
Coordinates are EPSG:4326 in lon/lat axis order; a point whose latitude or longitude is not a number is
outside. Nothing beyond GDAL/OGR and numpy is loaded (no shapely: its wheel brings a second GEOS into
QGIS's process).

How, and why it is exact:

1. A multipolygon is split into its polygons, each with its own box: a country with islands on both
   sides of the antimeridian no longer has a world-wide box. For a valid geometry the interior of a
   multipolygon is the union of its parts' interiors (parts meet at most at points, which are on both
   boundaries), so testing part by part gives the same answer as testing the whole.
2. The points in a part's box (found from the points sorted by longitude once) go to GEOS in ONE call,
   ``part.Intersection(multipoint)``, built from WKB made with numpy. GEOS's overlay locates each point
   with an indexed point-in-area locator (the same exact ray-crossing predicate ``Contains`` uses) and
   returns the input coordinates of the points covered (interior or boundary), unchanged; they are
   matched back to point indices exactly, duplicates included.
3. ``Intersection`` keeps points on the boundary, ``Contains`` does not. A point can only lie exactly on
   an edge if it lies within that edge's box and the edge's cross product with it computes to nearly zero
   (within an error bound far above floating-point rounding); such points, found with a grid over the
   edges, are asked of GEOS one by one with ``Contains``. In real data there are almost none.

Invalid polygons (a bowtie, a hole outside its shell, overlapping parts) have no well-defined inside:
they are repaired with OGR ``MakeValid`` (GDAL >= 3.0 built with GEOS >= 3.8) and a warning names the
polygon; where ``MakeValid`` is not available, :class:`InvalidPolygonError` names it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from ..errors import GeoCLIPError
from ..geo import transform_to_wgs84

LOG = logging.getLogger("geoclip_qgis")

# A point exactly on an edge has a computed cross product within a few units of rounding (about 1e-16)
# of the terms it is made of; anything within this far larger bound is checked with GEOS itself.
_ON_EDGE_BOUND = 1e-9
_BRUTE_FORCE_PAIRS = 100_000  # points x edges tested directly, without a grid, up to this many
_MAX_GRID = 2048  # cells per axis of the edge grid

_POINT_RECORD = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])  # 21 bytes, packed


class InvalidPolygonError(GeoCLIPError):
    """A polygon is not valid and cannot be repaired here, or is not a polygon at all."""


# ------------------------------------------------------------------------------------- geometries


def to_wgs84(geometry, transform, what: str):
    """``geometry`` reprojected to EPSG:4326 (lon/lat) by ``transform`` (None: it is already), checked to
    lie on the Earth. A polygon beyond its coordinate system's domain (an EPSG:3857 square 10^12 m wide)
    reprojects to longitudes of millions of degrees, which would silently hold a share of the gallery: it is
    a named error instead."""
    original = geometry.GetEnvelope()
    if transform is not None and geometry.Transform(transform) != 0:
        raise GeoCLIPError(f"{what} cannot be reprojected to EPSG:4326")
    if transform is not None:  # PROJ wraps what lies beyond the domain: going back shows it
        back = geometry.Clone()
        ok = back.Transform(transform.GetInverse()) == 0
        scale = max(1.0, *(abs(v) for v in original))
        if not ok or np.abs(np.subtract(back.GetEnvelope(), original)).max() > 1e-6 * scale:
            raise GeoCLIPError(
                f"{what} reaches beyond its coordinate system's valid area (its corners do not come back from "
                "longitude/latitude where they were): clip it to that area first"
            )
    west, east, south, north = geometry.GetEnvelope()
    bounds = np.array([west, east, south, north], dtype=np.float64)
    slack = 1e-6  # rounding of a reprojected world outline
    if (
        not np.isfinite(bounds).all()
        or west < -180 - slack
        or east > 180 + slack
        or south < -90 - slack
        or north > 90 + slack
    ):
        raise GeoCLIPError(
            f"{what} lies outside the Earth once reprojected to longitude/latitude (west {west:.6g}, east "
            f"{east:.6g}, south {south:.6g}, north {north:.6g}): it reaches beyond its coordinate system's "
            "valid area; clip it to that area first"
        )
    return geometry


def wkt_to_wgs84(wkt: str, crs_wkt: str, what: str) -> str:
    """A polygon's WKT in the coordinate system ``crs_wkt`` (WKT or any definition OSR reads; empty:
    EPSG:4326 already) as EPSG:4326 lon/lat WKT, checked by :func:`to_wgs84`: the one reprojection rule
    for polygons that come from QGIS layers too."""
    from osgeo import ogr, osr

    geometry = ogr.CreateGeometryFromWkt(wkt)
    if geometry is None:
        raise GeoCLIPError(f"{what} is not a geometry")
    transform = None
    if crs_wkt:
        source = osr.SpatialReference()
        if source.SetFromUserInput(crs_wkt) != 0:
            raise GeoCLIPError(f"{what}: its coordinate system cannot be read")
        transform = transform_to_wgs84(source)
    return to_wgs84(geometry, transform, what).ExportToWkt()


def polygon_parts(polygon, name: str = "polygon") -> list:
    """The polygons of a (multi)polygon (WKT or OGR geometry, lon/lat), valid, 2-D, as OGR geometries.

    An invalid geometry is repaired with ``MakeValid`` and a warning naming it is logged; lines or points
    a repair leaves behind are dropped (they hold no point inside). An empty list: an empty polygon.
    """
    from osgeo import ogr

    try:
        geometry = ogr.CreateGeometryFromWkt(polygon) if isinstance(polygon, str) else polygon
    except RuntimeError:  # with GDAL exceptions turned on
        geometry = None
    if geometry is None or ogr.GT_Flatten(geometry.GetGeometryType()) not in _POLYGONAL:
        raise InvalidPolygonError(f"{name} is not a polygon or multipolygon (WKT, lon/lat)")
    geometry = geometry.GetLinearGeometry() if geometry.HasCurveGeometry() else geometry.Clone()
    geometry.FlattenTo2D()
    if geometry.IsEmpty():
        return []
    valid, reason = _is_valid(geometry)
    if not valid:
        geometry = _repaired(geometry, name, reason)
    return list(_polygons_in(geometry))


_POLYGONAL = (3, 6, 10, 11)  # wkbPolygon, wkbMultiPolygon, wkbCurvePolygon, wkbMultiSurface


def _is_valid(geometry) -> tuple[bool, str]:
    """GEOS's validity, with its reason (GDAL reports it as an error message, kept here, not printed)."""
    from osgeo import gdal

    messages: list[str] = []
    gdal.PushErrorHandler(lambda _class, _number, message: messages.append(str(message).strip()))
    try:
        valid = bool(geometry.IsValid())
    finally:
        gdal.PopErrorHandler()
    return valid, "; ".join(m for m in messages if m)


def _repaired(geometry, name: str, reason: str):
    from osgeo import gdal

    why = f" ({reason})" if reason else ""
    if not hasattr(geometry, "MakeValid"):
        raise InvalidPolygonError(
            f"{name} is not a valid polygon{why} and this GDAL ({gdal.__version__}) cannot repair it "
            "(OGR MakeValid needs GDAL 3.0 or later built with GEOS 3.8 or later): fix its geometry first"
        )
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        repaired = geometry.MakeValid()
    except RuntimeError:  # with GDAL exceptions turned on
        repaired = None
    finally:
        gdal.PopErrorHandler()
    if repaired is None:
        raise InvalidPolygonError(
            f"{name} is not a valid polygon{why} and OGR MakeValid failed on it (it needs GDAL built with "
            "GEOS 3.8 or later): fix its geometry first"
        )
    LOG.warning("%s is not a valid polygon%s; repaired with OGR MakeValid before testing points", name, why)
    return repaired


def _polygons_in(geometry) -> Iterator:
    from osgeo import ogr

    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPolygon:
        if not geometry.IsEmpty():
            yield geometry.Clone()
    elif kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        for i in range(geometry.GetGeometryCount()):
            yield from _polygons_in(geometry.GetGeometryRef(i))


# ----------------------------------------------------------------------------------------- points


class PointIndex:
    """Points (lat, lon degrees) sorted by longitude once, so that each polygon part looks only at the
    points in its own box. Use one index for many polygons (:func:`..earth.regions.zones_of`)."""

    def __init__(self, lat, lon):
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        if lat.shape != lon.shape:
            raise ValueError(f"{lat.shape[0]} latitudes but {lon.shape[0]} longitudes")
        self.size = lat.shape[0]
        self.lat, self.lon = lat, lon
        finite = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))  # the others are never inside
        order = finite[np.argsort(lon[finite], kind="stable")]
        self._order, self._lon_sorted, self._lat_sorted = order, lon[order], lat[order]

    def in_box(self, west: float, east: float, south: float, north: float) -> np.ndarray:
        """Indices of the points in the box, edges included."""
        start = np.searchsorted(self._lon_sorted, west, side="left")
        stop = np.searchsorted(self._lon_sorted, east, side="right")
        lat = self._lat_sorted[start:stop]
        return self._order[start:stop][(lat >= south) & (lat <= north)]

    def inside(self, polygon, name: str = "polygon") -> np.ndarray:
        """Boolean mask (N,) of the points inside ``polygon`` (WKT, OGR geometry, or the list that
        :func:`polygon_parts` gives)."""
        parts = list(polygon) if isinstance(polygon, (list, tuple)) else polygon_parts(polygon, name)
        mask = np.zeros(self.size, dtype=bool)
        for part in parts:
            west, east, south, north = part.GetEnvelope()
            candidates = self.in_box(west, east, south, north)
            candidates = candidates[~mask[candidates]]  # parts of a valid geometry do not overlap
            if candidates.size:
                mask[candidates[_inside_part(part, self.lon[candidates], self.lat[candidates], name)]] = True
        return mask


def points_in_polygon(lat, lon, polygon, name: str = "polygon") -> np.ndarray:
    """Boolean mask, shaped like ``lat``, of the points inside ``polygon`` (WKT or OGR geometry, EPSG:4326
    lon/lat): OGR ``Contains``, so points on an edge or vertex are outside; holes are respected."""
    lat = np.asarray(lat, dtype=np.float64)
    return PointIndex(lat, lon).inside(polygon, name).reshape(lat.shape)


# ------------------------------------------------------------------------------------- one part


def _inside_part(part, x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """Which of the points (x = lon, y = lat) lie in the interior of one valid polygon."""
    covered = _covered(part, x, y, name)
    hit = np.flatnonzero(covered)
    if hit.size:
        suspects = hit[_maybe_on_edge(_rings(part), x[hit], y[hit])]
        if suspects.size:  # on the boundary or next to it: GEOS decides, one point at a time
            from osgeo import ogr

            point = ogr.Geometry(ogr.wkbPoint)
            for i in suspects:
                point.SetPoint_2D(0, float(x[i]), float(y[i]))
                covered[i] = bool(part.Contains(point))
    return covered


def _covered(part, x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """Points in the part's interior or on its boundary: one GEOS overlay with all of them as a multipoint."""
    from osgeo import ogr

    records = np.empty(x.shape[0], dtype=_POINT_RECORD)
    records["order"], records["type"], records["x"], records["y"] = 1, ogr.wkbPoint, x, y
    header = np.array([1], dtype="u1").tobytes() + np.array([ogr.wkbMultiPoint, x.shape[0]], dtype="<u4").tobytes()
    multipoint = ogr.CreateGeometryFromWkb(header + records.tobytes())
    found = part.Intersection(multipoint)
    if found is None:
        raise InvalidPolygonError(f"GEOS could not test points against {name} (is GDAL built with GEOS?)")
    got = _coordinates(found)
    if got.shape[0] == 0:
        return np.zeros(x.shape[0], dtype=bool)
    # GEOS returns the input coordinates themselves: match them exactly (complex: x + iy, 0.0 == -0.0)
    return np.isin(x + 1j * y, got[:, 0] + 1j * got[:, 1])


def _coordinates(geometry) -> np.ndarray:
    """(K, 2) x, y of the points of a point, multipoint or collection of points."""
    from osgeo import ogr

    if geometry.IsEmpty():
        return np.zeros((0, 2))
    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPoint:
        return np.array([[geometry.GetX(), geometry.GetY()]])
    if kind == ogr.wkbMultiPoint and not geometry.Is3D() and not geometry.IsMeasured():
        wkb = bytes(geometry.ExportToWkb(ogr.wkbNDR))
        count = geometry.GetGeometryCount()
        if len(wkb) == 9 + count * _POINT_RECORD.itemsize:
            records = np.frombuffer(wkb, dtype=_POINT_RECORD, offset=9, count=count)
            return np.stack([records["x"], records["y"]], axis=1)
    parts = [_coordinates(geometry.GetGeometryRef(i)) for i in range(geometry.GetGeometryCount())]
    return np.concatenate(parts) if parts else np.zeros((0, 2))


def _rings(part) -> list[np.ndarray]:
    """The rings of one 2-D polygon as (K, 2) arrays of x, y (closed: the last point repeats the first),
    read from its WKB."""
    from osgeo import ogr

    if part.Is3D() or part.IsMeasured():
        part = part.Clone()
        part.FlattenTo2D()
    wkb = bytes(part.ExportToWkb(ogr.wkbNDR))
    count = int(np.frombuffer(wkb, dtype="<u4", count=1, offset=5)[0])
    rings, offset = [], 9
    for _ in range(count):
        points = int(np.frombuffer(wkb, dtype="<u4", count=1, offset=offset)[0])
        rings.append(np.frombuffer(wkb, dtype="<f8", count=2 * points, offset=offset + 4).reshape(-1, 2))
        offset += 4 + 16 * points
    return [r for r in rings if r.shape[0]]


def _maybe_on_edge(rings: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the points that might lie exactly on an edge of the rings. Never misses one:
    an edge's box is tested exactly, its cross product within a bound far above rounding."""
    ax = np.concatenate([r[:-1, 0] for r in rings]) if rings else np.zeros(0)
    ay = np.concatenate([r[:-1, 1] for r in rings]) if rings else np.zeros(0)
    bx = np.concatenate([r[1:, 0] for r in rings]) if rings else np.zeros(0)
    by = np.concatenate([r[1:, 1] for r in rings]) if rings else np.zeros(0)
    result = np.zeros(x.shape[0], dtype=bool)
    if ax.size == 0 or x.size == 0:
        return result
    if ax.size * x.size <= _BRUTE_FORCE_PAIRS:
        points = np.repeat(np.arange(x.size), ax.size)
        edges = np.tile(np.arange(ax.size), x.size)
    else:
        points, edges = _pairs_by_grid(ax, ay, bx, by, x, y)
    near = _near(x[points], y[points], ax[edges], ay[edges], bx[edges], by[edges])
    result[points[near]] = True
    return result


def _near(px, py, ax, ay, bx, by) -> np.ndarray:
    in_x = (px >= np.minimum(ax, bx)) & (px <= np.maximum(ax, bx))
    in_box = in_x & (py >= np.minimum(ay, by)) & (py <= np.maximum(ay, by))
    first, second = (bx - ax) * (py - ay), (by - ay) * (px - ax)
    return in_box & (np.abs(first - second) <= _ON_EDGE_BOUND * (np.abs(first) + np.abs(second)))


def _pairs_by_grid(ax, ay, bx, by, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(point, edge) pairs that share a cell of a grid over the edges' box; every point that lies on an
    edge is paired with it (edges are cut into pieces no longer than a cell, each piece's box padded
    for rounding, and cells found with the same monotone formula for pieces and points)."""
    west, east = min(ax.min(), bx.min()), max(ax.max(), bx.max())
    south, north = min(ay.min(), by.min()), max(ay.max(), by.max())
    cells = int(min(_MAX_GRID, max(1, np.ceil(np.sqrt(ax.size)))))
    width = max((east - west) / cells, 1e-12)
    height = max((north - south) / cells, 1e-12)

    def column(v):
        return np.clip(np.floor((v - west) / width), 0, cells - 1).astype(np.int64)

    def row(v):
        return np.clip(np.floor((v - south) / height), 0, cells - 1).astype(np.int64)

    pieces = np.maximum(1, np.ceil(np.maximum(np.abs(bx - ax) / width, np.abs(by - ay) / height))).astype(np.int64)
    edge = np.repeat(np.arange(ax.size), pieces)
    step = np.arange(edge.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    t0, t1 = step / pieces[edge], (step + 1) / pieces[edge]
    dx, dy = (bx - ax)[edge], (by - ay)[edge]
    x0, x1 = ax[edge] + t0 * dx, ax[edge] + t1 * dx
    y0, y1 = ay[edge] + t0 * dy, ay[edge] + t1 * dy
    pad_x = 1e-9 * (1.0 + np.abs(ax[edge]) + np.abs(bx[edge]))
    pad_y = 1e-9 * (1.0 + np.abs(ay[edge]) + np.abs(by[edge]))
    c0, c1 = column(np.minimum(x0, x1) - pad_x), column(np.maximum(x0, x1) + pad_x)
    r0, r1 = row(np.minimum(y0, y1) - pad_y), row(np.maximum(y0, y1) + pad_y)
    cell_of, edge_of = [], []
    for i in range(int((c1 - c0).max()) + 1):
        for j in range(int((r1 - r0).max()) + 1):
            keep = (c0 + i <= c1) & (r0 + j <= r1)
            cell_of.append((r0[keep] + j) * cells + c0[keep] + i)
            edge_of.append(edge[keep])
    cell_of, edge_of = np.concatenate(cell_of), np.concatenate(edge_of)
    order = np.argsort(cell_of, kind="stable")
    cell_of, edge_of = cell_of[order], edge_of[order]
    point_cell = row(y) * cells + column(x)
    start = np.searchsorted(cell_of, point_cell, side="left")
    counts = np.searchsorted(cell_of, point_cell, side="right") - start
    points = np.repeat(np.arange(x.size), counts)
    offsets = np.arange(points.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return points, edge_of[np.repeat(start, counts) + offsets]
