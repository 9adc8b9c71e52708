"""Location embeddings for point files and tables: read points, embed them, write the vectors.

Points come from any OGR vector file or a CSV (reprojected to EPSG:4326), or from plain arrays, with
their attributes in input order (:class:`PointTable`). Their features come from :mod:`.location_features`:
**unit-normalised, as in the model**, so the dot product of two vectors is their cosine similarity;
optionally with their first principal components.

Outputs: a GeoPackage copy of the points (EPSG:4326; the vector as JSON text), and NumPy ``.npz``
(Parquet where pyarrow is installed) for machine-learning work. Each file is written inside a fresh
private folder beside its target and renamed over it when complete (:func:`..filelock.staged`). A file
already at an output's name is replaced only when GeoCLIP made it as that kind of output (a GeoPackage
with the ``GEOCLIP_OUTPUT`` mark, a .npz with exactly our arrays, a Parquet file with our columns);
another program's file, a GeoCLIP run of another kind or a symbolic link is refused and left as it is.
Nothing here imports Qt or QGIS.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..earth.evaluation import LAT_COLUMNS, LON_COLUMNS
from ..errors import WriteError
from ..filelock import put_in_place, refuse_non_file, staged
from ..geo import transform_to_wgs84
from ..model.gallery import CHUNK
from ..output.gpkg_files import GeoPackage, refuse_foreign_output, write_output
from ..progress import ProgressCallback, ShouldStop, Stage, stop_check
from ..version import __version__
from .location_features import (
    FEATURE_DIM,
    PCA_SAMPLE,
    LocationError,
    LocationModel,
    PrincipalComponents,
    canonical_lat_lon,
    fit_pca,
)

EMBEDDING_FIELD = "embedding"
SOURCE_ID_FIELD = "source_id"
POINTS_LAYER = "embeddings"
POINTS_LEGACY_FIELDS = frozenset({SOURCE_ID_FIELD, EMBEDDING_FIELD})  # a file from before the GEOCLIP_OUTPUT mark
NPZ_ARRAYS = frozenset({"ids", "lat", "lon", "embeddings", "model"})
NPZ_PCA_ARRAYS = frozenset({"pcs", "pca_mean", "pca_components"})
PARQUET_COLUMNS = frozenset({"id", "lat", "lon", "embedding"})


# ---------------------------------------------------------------------------------------- point tables

FIELD_KINDS = ("integer", "integer64", "real", "string", "date", "time", "datetime", "boolean")


@dataclass
class PointTable:
    """Points in EPSG:4326 with the attributes of the layer they came from, in input order.

    ``ids``: the source's feature ids (FID) for vector layers, the 1-based data row for CSV files, or
    the values of a chosen id field. ``fields``: (name, kind) with kind one of :data:`FIELD_KINDS`;
    ``rows``: one tuple of attribute values per point (dates and times as text OGR reads back).
    """

    ids: np.ndarray
    lat: np.ndarray  # float64 degrees
    lon: np.ndarray
    fields: list[tuple[str, str]] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    skipped: int = 0  # features without a usable position
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.lat.shape[0])


def points_from_arrays(
    ids, lat, lon, fields: Sequence[tuple[str, str]] = (), rows: Sequence[tuple] = (), source: str = ""
) -> PointTable:
    """A :class:`PointTable` from plain arrays; longitudes are wrapped into [-180, 180)."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    ids = np.asarray(ids).reshape(-1)
    if not (ids.shape == lat.shape == lon.shape):
        raise LocationError(f"ids, lat and lon must have one value per point ({ids.size}, {lat.size}, {lon.size})")
    if ids.dtype.kind not in "iu" and ids.dtype.kind != "U":
        ids = ids.astype(str)  # fixed-width text: loads from .npz without pickle
    if (rows or fields) and len(rows) != lat.size:
        raise LocationError(f"{len(rows)} attribute rows for {lat.size} points")
    for name, kind in fields:
        if kind not in FIELD_KINDS:
            raise LocationError(f"field {name!r} has kind {kind!r}; use one of {', '.join(FIELD_KINDS)}")
    positions = canonical_lat_lon(np.stack([lat, lon], axis=1)) if lat.size else np.empty((0, 2))
    return PointTable(
        ids.astype(np.int64) if ids.dtype.kind in "iu" else ids,
        positions[:, 0],
        positions[:, 1],
        list(fields),
        [tuple(r) for r in rows] if rows else [() for _ in range(lat.size)],
        source=source,
    )


def _ogr_kind(defn) -> str:
    from osgeo import ogr

    kind = defn.GetType()
    if kind == ogr.OFTInteger:
        return "boolean" if defn.GetSubType() == ogr.OFSTBoolean else "integer"
    return {
        ogr.OFTInteger64: "integer64",
        ogr.OFTReal: "real",
        ogr.OFTDate: "date",
        ogr.OFTTime: "time",
        ogr.OFTDateTime: "datetime",
    }.get(kind, "string")


def _ogr_value(feature, index: int, kind: str):
    if not feature.IsFieldSetAndNotNull(index):
        return None
    if kind in ("integer", "integer64", "boolean"):
        return feature.GetFieldAsInteger64(index)
    if kind == "real":
        return feature.GetFieldAsDouble(index)
    return feature.GetFieldAsString(index)


def _find_field(names: list[str], wanted: str | None, candidates: tuple[str, ...], source) -> int | None:
    lowered = [n.lower() for n in names]
    if wanted:
        if wanted.lower() not in lowered:
            raise LocationError(f"{source}: no field {wanted!r} (fields: {', '.join(names) or 'none'})")
        return lowered.index(wanted.lower())
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    return None


def _parse_degree(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_points(
    path: str | os.PathLike,
    layer: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    id_field: str | None = None,
) -> PointTable:
    """Points of a vector file (any OGR format) or a CSV, reprojected to EPSG:4326 with OGR.

    Positions come from ``lat_column``/``lon_column`` when given (degrees, EPSG:4326), else from the
    layer's point geometry, else from columns named as in :data:`..earth.evaluation.LAT_COLUMNS` and
    :data:`..earth.evaluation.LON_COLUMNS` (any case). CSV columns are read as text (so codes such as "01234"
    survive), unless a ``.csvt`` file beside the CSV gives their types. Features without a position are
    skipped and counted; a layer without a coordinate system is taken as EPSG:4326 (noted).
    """
    from osgeo import gdal, ogr

    path = Path(path)
    if not path.exists():
        raise LocationError(f"no such file: {path}")
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    if dataset is None:
        raise LocationError(f"cannot open {path} as a vector file or CSV: {gdal.GetLastErrorMsg() or 'unknown format'}")
    source = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    if source is None:
        names = [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]
        raise LocationError(f"{path}: no layer {layer!r} (layers: {', '.join(names) or 'none'})")
    defn = source.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    kinds = [_ogr_kind(defn.GetFieldDefn(i)) for i in range(defn.GetFieldCount())]
    id_index = _find_field(names, id_field, (), path) if id_field else None
    notes: list[str] = []

    from_columns = bool(lat_column or lon_column)
    if from_columns and not (lat_column and lon_column):
        raise LocationError("give both a latitude and a longitude column")
    geometry_kind = ogr.GT_Flatten(source.GetGeomType())
    if not from_columns and geometry_kind == ogr.wkbNone:
        from_columns = True
    if from_columns:
        lat_index = _find_field(names, lat_column, LAT_COLUMNS, path)
        lon_index = _find_field(names, lon_column, LON_COLUMNS, path)
        if lat_index is None or lon_index is None:
            raise LocationError(
                f"{path}: no point geometry and no latitude/longitude columns (looked for "
                f"{', '.join(LAT_COLUMNS)} and {', '.join(LON_COLUMNS)}; found {', '.join(names)})"
            )
    elif geometry_kind not in (ogr.wkbPoint, ogr.wkbMultiPoint, ogr.wkbUnknown):
        raise LocationError(
            f"{path}: layer {source.GetName()!r} holds {ogr.GeometryTypeToName(geometry_kind)} "
            "geometries; the location tools need points (make centroids first)"
        )

    transform = None
    if not from_columns:
        srs = source.GetSpatialRef()
        if srs is None:
            notes.append(f"{path.name} has no coordinate system: positions taken as EPSG:4326")
        transform = transform_to_wgs84(srs)

    ids, lats, lons, rows = [], [], [], []
    skipped = 0
    for feature in source:
        if from_columns:
            lat = _parse_degree(feature.GetField(lat_index)) if feature.IsFieldSetAndNotNull(lat_index) else None
            lon = _parse_degree(feature.GetField(lon_index)) if feature.IsFieldSetAndNotNull(lon_index) else None
        else:
            lat = lon = None
            geometry = feature.GetGeometryRef()
            if geometry is not None and not geometry.IsEmpty():
                flat = ogr.GT_Flatten(geometry.GetGeometryType())
                if flat == ogr.wkbMultiPoint and geometry.GetGeometryCount() == 1:
                    geometry = geometry.GetGeometryRef(0)
                    flat = ogr.wkbPoint
                if flat != ogr.wkbPoint:
                    raise LocationError(
                        f"{path}: feature {feature.GetFID()} is a {ogr.GeometryTypeToName(flat)}, not a point"
                    )
                geometry = geometry.Clone()
                if transform is not None and geometry.Transform(transform) != 0:
                    geometry = None
                if geometry is not None:
                    lon, lat = geometry.GetX(), geometry.GetY()
        if lat is None or lon is None or abs(lat) > 90:
            skipped += 1
            continue
        ids.append(feature.GetField(id_index) if id_index is not None else feature.GetFID())
        lats.append(lat)
        lons.append(lon)
        rows.append(tuple(_ogr_value(feature, i, kind) for i, kind in enumerate(kinds)))
    if skipped:
        notes.append(f"{skipped} feature(s) without a usable position were skipped")
    table = points_from_arrays(
        np.array(ids) if ids else np.empty(0, dtype=np.int64),
        lats,
        lons,
        list(zip(names, kinds)),
        rows,
        source=str(path),
    )
    table.skipped, table.notes = skipped, notes
    return table


# ---------------------------------------------------------------------------------- point embeddings


@dataclass
class PointEmbeddings:
    """Points and their location features (unit-normalised as in the model), with optional PCA."""

    table: PointTable
    embeddings: np.ndarray  # (N, 512) float32, unit length
    model: str = ""
    pca: PrincipalComponents | None = None
    components: np.ndarray | None = None  # (N, k) float32: the first k principal components

    def __len__(self) -> int:
        return len(self.table)


def embed_table(
    model: LocationModel,
    table: PointTable,
    pca_components: int = 0,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> PointEmbeddings:
    """Location features (float32, unit length) for every point; with ``pca_components`` also the first
    principal components, fitted on these points (a seeded sample of :data:`PCA_SAMPLE` when more)."""
    if not len(table):
        raise LocationError(f"no points with a position in {table.source or 'the input'}")
    positions = np.stack([table.lat, table.lon], axis=1)
    embeddings = model.encode(positions, progress, should_stop)
    result = PointEmbeddings(table, embeddings, model.label)
    if pca_components:
        result.pca = fit_pca(embeddings, pca_components, PCA_SAMPLE)
        result.components = result.pca.project(embeddings)
    return result


def embedding_json(vector: np.ndarray) -> str:
    """A vector as a JSON array of numbers; 9 significant digits read back as the same float32."""
    return "[" + ",".join(f"{v:.9g}" for v in np.asarray(vector, dtype=np.float32).tolist()) + "]"


def embedding_from_json(text: str) -> np.ndarray:
    return np.asarray(json.loads(text), dtype=np.float32)


OGR_TYPES = {
    "integer": ("OFTInteger", None),
    "integer64": ("OFTInteger64", None),
    "real": ("OFTReal", None),
    "string": ("OFTString", None),
    "date": ("OFTDate", None),
    "time": ("OFTTime", None),
    "datetime": ("OFTDateTime", None),
    "boolean": ("OFTInteger", "OFSTBoolean"),
}


# ------------------------------------------------------------------------------- whose file is it


def _refused(path: Path, kind: str) -> WriteError:
    return WriteError(f"{path} exists and is not a {kind} GeoCLIP wrote; refusing to overwrite it: choose another file")


def npz_is_ours(path: str | os.PathLike) -> bool:
    """True for a .npz of location embeddings GeoCLIP wrote: exactly our arrays, nothing else."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    arrays = {name[: -len(".npy")] for name in names if name.endswith(".npy")}
    return len(arrays) == len(names) and NPZ_ARRAYS <= arrays <= NPZ_ARRAYS | NPZ_PCA_ARRAYS


def parquet_is_ours(path: str | os.PathLike) -> bool:
    """True for a Parquet table of location embeddings GeoCLIP wrote: our columns, nothing else."""
    if not parquet_available():
        return False
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(str(path)).names)
    except Exception:  # pyarrow's errors for a file that is no Parquet (ArrowInvalid, OSError...)
        return False
    return PARQUET_COLUMNS <= names and all(n in PARQUET_COLUMNS or re.fullmatch(r"pc\d+", n) for n in names)


def refuse_foreign_outputs(gpkg=None, npz=None, parquet=None) -> None:
    """Refuse, before any work, an output name held by a file these tools did not write as that kind."""
    if gpkg:
        refuse_foreign_output(gpkg, POINTS_LAYER, POINTS_LEGACY_FIELDS)
    for target, ours, kind in ((npz, npz_is_ours, ".npz of embeddings"), (parquet, parquet_is_ours, "Parquet table")):
        if target:
            target = Path(target)
            refuse_non_file(target, f"where a {kind} would go")
            if target.exists() and not ours(target):
                raise _refused(target, kind)


def write_points_gpkg(
    result: PointEmbeddings,
    path: str | os.PathLike,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """A GeoPackage copy of the points (layer ``embeddings``, EPSG:4326, input order) with the source's
    fields, ``source_id`` (the ids of the .npz), ``embedding`` and ``pc1..pcN``.

    ``embedding`` is JSON text (an array of 512 numbers, OGR's JSON subtype), not a BLOB: QGIS reads it as
    an array usable in expressions, SQLite's json functions and every GeoPackage reader can use it, and 9
    significant digits give back the float32 values exactly. For bulk work the .npz is smaller and faster.
    """
    table = result.table
    taken = {name.lower() for name, _ in table.fields}
    added = [SOURCE_ID_FIELD, EMBEDDING_FIELD]
    added += [f"pc{i + 1}" for i in range(result.components.shape[1])] if result.components is not None else []
    clash = [name for name in added if name.lower() in taken]
    if clash:
        raise LocationError(f"the input already has field(s) {', '.join(clash)}; rename them first")
    return write_output(
        path,
        POINTS_LAYER,
        lambda gpkg: _fill_points_gpkg(gpkg, result, added, taken, progress, should_stop),
        len(table),
        POINTS_LEGACY_FIELDS,
    )


def _fill_points_gpkg(gpkg: GeoPackage, result: PointEmbeddings, added, taken, progress, should_stop) -> None:
    from osgeo import ogr

    table = result.table
    # A source field called "fid" (common in CSVs) would collide with the GeoPackage's own id column.
    fid_column = next(name for name in ("fid", "ogc_fid", "gpkg_fid") if name not in taken)
    layer = gpkg.create_layer(POINTS_LAYER, ogr.wkbPoint, ["SPATIAL_INDEX=YES", f"FID={fid_column}"])
    definitions = []
    for name, kind in table.fields:
        type_name, subtype = OGR_TYPES[kind]
        defn = ogr.FieldDefn(name, getattr(ogr, type_name))
        if subtype:
            defn.SetSubType(getattr(ogr, subtype))
        definitions.append(defn)
    definitions.append(
        ogr.FieldDefn(SOURCE_ID_FIELD, ogr.OFTInteger64 if table.ids.dtype.kind in "iu" else ogr.OFTString)
    )
    vector_defn = ogr.FieldDefn(EMBEDDING_FIELD, ogr.OFTString)
    vector_defn.SetSubType(ogr.OFSTJSON)
    definitions.append(vector_defn)
    definitions += [ogr.FieldDefn(name, ogr.OFTReal) for name in added[2:]]
    for defn in definitions:  # fields are then set by position, so every one must exist
        try:
            gpkg.add_field(layer, defn)
        except WriteError:  # a name a GeoPackage cannot take (two that differ only in case...)
            raise LocationError(f"cannot create field {defn.GetName()!r} in a GeoPackage; rename it first") from None
    layer_defn = layer.GetLayerDefn()
    first_added = len(table.fields)
    stage = Stage(progress, "Writing the GeoPackage", len(table), "points")
    with gpkg.transaction():
        for index in range(len(table)):
            if index % CHUNK == 0:
                stop_check(should_stop)
                stage.update(index)
            feature = ogr.Feature(layer_defn)
            for column, value in enumerate(table.rows[index]):
                if value is not None:
                    feature.SetField(column, value)
            source_id = table.ids[index]
            feature.SetField(first_added, int(source_id) if table.ids.dtype.kind in "iu" else str(source_id))
            feature.SetField(first_added + 1, embedding_json(result.embeddings[index]))
            if result.components is not None:
                for k, value in enumerate(result.components[index].tolist()):
                    feature.SetField(first_added + 2 + k, float(value))
            point = ogr.Geometry(ogr.wkbPoint)
            point.AddPoint_2D(float(table.lon[index]), float(table.lat[index]))
            feature.SetGeometry(point)
            gpkg.add_feature(layer, feature)
    stage.update(len(table))


def write_npz(result: PointEmbeddings, path: str | os.PathLike) -> Path:
    """``ids``, ``lat``, ``lon`` and ``embeddings`` (N, 512) float32 (unit length, as in the model);
    with PCA also ``pcs``, ``pca_mean`` and ``pca_components``. Loads with ``allow_pickle=False``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "ids": result.table.ids,
        "lat": result.table.lat,
        "lon": result.table.lon,
        "embeddings": result.embeddings,
        "model": np.array(result.model),
    }
    if result.pca is not None:
        arrays.update(pcs=result.components, pca_mean=result.pca.mean, pca_components=result.pca.components)
    refuse_foreign_outputs(npz=path)
    with staged(path) as partial:
        try:
            with open(partial, "wb") as handle:  # a file handle keeps numpy from appending another .npz
                np.savez(handle, **arrays)
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        refuse_foreign_outputs(npz=path)
        put_in_place(partial, path)
    return path


def parquet_available() -> bool:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _require_parquet() -> None:
    if not parquet_available():
        raise LocationError(
            "Parquet output needs pyarrow (pip install 'pyarrow<18' keeps NumPy 1.x); "
            "the .npz output needs nothing more"
        )


def write_parquet(result: PointEmbeddings, path: str | os.PathLike) -> Path:
    """``id``, ``lat``, ``lon``, ``embedding`` (fixed-size list of 512 float32) and ``pc1..pcN``."""
    _require_parquet()
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(result.embeddings.reshape(-1)), FEATURE_DIM)
    columns = {
        "id": pa.array(result.table.ids),
        "lat": pa.array(result.table.lat),
        "lon": pa.array(result.table.lon),
        "embedding": vectors,
    }
    if result.components is not None:
        for k in range(result.components.shape[1]):
            columns[f"pc{k + 1}"] = pa.array(result.components[:, k])
    refuse_foreign_outputs(parquet=path)
    schema_table = pa.table(columns)
    schema_table = schema_table.replace_schema_metadata({"geoclip": __version__})
    with staged(path) as partial:
        try:
            pq.write_table(schema_table, str(partial))
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        refuse_foreign_outputs(parquet=path)
        put_in_place(partial, path)
    return path


@dataclass
class EmbedOutcome:
    points: int
    skipped: int
    written: list[Path]
    notes: list[str]
    result: PointEmbeddings


def embed_file(
    model: LocationModel,
    source: str | os.PathLike,
    gpkg: str | os.PathLike | None = None,
    npz: str | os.PathLike | None = None,
    parquet: str | os.PathLike | None = None,
    pca_components: int = 0,
    layer: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    id_field: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbedOutcome:
    """Embeddings for the points of a vector file or CSV (see :func:`read_points`), written to a
    GeoPackage copy, a .npz and/or a Parquet file. Vectors are unit-normalised, as in the model."""
    if not (gpkg or npz or parquet):
        raise LocationError("name at least one output: a .gpkg, a .npz or a .parquet file")
    if parquet:
        _require_parquet()  # before any work, not after it
    refuse_foreign_outputs(gpkg, npz, parquet)  # before any work: another program's file is never replaced
    reading = Stage(progress, "Reading points", 1)
    table = read_points(source, layer, lat_column, lon_column, id_field)
    reading.update(1)
    result = embed_table(model, table, pca_components, progress, should_stop)
    written = []
    if gpkg:
        written.append(write_points_gpkg(result, gpkg, progress, should_stop))
    if npz:
        written.append(write_npz(result, npz))
    if parquet:
        written.append(write_parquet(result, parquet))
    return EmbedOutcome(len(table), table.skipped, written, table.notes, result)
