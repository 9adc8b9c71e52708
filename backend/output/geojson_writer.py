"""Answers as GeoJSON: one layer of candidates, a failed photo as a feature without geometry and with its
error. A GeoJSON file is only valid once closed, so it is written in a fresh private folder beside its target
(:func:`..filelock.staged`: nothing already there, a link included, is written through) and renamed into
place only when it reads back with every feature; a run that fails leaves none."""

from __future__ import annotations

from contextlib import ExitStack

from ..errors import WriteError
from ..filelock import put_in_place, staged
from ..geo import wgs84
from ..results import COLUMN_TYPES, COLUMNS, OutputFile, OutputKind, PhotoResult
from .answer_layers import POINTS_LAYER
from .gdal_messages import gdal_error
from .gpkg_files import field_type
from .ogr_writer import OgrWriter

OUR_COLUMNS = frozenset({"photo", "rank", "probability", "model"})  # what makes an existing file ours


class GeoJsonWriter(OgrWriter):
    DRIVER = "GeoJSON"
    COLUMNS = COLUMNS

    def _open(self) -> None:
        ogr = self._ogr
        self._ds, self._staging = None, ExitStack()
        if self.path.exists():
            self._refuse_foreign()
        driver = ogr.GetDriverByName(self.DRIVER)
        self._partial = self._staging.enter_context(staged(self.path))
        self._ds = driver.CreateDataSource(str(self._partial))
        if self._ds is None:
            raise WriteError(f"cannot write {self.path}: {gdal_error()}")
        self._points = self._ds.CreateLayer(POINTS_LAYER, wgs84(), ogr.wkbPoint, options=[])
        if self._points is None:
            raise WriteError(f"cannot create layer {POINTS_LAYER} in {self.path}: {gdal_error()}")
        for column in COLUMNS:
            definition = ogr.FieldDefn(column, field_type(COLUMN_TYPES.get(column, str)))
            if self._points.CreateField(definition) != 0:
                raise WriteError(f"cannot add column {column} to {self.path}: {gdal_error()}")

    def _refuse_foreign(self) -> None:
        """An existing GeoJSON is replaced only when it has our columns."""
        source = self._ogr.Open(str(self.path), 0)
        if source is None:
            raise WriteError(f"{self.path} exists but GDAL cannot read it; refusing to overwrite it")
        layer = source.GetLayer(0)
        names = set()
        if layer is not None:
            definition = layer.GetLayerDefn()
            names = {definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())}
        if not OUR_COLUMNS <= names:
            raise WriteError(f"{self.path} exists and was not written by GeoCLIP; refusing to overwrite it")

    def _write(self, result: PhotoResult) -> None:
        self._write_points(result)  # a failed photo: one row with its error and no position

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        pass  # one layer per file: regions, areas and query vectors go to GeoPackages only

    def _finish(self) -> None:
        """Close the file (GeoJSON is finished here); rename it into place only if it reads back with every
        feature written."""
        self._ds.FlushCache()
        self._ds = None
        check = self._ogr.Open(str(self._partial))
        count = check.GetLayer(0).GetFeatureCount() if check is not None and check.GetLayerCount() else -1
        check = None
        if count != self._written:
            self._staging.close()
            raise WriteError(f"cannot write {self.path}: it did not read back whole (disk full?); nothing was kept")
        put_in_place(self._partial, self.path)
        self._staging.close()

    def _discard(self) -> None:
        self._ds = None
        self._staging.close()  # the private folder and whatever is in it

    def outputs(self) -> list[OutputFile]:
        """The file itself: GeoJSON holds one layer (after :meth:`close`)."""
        return [OutputFile(OutputKind.POINTS, str(self.path))] if self.path.exists() else []
