"""Probability rasters to GeoTIFF through GDAL: EPSG:4326, Float32, NaN as no-data, metadata kept."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import GeoCLIPError
from .rasters import Raster


def write_geotiff(raster: Raster, path: str | os.PathLike) -> Path:
    from osgeo import gdal, osr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = gdal.GetDriverByName("GTiff")
    options = ["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES"]
    dataset = driver.Create(str(path), raster.cols, raster.rows, 1, gdal.GDT_Float32, options=options)
    if dataset is None:
        raise GeoCLIPError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
    dataset.SetGeoTransform((raster.west, raster.cell, 0.0, raster.north, 0.0, -raster.cell))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.SetMetadata({key: str(value) for key, value in raster.metadata.items()})
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(float("nan"))
    band.SetDescription("probability per cell")
    band.WriteArray(raster.values)
    band.ComputeStatistics(False)
    dataset.FlushCache()
    dataset = None  # closes the file
    return path


def raster_name(label: str, kind: str, index: int = 0) -> str:
    """A file name from a photo path or query: its stem, made safe, plus the raster kind."""
    stem = label[len("text: "):] if label.startswith("text: ") else Path(label).stem
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("_")[:60] or "query"
    return f"{stem}_{kind}{index + 1 if kind == 'local' else ''}.tif"
