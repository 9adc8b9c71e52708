"""Answers in a GeoPackage, the one resumable store: appended to, so earlier runs stay.

Layers (:mod:`.answer_layers`): the candidates as points, failed photos in an ``errors`` table, a line
from each known position to its top-1 answer, and beside the answers their probability by region, their
confidence areas and query vectors, the settings of every run into the file and the run's accuracy.
Answers are committed once per engine batch: a crash or kill loses at most one batch, and a rerun
answers it again. Opening, checking and committing go through :mod:`.gpkg_files`.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import GeoCLIPError, WriteError
from ..geo import geodesic_circle
from ..results import (
    COLUMN_TYPES,
    ERROR_COLUMNS,
    POINT_COLUMNS,
    AnswerKind,
    OutputFile,
    PhotoResult,
    path_text,
)
from ..version import __version__
from .answer_layers import (
    AREA_COLUMNS,
    AREAS_LAYER,
    ERRORS_LAYER,
    FEATURES_LAYER,
    LAYER_KINDS,
    OUR_LAYERS,
    POINTS_LAYER,
    RADII_COLUMNS,
    RADII_LAYER,
    REGIONS_LAYER,
    RUNS_LAYER,
    TRUTH_COLUMNS,
    TRUTH_LAYER,
)
from .answer_writer import ResumableStore
from .gpkg_files import DATASET_MARK, GeoPackage, field_type, refuse_foreign_store, store_true_counts
from .ogr_writer import OgrWriter


def _field_types(columns) -> dict[str, int]:
    return {column: field_type(COLUMN_TYPES.get(column, str)) for column in columns}


def _value_type(value) -> type:
    """The column type a table's new column gets from its first value (a bool counts as an int)."""
    for kind in (float, int, bytes):
        if isinstance(value, kind):
            return kind
    return str


class GeoPackageWriter(OgrWriter, ResumableStore):
    DRIVER = "GPKG"
    COLUMNS = POINT_COLUMNS
    stores_regions = True  # the one format with a regions table

    def __init__(self, path: str | os.PathLike, model: str = "", run_at: str = "", area: str = "", batch: int = 8):
        """``batch``: photos per transaction (the engine's batch size): a crash or kill loses at most the
        photos of one batch, and a rerun answers them again."""
        self._batch = max(1, batch)
        self._gpkg: GeoPackage | None = None
        super().__init__(path, model, run_at, area)

    def _open(self) -> None:
        ogr = self._ogr
        if self.path.exists():
            refuse_foreign_store(self.path, OUR_LAYERS)
            self._gpkg = GeoPackage.open(self.path)
        else:
            self._gpkg = GeoPackage.create(self.path, {DATASET_MARK: __version__})
        self._points = self._gpkg.ensure_layer(POINTS_LAYER, ogr.wkbPoint, _field_types(POINT_COLUMNS))
        self._errors = self._gpkg.ensure_layer(ERRORS_LAYER, ogr.wkbNone, _field_types(ERROR_COLUMNS))
        self._truth = self._gpkg.ensure_layer(TRUTH_LAYER, ogr.wkbLineString, _field_types(TRUTH_COLUMNS))
        # the layers that hold rows, earlier runs' included: what :meth:`outputs` names, without reading
        # the file back once it is written
        self._holding = {POINTS_LAYER} | {
            name for name in LAYER_KINDS if (layer := self._gpkg.layer(name)) is not None and layer.GetFeatureCount()
        }
        self._pending = 0
        self._gpkg.begin()

    # -- resume ------------------------------------------------------------------------------------

    def answered_hashes(self) -> set[str]:
        found = set()
        for feature in self._points:
            if feature.GetField("photo_sha256"):
                found.add(feature.GetField("photo_sha256"))
        self._points.ResetReading()
        return found

    def previous_settings(self) -> dict | None:
        layer = self._gpkg.layer(RUNS_LAYER)
        if layer is None:
            return None
        last = None
        for feature in layer:
            last = feature.items()
        layer.ResetReading()
        return last

    def record_run(self, settings: dict) -> None:
        self.write_table(RUNS_LAYER, settings)
        self._commit()
        self._gpkg.begin()

    def remove_answers(self, kind: AnswerKind) -> None:
        """Only ever in our own layers: the answers of ``kind`` with their regions, areas and query vectors."""
        dataset = self._gpkg.dataset
        found = dataset.ExecuteSQL(f"SELECT DISTINCT photo, kind FROM {POINTS_LAYER}")  # nosec B608 - our layer
        labels = set()
        if found is not None:
            for row in found:
                label = row.GetField("photo") or ""
                if AnswerKind.of_row(row.GetField("kind"), label) is kind:
                    labels.add(label)
            dataset.ReleaseResultSet(found)
        for name in (POINTS_LAYER, REGIONS_LAYER, AREAS_LAYER, RADII_LAYER, FEATURES_LAYER):
            if self._gpkg.layer(name) is not None:
                for label in labels:
                    escaped = label.replace("'", "''")
                    sql = f"DELETE FROM {name} WHERE photo = '{escaped}'"  # nosec B608
                    dataset.ExecuteSQL(sql)  # our own layer names; the one value is quoted above

    # -- writing -----------------------------------------------------------------------------------

    def _add_feature(self, layer, feature) -> None:
        self._gpkg.add_feature(layer, feature)
        self._holding.add(layer.GetName())

    def _commit(self) -> None:
        try:
            self._gpkg.commit()
        except WriteError as exc:
            raise WriteError(
                f"{exc}; the answers committed before are kept, and running the same command again resumes after them"
            ) from None
        for name in OUR_LAYERS:  # counts, triggers and index made whole after every commit
            layer = self._gpkg.layer(name)
            if layer is not None:
                self._gpkg.sync(layer)
        self._pending = 0

    def _write(self, result: PhotoResult) -> None:
        if result.ok:
            self._write_points(result)
            self._write_radii(result)
            if result.candidates and result.known_position is not None:
                self._write_truth_line(result)
        else:
            self._write_error(result)
        self._pending += 1
        if self._pending >= self._batch:
            self._commit()
            self._gpkg.begin()

    def _write_radii(self, result: PhotoResult) -> None:
        """Each distinct place's circle, so the map shows how far its probability reaches."""
        ogr = self._ogr
        places = [c for c in result.candidates if c.radius_km is not None]
        if not places:
            return
        layer = self._gpkg.layer(RADII_LAYER) or self._gpkg.ensure_layer(
            RADII_LAYER, ogr.wkbPolygon, {column: field_type(kind) for column, kind in RADII_COLUMNS.items()}
        )
        photo, _ = path_text(result.photo)
        for place in places:
            feature = ogr.Feature(layer.GetLayerDefn())
            values = {
                "photo": photo,
                "kind": result.kind.value,
                "rank": place.rank,
                "probability": place.probability,
                "radius_km": place.radius_km,
                "place": place.place or None,
                "region": place.region or None,
                "country": place.country or None,
                "photo_sha256": result.sha256,
                "run_at": self.run_at,
            }
            for key, value in values.items():
                if value is not None:
                    feature.SetField(key, value)
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in geodesic_circle(place.lat, place.lon, place.radius_km):
                ring.AddPoint_2D(x, y)
            polygon = ogr.Geometry(ogr.wkbPolygon)
            polygon.AddGeometry(ring)
            feature.SetGeometry(polygon)
            self._add_feature(layer, feature)

    def _write_error(self, result: PhotoResult) -> None:
        feature = self._ogr.Feature(self._errors.GetLayerDefn())
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
        self._add_feature(self._errors, feature)

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
        self._add_feature(self._truth, feature)

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        """An answer's probability by region (:class:`..earth.regions.RegionRow`), its confidence areas
        (:class:`..earth.confidence.ConfidenceArea`) and its query vector (so rasters, areas and "how likely
        here?" can be made later without CLIP)."""
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
        columns = {column: field_type(kind) for column, kind in AREA_COLUMNS.items()}
        layer = self._gpkg.ensure_layer(AREAS_LAYER, ogr.wkbMultiPolygon, columns)
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
            self._add_feature(layer, feature)

    def write_table(self, name: str, row: dict) -> None:
        columns = {key: field_type(_value_type(value)) for key, value in row.items()}
        layer = self._gpkg.ensure_layer(name, self._ogr.wkbNone, columns)
        feature = self._ogr.Feature(layer.GetLayerDefn())
        for key, value in row.items():
            if isinstance(value, bytes):
                feature.SetFieldBinaryFromHexString(key, value.hex())
            elif value is not None:
                feature.SetField(key, value)
        self._add_feature(layer, feature)

    # -- closing -----------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._commit()
        self._gpkg.close()

    def _discard(self) -> None:
        """Drop the uncommitted batch and close; what was committed stays whole, with true counts."""
        if self._gpkg is not None and self._gpkg.dataset is not None:
            self._gpkg.abandon()
            store_true_counts(self.path, OUR_LAYERS)

    def abort(self) -> None:
        """The run failed elsewhere: the answers written so far are committed and kept."""
        try:
            self.close()
        except GeoCLIPError:
            pass  # the first failure is the one to report

    def outputs(self) -> list[OutputFile]:
        """The layers of this file that hold something, each with its kind: known from what this writer
        found when it opened the file and what it wrote since (the file is not read back)."""
        held = [(name, kind) for name, kind in LAYER_KINDS.items() if name in self._holding]
        return [OutputFile(kind, str(self.path), layer=name) for name, kind in held]
