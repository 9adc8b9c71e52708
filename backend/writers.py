"""Writing results: CSV with the csv module, GeoPackage and GeoJSON through GDAL/OGR.

Every writer takes results one at a time, so output grows as photos are answered and a stopped run
keeps what it wrote. Points are EPSG:4326 with the columns of :data:`.results.POINT_COLUMNS`; photos
that failed go to an ``errors`` table (GeoPackage), a feature with no geometry (GeoJSON) or a row with
the ``error`` column set (CSV).

What a writer promises:
- every write and commit is checked; a failure raises :class:`WriteError` (the run stops, exit 2) and
  what was committed before stays valid: a GeoPackage commits once per engine batch and keeps its
  spatial index and feature counts current after every commit, a CSV is cut back to its last whole
  row, a GeoJSON is written beside its target and only renamed into place once it reads back whole;
- one writer per output at a time (:mod:`.filelock`);
- a file, layer or table GeoCLIP did not create is never changed: GeoPackages, their layers and
  GeoTIFFs carry a ``GEOCLIP_*`` metadata mark, a CSV our header, a GeoJSON our columns; anything
  else in the way is refused;
- text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab
  or a carriage return) get a leading ``'`` in CSV.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TextIO

import numpy as np

from . import geo
from .csv_safety import neutralise_formula  # the one rule for every CSV the product writes
from .errors import GeoCLIPError, WriteError
from .filelock import OutputLock
from .gpkg_files import DATASET_MARK, LAYER_MARK
from .results import (
    COLUMN_TYPES,
    COLUMNS,
    ERROR_COLUMNS,
    POINT_COLUMNS,
    AnswerKind,
    OutputFile,
    OutputKind,
    PhotoResult,
    path_text,
)
from .version import __version__

POINTS_LAYER = "predictions"
ERRORS_LAYER = "errors"
TRUTH_LAYER = "truth_lines"  # known position (truth CSV's, else EXIF GPS) -> top-1 answer
ACCURACY_LAYER = "accuracy"
REGIONS_LAYER = "regions"
AREAS_LAYER = "confidence_areas"
FEATURES_LAYER = "answer_features"  # each answer's query vector: rasters and checks later, without CLIP
RUNS_LAYER = "runs"  # the settings of every run into the file, for resuming only like with like
TRUTH_COLUMNS = ("photo", "error_km", "photo_sha256", "photo_bytes_hex", "run_at")
LAYER_KINDS = {
    POINTS_LAYER: OutputKind.POINTS,
    ERRORS_LAYER: OutputKind.ERRORS,
    TRUTH_LAYER: OutputKind.TRUTH_LINES,
    ACCURACY_LAYER: OutputKind.ACCURACY,
    REGIONS_LAYER: OutputKind.REGIONS,
    AREAS_LAYER: OutputKind.CONFIDENCE_AREAS,
}
OUR_LAYERS = (*LAYER_KINDS, RUNS_LAYER, FEATURES_LAYER)
AREA_COLUMNS = {
    "photo": str,
    "kind": str,  # what the answer answers (results.AnswerKind): a map label needs it
    "level": float,
    "area_km2": float,
    "mass": float,
    "cells": int,
    "parts": int,
    "exact_km2": float,  # the smallest area holding the level, before any generalisation
    "smoothing_deg": float,  # generalisation (see confidence.py): 0 for the exact area
    "dropped_parts": int,
    "simplified_deg": float,
    "note": str,  # what was done to the exact area, in words
    "photo_sha256": str,
    "run_at": str,
}
FORMATS = {".csv": "CSV", ".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
TEXT_COLUMNS = frozenset(k for k, kind in COLUMN_TYPES.items() if kind is str)


def _gdal_error() -> str:
    from osgeo import gdal

    return gdal.GetLastErrorMsg() or "unknown GDAL error"


def check_output_path(path: Path) -> None:
    """Refuse an output that cannot be a file before anything is computed; make missing folders."""
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the folder {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise WriteError(f"cannot write {path}: permission denied")


class CsvWriter:
    """CSV to a stream (stdout) or to a file. Rows are rendered first and written whole: if a write
    fails, the file is cut back to its last whole row."""

    HEADER = ",".join(COLUMNS)
    HEADER_START = "photo,rank,lat,lon,probability,"  # every version's CSV starts so

    def __init__(self, target: TextIO | str | os.PathLike, model: str = "", run_at: str = "", area: str = ""):
        self.model, self.run_at, self.area = model, run_at, area
        self.path = None if hasattr(target, "write") else Path(target)
        self._stream = target if self.path is None else None
        self._file = None
        self._lock = None
        if self.path is not None:
            check_output_path(self.path)
            if self.path.exists() and not self._ours(self.path):
                raise WriteError(f"{self.path} exists and was not written by GeoCLIP; refusing to overwrite it")
            self._lock = OutputLock(self.path).acquire()
            try:
                self._file = open(self.path, "wb", buffering=0)  # unbuffered: a failed write is seen at once
            except OSError as exc:
                self._lock.release()
                raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._good = 0  # bytes of whole rows in the file
        self._emit(self.HEADER + "\n")

    @classmethod
    def _ours(cls, path: Path) -> bool:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.readline().startswith(cls.HEADER_START) or path.stat().st_size == 0
        except OSError:
            return False

    def _emit(self, text: str) -> None:
        if self._file is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                written = self._file.write(data)
                data = data[written:]
        except OSError as exc:
            try:
                os.ftruncate(self._file.fileno(), self._good)  # no half row
            except OSError:
                pass
            raise WriteError(
                f"cannot write {self.path}: {exc.strerror or exc}; the rows written before are kept"
            ) from None
        self._good = self._file.tell()

    def write(self, result: PhotoResult) -> None:
        if result.skipped:
            return
        text = io.StringIO()
        rows = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        rows.writerows(
            {k: _csv_value(k, v) for k, v in row.items()} for row in result.rows(self.model, self.run_at, self.area)
        )
        self._emit(text.getvalue())

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                raise WriteError(f"cannot finish {self.path}: {exc.strerror or exc}") from None
            finally:
                self._file = None
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def abort(self) -> None:
        try:
            self.close()  # the rows written are whole: keep them
        except WriteError:
            pass

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        pass  # one table per file: regions, areas and query vectors go to GeoPackages only

    def outputs(self) -> list[OutputFile]:
        return [OutputFile(OutputKind.POINTS, str(self.path))] if self.path is not None else []


class DiscardWriter:
    """For runs whose per-photo answers are not wanted (an evaluation that only reports its table)."""

    def write(self, result: PhotoResult) -> None:
        pass

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def outputs(self) -> list[OutputFile]:
        return []


def _csv_value(key: str, value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same number
    if key in TEXT_COLUMNS and isinstance(value, str):
        return neutralise_formula(value)
    return value


class OgrWriter:
    """GeoPackage or GeoJSON through OGR. A GeoPackage is appended to, so earlier runs stay."""

    def __init__(self, path: Path, driver_name: str, model: str = "", run_at: str = "", area: str = "", batch: int = 8):
        """``batch``: photos per transaction (the engine's batch size): a crash or kill loses at most
        the photos of one batch, and a rerun answers them again."""
        from osgeo import ogr

        self._ogr = ogr
        self.path, self.model, self.run_at, self.area = Path(path), model, run_at, area
        self.is_gpkg = driver_name == "GPKG"
        self._batch = max(1, batch)
        driver = ogr.GetDriverByName(driver_name)
        if driver is None:
            raise GeoCLIPError(f"GDAL has no {driver_name} driver")
        check_output_path(self.path)
        self._lock = OutputLock(self.path).acquire()
        self._ds = None
        # GDAL's own error lines would reach stderr (stdout in QGIS); its messages go into ours instead.
        # The handler stack is per thread: a run opens, writes and closes its writer in one thread.
        from osgeo import gdal

        gdal.PushErrorHandler("CPLQuietErrorHandler")
        self._quiet = True
        try:
            self._open(driver)
        except BaseException:
            self._abandon()
            raise

    def _open(self, driver) -> None:
        ogr = self._ogr
        exists = self.path.exists()
        if exists:
            self._refuse_foreign()
        if self.is_gpkg:
            self._target = self.path
            self._ds = ogr.Open(str(self.path), 1) if exists else driver.CreateDataSource(str(self.path))
        else:  # GeoJSON is only valid once closed: written beside, renamed into place when whole
            self._target = self.path.with_name(self.path.name + ".partial")
            if self._target.exists():
                driver.DeleteDataSource(str(self._target))
            self._ds = driver.CreateDataSource(str(self._target))
        if self._ds is None:
            raise WriteError(f"cannot write {self.path}: {_gdal_error()}")
        if self.is_gpkg and not exists:
            self._ds.SetMetadataItem(DATASET_MARK, __version__)
        wgs84 = geo.wgs84()
        self._columns = POINT_COLUMNS if self.is_gpkg else COLUMNS
        self._points = self._layer(POINTS_LAYER, ogr.wkbPoint, wgs84, self._columns)
        self._errors = self._truth = None
        if self.is_gpkg:
            self._errors = self._layer(ERRORS_LAYER, ogr.wkbNone, None, ERROR_COLUMNS)
            self._truth = self._layer(TRUTH_LAYER, ogr.wkbLineString, wgs84, TRUTH_COLUMNS)
        self._pending = 0
        self._written = 0
        self._begin()

    def _refuse_foreign(self) -> None:
        """An existing file must be ours, and so must every layer of ours it holds."""
        ogr = self._ogr
        source = ogr.Open(str(self.path), 0)
        if source is None:
            raise WriteError(f"{self.path} exists but GDAL cannot read it; refusing to overwrite it")
        if self.is_gpkg:
            if source.GetMetadataItem(DATASET_MARK) is None:
                raise WriteError(f"{self.path} was not written by GeoCLIP; refusing to change it: choose another file")
            for name in OUR_LAYERS:
                layer = source.GetLayerByName(name)
                if layer is not None and layer.GetMetadataItem(LAYER_MARK) != name:
                    raise WriteError(
                        f"{self.path} has a layer {name!r} that GeoCLIP did not make; refusing to change it: "
                        "choose another file"
                    )
        else:
            layer = source.GetLayer(0)
            names = set()
            if layer is not None:
                definition = layer.GetLayerDefn()
                names = {definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())}
            if not {"photo", "rank", "probability", "model"} <= names:
                raise WriteError(f"{self.path} exists and was not written by GeoCLIP; refusing to overwrite it")

    def _layer(self, name, geometry_type, srs, columns):
        layer = self._ds.GetLayerByName(name)
        created = layer is None
        if created:
            options = ["FID=fid"] if self.is_gpkg else []
            layer = self._ds.CreateLayer(name, srs, geometry_type, options=options)
            if layer is None:
                raise WriteError(f"cannot create layer {name} in {self.path}: {_gdal_error()}")
        definition = layer.GetLayerDefn()
        for column in columns:  # also adds columns that a file from an older version lacks
            if definition.GetFieldIndex(column) < 0:
                kind = {int: self._ogr.OFTInteger, float: self._ogr.OFTReal}.get(
                    COLUMN_TYPES.get(column, str), self._ogr.OFTString
                )
                if layer.CreateField(self._ogr.FieldDefn(column, kind)) != 0:
                    raise WriteError(f"cannot add column {column} to {self.path}: {_gdal_error()}")
        if created and self.is_gpkg:
            layer.SetMetadataItem(LAYER_MARK, name)
            self._sync(layer)  # spatial index and count triggers now, not at close: a crash keeps them
        return layer

    def _sync(self, layer) -> None:
        if layer.SyncToDisk() != 0:
            raise WriteError(f"cannot write to {self.path}: {_gdal_error()}")

    # -- resume ------------------------------------------------------------------------------------

    def answered_hashes(self) -> set[str]:
        """Content hashes of the photos this file already holds answers for (to resume a run)."""
        if not self.is_gpkg:
            return set()
        found = set()
        for feature in self._points:
            if feature.GetField("photo_sha256"):
                found.add(feature.GetField("photo_sha256"))
        self._points.ResetReading()
        return found

    def previous_settings(self) -> dict | None:
        """The settings of the last run into this file (None for a new file)."""
        layer = self._ds.GetLayerByName(RUNS_LAYER) if self.is_gpkg else None
        if layer is None:
            return None
        last = None
        for feature in layer:
            last = feature.items()
        layer.ResetReading()
        return last

    def record_run(self, settings: dict) -> None:
        """Store this run's settings (committed at once, so a killed run's rows are explained too)."""
        if self.is_gpkg:
            self.write_table(RUNS_LAYER, settings)
            self._commit()
            self._begin()

    def remove_answers(self, kind: AnswerKind) -> None:
        """Delete this file's answers of ``kind`` (a superseded joint answer), with their regions, areas
        and query vectors; only ever in our own layers."""
        if not self.is_gpkg:
            return
        found = self._ds.ExecuteSQL(f"SELECT DISTINCT photo, kind FROM {POINTS_LAYER}")  # nosec B608 - our layer
        labels = set()
        if found is not None:
            for row in found:
                label = row.GetField("photo") or ""
                if AnswerKind.of_row(row.GetField("kind"), label) is kind:
                    labels.add(label)
            self._ds.ReleaseResultSet(found)
        for name in (POINTS_LAYER, REGIONS_LAYER, AREAS_LAYER, FEATURES_LAYER):
            if self._ds.GetLayerByName(name) is not None:
                for label in labels:
                    escaped = label.replace("'", "''")
                    sql = f"DELETE FROM {name} WHERE photo = '{escaped}'"  # nosec B608
                    self._ds.ExecuteSQL(sql)  # our own layer names; the one value is quoted above

    # -- writing -----------------------------------------------------------------------------------

    def _begin(self):
        if self.is_gpkg and self._ds.StartTransaction() != 0:
            raise WriteError(f"cannot write to {self.path}: {_gdal_error()}")

    def _commit(self):
        if self.is_gpkg:
            if self._ds.CommitTransaction() != 0:
                message = _gdal_error()
                self._ds.RollbackTransaction()
                raise WriteError(
                    f"cannot write to {self.path}: {message}; the answers committed before are kept, and running "
                    "the same command again resumes after them"
                )
            for name in OUR_LAYERS:  # counts, triggers and index made whole after every commit
                layer = self._ds.GetLayerByName(name)
                if layer is not None:
                    self._sync(layer)
        self._pending = 0

    def _create(self, layer, feature) -> None:
        if layer.CreateFeature(feature) != 0:
            raise WriteError(f"cannot write to {self.path}: {_gdal_error()}")

    def write(self, result: PhotoResult) -> None:
        if result.skipped:
            return
        try:
            self._write(result)
        except WriteError:
            self._abandon()
            raise
        self._pending += 1
        if self._pending >= self._batch:
            try:
                self._commit()
                self._begin()
            except WriteError:
                self._abandon()
                raise

    def _write(self, result: PhotoResult) -> None:
        ogr = self._ogr
        if not result.ok and self._errors is not None:
            feature = ogr.Feature(self._errors.GetLayerDefn())
            photo, photo_bytes_hex = path_text(result.photo)
            values = {
                "photo": photo,
                "error": result.error,
                "photo_sha256": result.sha256,
                "photo_bytes_hex": photo_bytes_hex,
                "run_at": self.run_at,
            }
            for key, value in values.items():
                if value is not None:
                    feature.SetField(key, value)
            self._create(self._errors, feature)
            return
        for row in result.rows(self.model, self.run_at, self.area):
            feature = ogr.Feature(self._points.GetLayerDefn())
            for key in self._columns:
                if row.get(key) is not None:
                    feature.SetField(key, row[key])
            if row.get("lat") is not None:  # a failed photo in GeoJSON: no geometry, error set
                point = ogr.Geometry(ogr.wkbPoint)
                point.AddPoint_2D(row["lon"], row["lat"])
                feature.SetGeometry(point)
            self._create(self._points, feature)
            self._written += 1
        if self._truth is not None and result.candidates and result.known_position is not None:
            self._write_truth_line(result)

    def _write_truth_line(self, result: PhotoResult) -> None:
        ogr = self._ogr
        top = result.candidates[0]
        line = ogr.Geometry(ogr.wkbLineString)
        lat, lon = result.known_position
        line.AddPoint_2D(lon, lat)
        line.AddPoint_2D(top.lon, top.lat)
        feature = ogr.Feature(self._truth.GetLayerDefn())
        photo, photo_bytes_hex = path_text(result.photo)
        values = (
            ("photo", photo),
            ("error_km", result.error_km()),
            ("photo_sha256", result.sha256),
            ("photo_bytes_hex", photo_bytes_hex),
            ("run_at", self.run_at),
        )
        for key, value in values:
            if value is not None:
                feature.SetField(key, value)
        feature.SetGeometry(line)
        self._create(self._truth, feature)

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        """What a GeoPackage keeps beside an answer's candidates: its probability by region
        (:class:`.regions.RegionRow`), its confidence areas (:class:`.confidence.ConfidenceArea`) and
        its query vector (so rasters, areas and "how likely here?" can be made later without CLIP)."""
        if not self.is_gpkg:
            return
        photo, _ = path_text(result.photo)
        for row in regions:
            self.write_table(
                REGIONS_LAYER,
                {
                    "photo": photo,
                    "level": row.level,
                    "region": row.region,
                    "country": row.country,
                    "country_code": row.country_code,
                    "probability": float(row.probability),
                    "rank": int(row.rank),
                    "photo_sha256": result.sha256,
                    "run_at": self.run_at,
                },
            )
        if areas:
            self._write_areas(photo, result.sha256, areas, result.kind)
        if result.feature is not None:
            vector = np.asarray(result.feature, dtype="<f4")
            self.write_table(
                FEATURES_LAYER,
                {
                    "photo": photo,
                    "photo_sha256": result.sha256,
                    "run_at": self.run_at,
                    "dimensions": int(vector.size),
                    "feature": vector.tobytes(),
                },
            )

    def _write_areas(self, photo: str, sha256: str | None, areas, answer_kind: AnswerKind) -> None:
        ogr = self._ogr
        layer = self._ds.GetLayerByName(AREAS_LAYER)
        if layer is None:
            layer = self._ds.CreateLayer(AREAS_LAYER, geo.wgs84(), ogr.wkbMultiPolygon, options=["FID=fid"])
            if layer is None:
                raise WriteError(f"cannot create layer {AREAS_LAYER} in {self.path}: {_gdal_error()}")
            layer.SetMetadataItem(LAYER_MARK, AREAS_LAYER)
        definition = layer.GetLayerDefn()
        # every column for a new layer; for one an earlier version wrote, the columns it lacks
        missing = [c for c in AREA_COLUMNS if definition.GetFieldIndex(c) < 0]
        for column in missing:
            kind = {int: ogr.OFTInteger, float: ogr.OFTReal}.get(AREA_COLUMNS[column], ogr.OFTString)
            if layer.CreateField(ogr.FieldDefn(column, kind)) != 0:
                raise WriteError(f"cannot add column {column} to {self.path}: {_gdal_error()}")
        if missing:
            self._sync(layer)
        for area in areas:
            feature = ogr.Feature(layer.GetLayerDefn())
            values = {
                "photo": photo,
                "kind": answer_kind.value,
                "level": float(area.level),
                "area_km2": float(area.area_km2),
                "mass": float(area.mass),
                "cells": int(area.cells),
                "parts": int(area.parts),
                "exact_km2": float(area.exact_km2) if area.exact_km2 == area.exact_km2 else None,
                "smoothing_deg": float(area.smoothing_deg),
                "dropped_parts": int(area.dropped_parts),
                "simplified_deg": float(area.simplified_deg),
                "note": area.note or None,
                "photo_sha256": sha256,
                "run_at": self.run_at,
            }
            for key, value in values.items():
                if value is not None:
                    feature.SetField(key, value)
            geometry = ogr.CreateGeometryFromWkt(area.wkt)
            if geometry is not None:
                feature.SetGeometry(ogr.ForceToMultiPolygon(geometry))
            self._create(layer, feature)

    def write_table(self, name: str, row: dict) -> None:
        """Append one row to a non-spatial table of ours (the run's accuracy, its settings), creating it."""
        if not self.is_gpkg:  # GeoJSON holds one layer only
            return
        ogr = self._ogr
        layer = self._ds.GetLayerByName(name)
        if layer is None:
            layer = self._ds.CreateLayer(name, None, ogr.wkbNone, options=["FID=fid"])
            if layer is None:
                raise WriteError(f"cannot create table {name} in {self.path}: {_gdal_error()}")
            layer.SetMetadataItem(LAYER_MARK, name)
            self._sync(layer)  # its count triggers now, not at close
        definition = layer.GetLayerDefn()
        for key, value in row.items():
            if definition.GetFieldIndex(key) < 0:
                kind = (
                    ogr.OFTReal
                    if isinstance(value, float)
                    else ogr.OFTInteger
                    if isinstance(value, int)
                    else ogr.OFTBinary
                    if isinstance(value, bytes)
                    else ogr.OFTString
                )
                if layer.CreateField(ogr.FieldDefn(key, kind)) != 0:
                    raise WriteError(f"cannot add column {key} to {self.path}: {_gdal_error()}")
        feature = ogr.Feature(layer.GetLayerDefn())
        for key, value in row.items():
            if isinstance(value, bytes):
                feature.SetFieldBinaryFromHexString(key, value.hex())
            elif value is not None:
                feature.SetField(key, value)
        self._create(layer, feature)

    # -- closing -----------------------------------------------------------------------------------

    def _abandon(self) -> None:
        """After a failure: drop the uncommitted batch, close, leave only what is whole."""
        if self._ds is not None:
            if self.is_gpkg:
                self._ds.RollbackTransaction()
            self._ds = None
            if self.is_gpkg:
                self._recount()
            else:
                Path(self._target).unlink(missing_ok=True)
        self._release()

    def _recount(self) -> None:
        """GDAL keeps layer feature counts in memory and writes them when it closes; after a rolled-back
        batch those include the dropped rows. Store the true counts (when the disk lets us)."""
        source = self._ogr.Open(str(self.path), 1)
        if source is None:
            return
        for name in OUR_LAYERS:
            if source.GetLayerByName(name) is not None:
                count = f'(SELECT COUNT(*) FROM "{name}")'  # nosec B608 - our own layer names, constants
                where = f"lower(table_name) = lower('{name}')"
                source.ExecuteSQL(f"UPDATE gpkg_ogr_contents SET feature_count = {count} WHERE {where}")  # nosec B608
        source = None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if getattr(self, "_quiet", False):
            from osgeo import gdal

            gdal.PopErrorHandler()
            self._quiet = False

    def abort(self) -> None:
        """The run failed elsewhere: a GeoPackage keeps the photos written so far, a GeoJSON is removed."""
        try:
            if self.is_gpkg:
                self.close()
                return
        except GeoCLIPError:
            pass  # the first failure is the one to report
        self._abandon()

    def close(self) -> None:
        if self._ds is None:
            return
        try:
            self._commit()
            self._ds.FlushCache()
            self._ds = None  # closes the file (GeoJSON is finished here)
            if not self.is_gpkg:
                self._finish_geojson()
        except WriteError:
            self._abandon()
            raise
        finally:
            self._release()

    def _finish_geojson(self) -> None:
        """Rename the GeoJSON into place only if it reads back with every feature written."""
        check = self._ogr.Open(str(self._target))
        count = check.GetLayer(0).GetFeatureCount() if check is not None and check.GetLayerCount() else -1
        check = None
        if count != self._written:
            Path(self._target).unlink(missing_ok=True)
            raise WriteError(f"cannot write {self.path}: it did not read back whole (disk full?); nothing was kept")
        os.replace(self._target, self.path)

    def outputs(self) -> list[OutputFile]:
        """The layers of this file that hold something, each with its kind (after :meth:`close`)."""
        if not self.is_gpkg:  # GeoJSON: one layer, the file itself
            return [OutputFile(OutputKind.POINTS, str(self.path))] if self.path.exists() else []
        source = self._ogr.Open(str(self.path))
        if source is None:
            return []
        found = []
        for name, kind in LAYER_KINDS.items():
            layer = source.GetLayerByName(name)
            if layer is not None and (kind == OutputKind.POINTS or layer.GetFeatureCount() > 0):
                found.append(OutputFile(kind, str(self.path), layer=name))
        return found


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
        return CsvWriter(path, model, run_at, area=area)
    return OgrWriter(Path(path), kind, model, run_at, area, batch)
