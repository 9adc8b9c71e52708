"""Distances on the Earth: great-circle (haversine) on the mean-radius sphere."""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
# The paper's accuracy thresholds: evaluate, fine-tuning, the dock's table and Processing all read these.
THRESHOLDS_KM = (1, 25, 200, 750, 2500)


def cell_areas_km2(north: float, cell: float, rows: int):
    """(rows,) area in km² of one cell in each row of a north-up grid of ``cell`` degrees."""
    import numpy as np

    top = np.radians(north - np.arange(rows) * cell)
    bottom = np.radians(north - (np.arange(rows) + 1) * cell)
    return EARTH_RADIUS_KM**2 * math.radians(cell) * (np.sin(top) - np.sin(bottom))


def wgs84():
    """EPSG:4326 with longitude first (x = lon, y = lat): the coordinate system of every layer and raster
    the product writes, and of every geometry it computes with. A fresh object each call (GDAL's are
    mutable)."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def transform_to_wgs84(srs):
    """The transformation from ``srs`` (read with easting or longitude first) to :func:`wgs84`; None when
    there is nothing to transform (no coordinate system, or WGS84 already). ``srs`` is left as it was."""
    from osgeo import osr

    target = wgs84()
    if srs is None or srs.IsSame(target):
        return None
    source = srs.Clone()
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(source, target)


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points in degrees; numpy arrays broadcast."""
    import numpy as np  # here, not at the top: the plugin reads this module where NumPy may be missing

    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geodesic_circle(lat: float, lon: float, radius_km: float, vertices: int = 72) -> list[tuple[float, float]]:
    """(lon, lat) ring of the points ``radius_km`` from (lat, lon) on the sphere, closed. Longitudes run on
    past ±180 where the circle crosses the antimeridian (one unbroken ring; QGIS draws it whole); a circle
    over a pole is clipped at ±90."""
    import numpy as np

    distance = radius_km / EARTH_RADIUS_KM
    bearing = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    lat1, lon1 = np.radians(lat), np.radians(lon)
    lat2 = np.arcsin(np.sin(lat1) * np.cos(distance) + np.cos(lat1) * np.sin(distance) * np.cos(bearing))
    lon2 = lon1 + np.arctan2(
        np.sin(bearing) * np.sin(distance) * np.cos(lat1), np.cos(distance) - np.sin(lat1) * np.sin(lat2)
    )
    ring = [(float(x), float(y)) for x, y in zip(np.degrees(lon2), np.clip(np.degrees(lat2), -90, 90))]
    return ring + ring[:1]
