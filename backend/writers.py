"""Writing results: CSV with the csv module, GeoPackage and GeoJSON through GDAL/OGR.

Every writer takes results one at a time, so output grows as photos are answered and a stopped run
keeps what it wrote. Points are EPSG:4326 with the columns of :data:`.results.POINT_COLUMNS`; photos
that failed go to an ``errors`` table (GeoPackage), a feature with no geometry (GeoJSON) or a row with
the ``error`` column set (CSV).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TextIO

from .errors import GeoCLIPError
from .results import COLUMN_TYPES, COLUMNS, ERROR_COLUMNS, POINT_COLUMNS, OutputFile, OutputKind, PhotoResult

POINTS_LAYER = "predictions"
ERRORS_LAYER = "errors"
TRUTH_LAYER = "truth_lines"  # EXIF position -> top-1 answer, for photos that carry GPS
ACCURACY_LAYER = "accuracy"
TRUTH_COLUMNS = ("photo", "error_km", "photo_sha256", "run_at")
LAYER_KINDS = {
    POINTS_LAYER: OutputKind.POINTS,
    ERRORS_LAYER: OutputKind.ERRORS,
    TRUTH_LAYER: OutputKind.TRUTH_LINES,
    ACCURACY_LAYER: OutputKind.ACCURACY,
}
FORMATS = {".csv": "CSV", ".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


class CsvWriter:
    def __init__(self, stream: TextIO, model: str = "", run_at: str = "", close_stream: bool = False, area: str = ""):
        self._stream, self._close = stream, close_stream
        self._csv = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
        self._csv.writeheader()
        self.model, self.run_at, self.area = model, run_at, area

    def write(self, result: PhotoResult) -> None:
        if result.skipped:
            return
        for row in result.rows(self.model, self.run_at, self.area):
            self._csv.writerow({k: _csv_value(v) for k, v in row.items()})
        self._stream.flush()

    def close(self) -> None:
        if self._close:
            self._stream.close()

    def outputs(self) -> list[OutputFile]:
        name = getattr(self._stream, "name", None)
        return [OutputFile(OutputKind.POINTS, name)] if self._close and isinstance(name, str) else []


class DiscardWriter:
    """For runs whose per-photo answers are not wanted (an evaluation that only reports its table)."""

    def write(self, result: PhotoResult) -> None:
        pass

    def close(self) -> None:
        pass

    def outputs(self) -> list[OutputFile]:
        return []


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same number
    return value


class OgrWriter:
    """GeoPackage or GeoJSON through OGR. A GeoPackage is appended to, so earlier runs stay."""

    def __init__(self, path: Path, driver_name: str, model: str = "", run_at: str = "", area: str = "", batch: int = 8):
        """``batch``: photos per transaction (the engine's batch size): a crash or kill loses at most
        the photos of one batch, and a rerun answers them again."""
        from osgeo import ogr, osr

        self._ogr = ogr
        self.path, self.model, self.run_at, self.area = Path(path), model, run_at, area
        driver = ogr.GetDriverByName(driver_name)
        if driver is None:
            raise GeoCLIPError(f"GDAL has no {driver_name} driver")
        append = driver_name == "GPKG" and self.path.exists()
        if not append and self.path.exists():
            driver.DeleteDataSource(str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ds = ogr.Open(str(self.path), 1) if append else driver.CreateDataSource(str(self.path))
        if self._ds is None:
            raise GeoCLIPError(f"cannot write {self.path}: {_gdal_error()}")
        wgs84 = osr.SpatialReference()
        wgs84.ImportFromEPSG(4326)
        wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        is_gpkg = driver_name == "GPKG"
        self._columns = POINT_COLUMNS if is_gpkg else COLUMNS
        self._points = self._layer(POINTS_LAYER, ogr.wkbPoint, wgs84, self._columns)
        self._errors = None
        self._truth = None
        if is_gpkg:
            self._errors = self._layer(ERRORS_LAYER, ogr.wkbNone, None, ERROR_COLUMNS)
            self._truth = self._layer(TRUTH_LAYER, ogr.wkbLineString, wgs84, TRUTH_COLUMNS)
        self._batch = max(1, batch)
        self._pending = 0
        self._transactions = is_gpkg
        self._begin()

    def _layer(self, name, geometry_type, srs, columns):
        layer = self._ds.GetLayerByName(name)
        if layer is None:
            options = ["FID=fid"] if self._ds.GetDriver().GetName() == "GPKG" else []
            layer = self._ds.CreateLayer(name, srs, geometry_type, options=options)
            if layer is None:
                raise GeoCLIPError(f"cannot create layer {name} in {self.path}: {_gdal_error()}")
        definition = layer.GetLayerDefn()
        for column in columns:  # also adds columns that a file from an older version lacks
            if definition.GetFieldIndex(column) < 0:
                kind = {int: self._ogr.OFTInteger, float: self._ogr.OFTReal}.get(
                    COLUMN_TYPES[column], self._ogr.OFTString
                )
                layer.CreateField(self._ogr.FieldDefn(column, kind))
        return layer

    def answered_hashes(self) -> set[str]:
        """Content hashes of the photos this file already holds answers for (to resume a run)."""
        found = set()
        for feature in self._points:
            if feature.GetField("photo_sha256"):
                found.add(feature.GetField("photo_sha256"))
        self._points.ResetReading()
        return found

    def _begin(self):
        if self._transactions:
            self._ds.StartTransaction()

    def _commit(self):
        if self._transactions:
            self._ds.CommitTransaction()
        self._pending = 0

    def write(self, result: PhotoResult) -> None:
        ogr = self._ogr
        if result.skipped:
            return
        if not result.ok and self._errors is not None:
            feature = ogr.Feature(self._errors.GetLayerDefn())
            values = {
                "photo": result.photo,
                "error": result.error,
                "photo_sha256": result.sha256,
                "run_at": self.run_at,
            }
            for key, value in values.items():
                if value is not None:
                    feature.SetField(key, value)
            self._errors.CreateFeature(feature)
        else:
            for row in result.rows(self.model, self.run_at, self.area):
                feature = ogr.Feature(self._points.GetLayerDefn())
                for key in self._columns:
                    if row.get(key) is not None:
                        feature.SetField(key, row[key])
                if row.get("lat") is not None:  # a failed photo in GeoJSON: no geometry, error set
                    point = ogr.Geometry(ogr.wkbPoint)
                    point.AddPoint_2D(row["lon"], row["lat"])
                    feature.SetGeometry(point)
                if self._points.CreateFeature(feature) != 0:
                    raise GeoCLIPError(f"cannot write to {self.path}: {_gdal_error()}")
            if self._truth is not None and result.candidates and result.exif_lat is not None:
                self._write_truth_line(result)
        self._pending += 1
        if self._pending >= self._batch:
            self._commit()
            self._begin()

    def _write_truth_line(self, result: PhotoResult) -> None:
        ogr = self._ogr
        top = result.candidates[0]
        line = ogr.Geometry(ogr.wkbLineString)
        line.AddPoint_2D(result.exif_lon, result.exif_lat)
        line.AddPoint_2D(top.lon, top.lat)
        feature = ogr.Feature(self._truth.GetLayerDefn())
        for key, value in (
            ("photo", result.photo),
            ("error_km", result.error_km()),
            ("photo_sha256", result.sha256),
            ("run_at", self.run_at),
        ):
            if value is not None:
                feature.SetField(key, value)
        feature.SetGeometry(line)
        self._truth.CreateFeature(feature)

    def write_table(self, name: str, row: dict) -> None:
        """Append one row to a non-spatial table (e.g. the run's accuracy), creating it as needed."""
        if self._errors is None:  # GeoJSON holds one layer only
            return
        ogr = self._ogr
        layer = self._ds.GetLayerByName(name)
        if layer is None:
            layer = self._ds.CreateLayer(name, None, ogr.wkbNone, options=["FID=fid"])
        definition = layer.GetLayerDefn()
        for key, value in row.items():
            if definition.GetFieldIndex(key) < 0:
                kind = (
                    ogr.OFTReal
                    if isinstance(value, float)
                    else ogr.OFTInteger
                    if isinstance(value, int)
                    else ogr.OFTString
                )
                layer.CreateField(ogr.FieldDefn(key, kind))
        feature = ogr.Feature(layer.GetLayerDefn())
        for key, value in row.items():
            if value is not None:
                feature.SetField(key, value)
        layer.CreateFeature(feature)

    def close(self) -> None:
        if self._ds is not None:
            self._commit()
            self._ds.FlushCache()
            self._ds = None

    def outputs(self) -> list[OutputFile]:
        """The layers of this file that hold something, each with its kind (after :meth:`close`)."""
        if self._errors is None:  # GeoJSON: one layer, the file itself
            return [OutputFile(OutputKind.POINTS, str(self.path))]
        source = self._ogr.Open(str(self.path))
        if source is None:
            return []
        found = []
        for name, kind in LAYER_KINDS.items():
            layer = source.GetLayerByName(name)
            if layer is not None and (kind == OutputKind.POINTS or layer.GetFeatureCount() > 0):
                found.append(OutputFile(kind, str(self.path), layer=name))
        return found


def _gdal_error() -> str:
    from osgeo import gdal

    return gdal.GetLastErrorMsg() or "unknown GDAL error"


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise GeoCLIPError(f"unknown output format {suffix or '(none)'!r}: use .csv, .gpkg or .geojson")
    return FORMATS[suffix]


def open_writer(
    path: str | os.PathLike | None,
    model: str = "",
    run_at: str = "",
    stdout: TextIO | None = None,
    area: str = "",
    batch: int = 8,
):
    """A writer for ``path`` by its extension; CSV to ``stdout`` when there is no path."""
    if not path:
        import sys

        return CsvWriter(stdout or sys.stdout, model, run_at, area=area)
    kind = output_format(path)
    if kind == "CSV":
        return CsvWriter(open(path, "w", newline="", encoding="utf-8"), model, run_at, close_stream=True, area=area)
    return OgrWriter(Path(path), kind, model, run_at, area, batch)
