"""What QGIS hands the plugin, turned into what the engine takes: areas of interest in EPSG:4326 from
an extent or polygons, photo paths from a point layer. Shared by the dock and the Processing
algorithms."""

from __future__ import annotations

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
PHOTO_FIELD_NAMES = ("photo", "path", "filepath", "file", "filename")  # "photo": QGIS's geotagged photo layer


class InputError(ValueError):
    """The user's choice in QGIS cannot be used as it is; the message says why."""


def area_from_extent(extent, crs, transform_context=None, label: str = "map extent"):
    """A box area from a rectangle in ``crs``, clipped to the world."""
    from ..backend.photos.area import Area

    transform = QgsCoordinateTransform(crs, WGS84, transform_context or QgsProject.instance().transformContext())
    box = transform.transformBoundingBox(extent)
    west, east = max(box.xMinimum(), -180.0), min(box.xMaximum(), 180.0)
    south, north = max(box.yMinimum(), -90.0), min(box.yMaximum(), 90.0)
    if not (west < east and south < north):
        raise InputError("the extent does not cover any part of the world")
    area = Area.from_bbox((west, south, east, north))
    return Area(f"{label} {west:.3f},{south:.3f},{east:.3f},{north:.3f}", area.bbox)


def area_from_polygons(features, crs, name: str):
    """The union of the features' polygons, reprojected to EPSG:4326 by the engine's rule (a polygon
    beyond its coordinate system's valid area is refused, not wrapped)."""
    from ..backend.photos.area import Area

    geometries = [f.geometry() for f in features if f.hasGeometry()]
    if not geometries:
        raise InputError(f"{name} has no polygons to use as the area of interest")
    from ..backend.errors import GeoCLIPError
    from ..backend.photos.polygons import wkt_to_wgs84

    union = QgsGeometry.unaryUnion(geometries)
    try:  # the engine's rule: reprojected, and checked to lie on the Earth
        wkt = wkt_to_wgs84(union.asWkt(), crs.toWkt(), name)
    except GeoCLIPError as exc:
        raise InputError(str(exc)) from None
    return Area.from_wkt(wkt, label=f"{name} ({len(geometries)} polygons)")


def guess_photo_field(fields) -> str:
    """The field of a point layer that most likely holds photo paths ("" when none does)."""
    names = {field.name().lower(): field.name() for field in fields}
    return next((names[n] for n in PHOTO_FIELD_NAMES if n in names), "")


def photo_paths(features, field: str) -> list[str]:
    """The photo paths in ``field`` of these features, in order, without empty values or repeats."""
    seen, paths = set(), []
    for feature in features:
        value = feature[field]
        if value is None or not str(value).strip() or str(value) == "NULL":
            continue
        path = str(value)
        if path not in seen:
            seen.add(path)
            paths.append(path)
    return paths
