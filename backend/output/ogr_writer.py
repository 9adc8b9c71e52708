"""What the formats written through OGR share (:mod:`.geojson_writer`, :mod:`.gpkg_writer`): one locked
output, GDAL's messages in ours rather than on stderr, each candidate a point feature in EPSG:4326, and
the way a failure closes the output."""

from __future__ import annotations

import os
from abc import abstractmethod
from contextlib import ExitStack
from pathlib import Path

from ..errors import GeoCLIPError, WriteError
from ..filelock import OutputLock
from ..results import PhotoResult
from .answer_writer import AnswerWriter, check_output_path
from .gdal_messages import gdal_error, quiet_gdal


class OgrWriter(AnswerWriter):
    """An answer writer for one OGR format; subclasses open the file, write an answer, finish the file and
    discard what is not whole."""

    DRIVER = ""  # GDAL's name for the format
    COLUMNS: tuple[str, ...] = ()  # of the points layer

    def __init__(self, path: str | os.PathLike, model: str = "", run_at: str = "", area: str = ""):
        from osgeo import ogr

        self._ogr = ogr
        self.path, self.model, self.run_at, self.area = Path(path), model, run_at, area
        if ogr.GetDriverByName(self.DRIVER) is None:
            raise GeoCLIPError(f"GDAL has no {self.DRIVER} driver")
        check_output_path(self.path)
        self._closed = False
        self._written = 0  # point features
        self._held = ExitStack()  # released when the writer closes, however it closes
        self._held.enter_context(OutputLock(self.path))
        # GDAL's own error lines would reach stderr (stdout in QGIS); its messages go into ours instead.
        self._held.enter_context(quiet_gdal())
        try:
            self._open()
        except BaseException:
            self._abandon()
            raise

    @abstractmethod
    def _open(self) -> None:
        """Open or create the file and its layers (the points layer as ``self._points``)."""

    @abstractmethod
    def _write(self, result: PhotoResult) -> None:
        """Write one answer."""

    @abstractmethod
    def _finish(self) -> None:
        """Make the output whole and close it."""

    @abstractmethod
    def _discard(self) -> None:
        """After a failure: close, keeping only what is whole."""

    def _add_feature(self, layer, feature) -> None:
        if layer.CreateFeature(feature) != 0:
            raise WriteError(f"cannot write to {self.path}: {gdal_error()}")

    def write(self, result: PhotoResult) -> None:
        if result.skipped:
            return
        try:
            self._write(result)
        except WriteError:
            self._abandon()
            raise

    def _write_points(self, result: PhotoResult) -> None:
        """The answer's rows as point features; a row without a position gets no geometry."""
        ogr = self._ogr
        for row in result.rows(self.model, self.run_at, self.area):
            feature = ogr.Feature(self._points.GetLayerDefn())
            for key in self.COLUMNS:
                if row.get(key) is not None:
                    feature.SetField(key, row[key])
            if row.get("lat") is not None:
                point = ogr.Geometry(ogr.wkbPoint)
                point.AddPoint_2D(row["lon"], row["lat"])
                feature.SetGeometry(point)
            self._add_feature(self._points, feature)
            self._written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
        except WriteError:
            self._discard()
            raise
        finally:
            self._held.close()

    def abort(self) -> None:
        """The run failed elsewhere: what is not whole is removed."""
        self._abandon()

    def _abandon(self) -> None:
        if not self._closed:
            self._closed = True
            self._discard()
        self._held.close()
