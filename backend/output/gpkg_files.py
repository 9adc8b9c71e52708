"""GeoPackages GeoCLIP writes: one way to create, open and fill them, for a run's answers
(:mod:`.gpkg_writer`) and for the location tools' outputs (:mod:`..location.point_embeddings`,
:mod:`..location.similar_places`).

- Ours, or refused: every GeoPackage we make carries a mark in its metadata, and so does every layer and
  table we make in it (:data:`LAYER_MARK`: its name). A run's answers are appended to, in a file marked
  :data:`DATASET_MARK`; a location tool's output is replaced whole, in a file marked :data:`OUTPUT_MARK`
  (its one layer). Another program's file or layer, a symbolic link or a folder is refused, not changed.
- Every write is checked: a failure raises :class:`..errors.WriteError` naming the file and GDAL's reason.
- Writes are grouped in transactions; layers are EPSG:4326 (:func:`.geo.wgs84`), tables have no geometry.
- A location tool's output is written inside a private folder beside its target, read back, and only then
  renamed into place (:func:`write_output`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import GeoCLIPError, WriteError
from ..filelock import put_in_place, refuse_non_file, staged
from ..geo import wgs84
from ..version import __version__
from .gdal_messages import gdal_error, quiet_gdal

DATASET_MARK = "GEOCLIP_QGIS"  # dataset metadata item of every run's GeoPackage (the version)
LAYER_MARK = "GEOCLIP_LAYER"  # layer metadata item of every layer and table we create (its name)
OUTPUT_MARK = "GEOCLIP_OUTPUT"  # dataset metadata item of a location tool's GeoPackage (its layer)
VERSION_MARK = "GEOCLIP_VERSION"  # beside OUTPUT_MARK


def field_type(kind: type) -> int:
    """The OGR field type for values of a Python type; text for any other."""
    from osgeo import ogr

    return {int: ogr.OFTInteger, float: ogr.OFTReal, bytes: ogr.OFTBinary}.get(kind, ogr.OFTString)


class GeoPackage:
    """An open GeoPackage of ours; ``shown`` is the name messages give (the target, when ``path`` is its
    unfinished copy)."""

    def __init__(self, dataset, path: Path, shown: Path):
        self.dataset, self.path, self.shown = dataset, path, shown
        self._in_transaction = False

    @classmethod
    def create(cls, path: str | os.PathLike, marks: Mapping[str, str], shown: str | os.PathLike | None = None):
        """A new GeoPackage with the dataset metadata ``marks``."""
        from osgeo import ogr

        driver = ogr.GetDriverByName("GPKG")
        if driver is None:
            raise GeoCLIPError("GDAL has no GPKG driver")
        path = Path(path)
        shown = Path(shown) if shown is not None else path
        dataset = driver.CreateDataSource(str(path))
        if dataset is None:
            raise WriteError(f"cannot write {shown}: {gdal_error()}")
        for key, value in marks.items():
            dataset.SetMetadataItem(key, value)
        return cls(dataset, path, shown)

    @classmethod
    def open(cls, path: str | os.PathLike) -> GeoPackage:
        """An existing GeoPackage, for update; whose it is was checked before (:func:`refuse_foreign_store`)."""
        from osgeo import ogr

        path = Path(path)
        dataset = ogr.Open(str(path), 1)
        if dataset is None:
            raise WriteError(f"cannot write {path}: {gdal_error()}")
        return cls(dataset, path, path)

    # -- layers ------------------------------------------------------------------------------------

    def layer(self, name: str):
        """The layer or table ``name``, or None."""
        return self.dataset.GetLayerByName(name)

    def create_layer(self, name: str, geometry: int, options: Iterable[str] = ("FID=fid",)):
        """A new layer of ours: EPSG:4326, or a table without coordinate system for ``ogr.wkbNone``."""
        from osgeo import ogr

        srs = None if geometry == ogr.wkbNone else wgs84()
        layer = self.dataset.CreateLayer(name, srs, geometry, options=list(options))
        if layer is None:
            what = "table" if srs is None else "layer"
            raise WriteError(f"cannot create {what} {name} in {self.shown}: {gdal_error()}")
        layer.SetMetadataItem(LAYER_MARK, name)
        return layer

    def ensure_layer(self, name: str, geometry: int, columns: Mapping[str, int], options: Iterable[str] = ("FID=fid",)):
        """Our layer ``name``, made when missing, with every one of ``columns`` (name: OGR field type) it
        lacks added (a file from an older version lacks some). Made or changed, it is synced at once, so its
        spatial index and count triggers exist even if the process is killed before closing."""
        from osgeo import ogr

        layer = self.layer(name)
        changed = layer is None
        if layer is None:
            layer = self.create_layer(name, geometry, options)
        definition = layer.GetLayerDefn()
        for column, kind in columns.items():
            if definition.GetFieldIndex(column) < 0:
                self.add_field(layer, ogr.FieldDefn(column, kind))
                changed = True
        if changed:
            self.sync(layer)
        return layer

    def add_field(self, layer, definition) -> None:
        if layer.CreateField(definition) != 0:
            raise WriteError(f"cannot add column {definition.GetName()} to {self.shown}: {gdal_error()}")

    def add_feature(self, layer, feature) -> None:
        if layer.CreateFeature(feature) != 0:
            raise WriteError(f"cannot write to {self.shown}: {gdal_error()}")

    def sync(self, layer) -> None:
        """Write a layer's feature count, triggers and spatial index now, not when the file closes."""
        if layer.SyncToDisk() != 0:
            raise WriteError(f"cannot write to {self.shown}: {gdal_error()}")

    # -- transactions and closing ------------------------------------------------------------------

    def begin(self) -> None:
        if self.dataset.StartTransaction() != 0:
            raise WriteError(f"cannot write to {self.shown}: {gdal_error()}")
        self._in_transaction = True

    def commit(self) -> None:
        """Commit the transaction; when that fails, roll it back (what was committed before is kept)."""
        self._in_transaction = False
        if self.dataset.CommitTransaction() != 0:
            message = gdal_error()
            self.dataset.RollbackTransaction()
            raise WriteError(f"cannot write to {self.shown}: {message}")

    def rollback(self) -> None:
        if self._in_transaction:
            self._in_transaction = False
            self.dataset.RollbackTransaction()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside in one transaction: committed whole, or rolled back."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def close(self) -> None:
        """Write what GDAL still holds and close the file."""
        if self.dataset is not None:
            self.dataset.FlushCache()
            self.dataset = None

    def abandon(self) -> None:
        """After a failure: drop what was not committed, and close."""
        if self.dataset is not None:
            self.rollback()
            self.dataset = None


def store_true_counts(path: str | os.PathLike, layers: Iterable[str]) -> None:
    """GDAL keeps layer feature counts in memory and writes them when it closes; after a rolled-back
    transaction those include the dropped rows. Store the true counts (when the disk lets us)."""
    from osgeo import ogr

    source = ogr.Open(str(path), 1)
    if source is None:
        return
    for name in layers:
        if source.GetLayerByName(name) is not None:
            count = f'(SELECT COUNT(*) FROM "{name}")'  # nosec B608 - our own layer names, constants
            where = f"lower(table_name) = lower('{name}')"
            source.ExecuteSQL(f"UPDATE gpkg_ogr_contents SET feature_count = {count} WHERE {where}")  # nosec B608
    source = None


# ------------------------------------------------------------------------------- whose file is it


def refuse_foreign_store(path: str | os.PathLike, layers: Iterable[str]) -> None:
    """A GeoPackage a run appends to must carry :data:`DATASET_MARK`, and each of ``layers`` it holds must
    carry our layer mark."""
    from osgeo import ogr

    source = ogr.Open(str(path), 0)
    if source is None:
        raise WriteError(f"{path} exists but GDAL cannot read it; refusing to overwrite it")
    if source.GetMetadataItem(DATASET_MARK) is None:
        raise WriteError(f"{path} was not written by GeoCLIP; refusing to change it: choose another file")
    for name in layers:
        layer = source.GetLayerByName(name)
        if layer is not None and layer.GetMetadataItem(LAYER_MARK) != name:
            raise WriteError(
                f"{path} has a layer {name!r} that GeoCLIP did not make; refusing to change it: choose another file"
            )


def output_is_ours(path: str | os.PathLike, layer: str, legacy_fields: frozenset[str] = frozenset()) -> bool:
    """True for a GeoPackage that a location tool wrote as this kind of output: marked with
    :data:`OUTPUT_MARK` = ``layer`` and holding that one layer. A file from before the mark counts when it
    holds exactly that layer with all of ``legacy_fields``."""
    from osgeo import gdal

    if Path(path).is_symlink():
        return False
    try:
        with quiet_gdal():
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=["GPKG"])
    except RuntimeError:  # GDAL with exceptions on
        dataset = None
    if dataset is None or dataset.GetLayerCount() != 1 or dataset.GetLayer(0).GetName() != layer:
        return False
    mark = dataset.GetMetadataItem(OUTPUT_MARK)
    if mark is not None:
        return mark == layer
    definition = dataset.GetLayer(0).GetLayerDefn()
    fields = {definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())}
    return bool(legacy_fields) and legacy_fields <= fields


def refuse_foreign_output(path: str | os.PathLike, layer: str, legacy_fields: frozenset[str] = frozenset()) -> None:
    """A location tool's GeoPackage about to be replaced must be absent or one it wrote as this output."""
    path = Path(path)
    refuse_non_file(path, "where a GeoPackage would go")
    if path.exists() and not output_is_ours(path, layer, legacy_fields):
        raise WriteError(
            f"{path} exists and is not a GeoPackage of {layer} GeoCLIP wrote; refusing to overwrite it: "
            "choose another file"
        )


# ------------------------------------------------------------------------ a location tool's output


def check_read_back(path: Path, layer: str, count: int) -> None:
    """Read a finished GeoPackage back: it opens and holds ``count`` features (what is on disk)."""
    from osgeo import gdal

    try:
        with quiet_gdal():
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=["GPKG"])
            found = dataset.GetLayerByName(layer) if dataset is not None else None
            if found is None or found.GetFeatureCount() != count:
                raise WriteError(f"cannot write {path.name}: {gdal_error('it did not read back whole')}")
    except RuntimeError as exc:
        raise WriteError(f"cannot write {path.name}: {exc}") from None


def write_output(
    path: str | os.PathLike,
    layer: str,
    fill: Callable[[GeoPackage], None],
    count: int,
    legacy_fields: frozenset[str] = frozenset(),
) -> Path:
    """A location tool's GeoPackage of one layer ``layer``: ``fill`` makes the layer and its ``count``
    features in a new file inside a private folder beside ``path``; it is read back, and renamed over
    ``path`` only when whole and when what is there is still ours (or absent)."""
    path = Path(path)
    refuse_foreign_output(path, layer, legacy_fields)
    with staged(path) as partial:
        gpkg = GeoPackage.create(partial, {OUTPUT_MARK: layer, VERSION_MARK: __version__}, shown=path)
        try:
            fill(gpkg)
        except BaseException:
            gpkg.abandon()
            raise
        gpkg.close()
        check_read_back(partial, layer, count)
        refuse_foreign_output(path, layer, legacy_fields)
        put_in_place(partial, path)
    return path
