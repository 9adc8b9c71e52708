"""Areas of interest: a bounding box or polygons in EPSG:4326, tested with GDAL/OGR.

A point (or raster cell centre) is inside when it lies inside the box (edges included) or polygon (the
rule of :mod:`.polygons`: OGR ``Contains``, so a point on a polygon's edge is outside; an invalid polygon
is repaired with a warning); boxes whose west edge is east of their east edge cross the antimeridian.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from ..errors import GeoCLIPError


@dataclass(frozen=True)
class Area:
    label: str  # what the user chose, recorded with the results
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north
    wkt: str | None = None  # (multi)polygon, lon/lat

    @classmethod
    def from_bbox(cls, text_or_tuple) -> Area:
        try:
            values = [float(v) for v in (text_or_tuple.split(",") if isinstance(text_or_tuple, str) else text_or_tuple)]
        except ValueError:
            raise GeoCLIPError(f"area must be WEST,SOUTH,EAST,NORTH in degrees, got {text_or_tuple!r}") from None
        if len(values) != 4:
            raise GeoCLIPError(f"area must have 4 numbers WEST,SOUTH,EAST,NORTH, got {len(values)}")
        west, south, east, north = values
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
            raise GeoCLIPError(f"area {values} is not a valid box: need -180..180 longitudes and south < north")
        return cls(label=f"bbox {west:g},{south:g},{east:g},{north:g}", bbox=(west, south, east, north))

    @classmethod
    def from_wkt(cls, wkt: str, label: str = "polygon") -> Area:
        from osgeo import ogr

        geometry = ogr.CreateGeometryFromWkt(wkt)
        if geometry is None or ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
            raise GeoCLIPError("area must be a polygon or multipolygon in longitude/latitude")
        west, east, south, north = geometry.GetEnvelope()
        return cls(label=label, bbox=(west, south, east, north), wkt=geometry.ExportToWkt())

    @classmethod
    def from_file(cls, path: str | os.PathLike, layer: str | None = None) -> Area:
        """The union of every polygon in one layer of a vector file (any OGR format), reprojected to
        EPSG:4326. A file with several polygon layers needs ``layer`` to say which."""
        from osgeo import ogr

        from ..geo import transform_to_wgs84
        from .polygons import to_wgs84

        source = ogr.Open(os.fspath(path))
        if source is None:
            raise GeoCLIPError(f"cannot open area file {path}")
        polygonal = (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface)
        layers = [source.GetLayer(i) for i in range(source.GetLayerCount())]
        candidates = [lyr for lyr in layers if ogr.GT_Flatten(lyr.GetGeomType()) in polygonal]
        if layer is not None:
            chosen = source.GetLayerByName(layer)
            if chosen is None:
                names = ", ".join(lyr.GetName() for lyr in layers) or "none"
                raise GeoCLIPError(f"area file {path} has no layer {layer!r} (its layers: {names})")
        elif len(candidates) == 1:
            chosen = candidates[0]
        elif not candidates:
            raise GeoCLIPError(f"area file {path} holds no polygon layer")
        else:
            names = ", ".join(lyr.GetName() for lyr in candidates)
            raise GeoCLIPError(f"area file {path} has {len(candidates)} polygon layers ({names}): choose one")
        union = ogr.Geometry(ogr.wkbMultiPolygon)
        transform = transform_to_wgs84(chosen.GetSpatialRef())
        for feature in chosen:
            geometry = feature.GetGeometryRef()
            if geometry is None:
                continue
            union = union.Union(to_wgs84(geometry.Clone(), transform, f"area file {path}: feature {feature.GetFID()}"))
        if union.IsEmpty():
            raise GeoCLIPError(f"layer {chosen.GetName()} of area file {path} holds no polygons")
        label = os.path.basename(os.fspath(path)) + (f" ({chosen.GetName()})" if len(layers) > 1 else "")
        return cls.from_wkt(union.ExportToWkt(), label=label)

    def _in_box(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        west, south, east, north = self.bbox
        in_lat = (lat >= south) & (lat <= north)
        in_lon = (lon >= west) & (lon <= east) if west <= east else (lon >= west) | (lon <= east)
        return in_lat & in_lon

    def contains(self, lat, lon) -> np.ndarray:
        """Boolean mask of the points (degrees) inside the area."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        inside = np.array(self._in_box(lat, lon), dtype=bool)  # an array even for one point, to write into
        if self.wkt is None or not inside.any():
            return inside
        from osgeo import ogr

        from .polygons import PointIndex

        candidates = np.flatnonzero(inside)  # the box has already thrown out most points
        points = PointIndex(lat.flat[candidates], lon.flat[candidates])
        parts = [ogr.CreateGeometryFromWkb(wkb) for wkb in _polygon_parts(self.wkt, self.label)]
        inside.flat[candidates] = points.inside(parts, f"area {self.label!r}")
        return inside


@functools.lru_cache(maxsize=8)
def _polygon_parts(wkt: str, label: str) -> tuple[bytes, ...]:
    """An area's polygons as WKB, checked (and repaired, with one warning) once, not at every call."""
    from osgeo import ogr

    from .polygons import polygon_parts

    return tuple(bytes(part.ExportToWkb(ogr.wkbNDR)) for part in polygon_parts(wkt, f"area {label!r}"))
