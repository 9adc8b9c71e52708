"""GeoCLIP's location encoder as a GIS tool: embeddings for points, embedding maps, similar places.

The location encoder maps any (lat, lon) to a 512-d feature. Every vector this module returns or
writes is **unit-normalised, as in the model** (``GeoCLIPHeads.location_features``): the dot product of
two vectors is their cosine similarity, the quantity GeoCLIP's scores are made of.

One place, one vector: the model reads longitude through the Equal Earth projection, where lon 180 and
lon -180 are the two edges of the map and a pole is a line, so fed raw it gives the same place several
vectors. Here longitudes are wrapped into [-180, 180) and a pole is encoded at longitude 0. The model's
features still change sharply across the antimeridian (179.99 and -179.99 are far apart for it).

Outputs go through GDAL/OGR: GeoPackage layers (EPSG:4326), GeoTIFF rasters (EPSG:4326, north-up,
DEFLATE, ``GEOCLIP_*`` metadata saying what the values are), and NumPy ``.npz`` (Parquet where pyarrow
is installed) for machine-learning work. Maps are streamed by row tiles, so memory stays bounded
whatever their size. Nothing here imports Qt or QGIS.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .device import PRECISIONS, choose_device, choose_dtype
from .errors import GeoCLIPError
from .evaluation import LAT_COLUMNS, LON_COLUMNS
from .gallery import CHUNK, cached_location_features, encode_locations, features_key, load_gallery
from .geo import haversine_km
from .heads import GeoCLIPHeads, HeadsFiles, load_heads
from .rasters import grid_centres, world_shape
from .weights import find_heads, gallery_csv

Progress = Callable[[str, int, int], None]  # (stage, done, total)
ShouldStop = Callable[[], bool]

FEATURE_DIM = 512
WORLD = (-180.0, -90.0, 180.0, 90.0)  # west, south, east, north
EMBEDDING_FIELD = "embedding"
SOURCE_ID_FIELD = "source_id"
POINTS_LAYER = "embeddings"
PLACES_LAYER = "similar_places"
DEFAULT_CELL = 0.25
PCA_SAMPLE = 20_000  # cells (or points) the principal components are fitted on
PCA_SEED = 0
TILE_CELLS = 65_536  # cells encoded per row tile: ~130 MB of float32 features
EXCLUDE_KM = 25.0
BYTE_PERCENTILES = (1.0, 99.0)  # of the PCA sample, mapped to bytes 0 and 255
MAP_BANDS = ("rgb", "pca", "all")


class LocationError(GeoCLIPError):
    """Bad positions, extents, files or options for the location tools."""


class RunCancelledError(GeoCLIPError):
    """The caller asked to stop; no finished-looking output is left behind."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


# ------------------------------------------------------------------------------------------ positions


def canonical_lat_lon(lat_lon) -> np.ndarray:
    """(N, 2) lat, lon degrees, checked, longitudes wrapped into [-180, 180), poles at longitude 0."""
    points = np.array(lat_lon, dtype=np.float64, ndmin=2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise LocationError(f"positions must be (N, 2) latitude, longitude pairs, got shape {points.shape}")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise LocationError(f"position {int(np.flatnonzero(bad)[0])} is not a number: {points[bad][0].tolist()}")
    outside = np.abs(points[:, 0]) > 90
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise LocationError(f"position {index}: latitude {points[index, 0]} is outside -90..90")
    points[:, 1] = (points[:, 1] + 180.0) % 360.0 - 180.0
    points[np.abs(points[:, 0]) == 90, 1] = 0.0
    return points


def _stop_check(should_stop: ShouldStop | None) -> None:
    if should_stop is not None and should_stop():
        raise RunCancelledError()


@torch.inference_mode()
def encode_points(
    heads: GeoCLIPHeads,
    lat_lon,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """GeoCLIP location features for (N, 2) lat, lon degrees -> (N, 512) float32, unit length.

    The vectors are unit-normalised exactly as the model does (``GeoCLIPHeads.location_features``).
    Points are encoded in chunks of :data:`.gallery.CHUNK` on ``device`` (default: where the heads are),
    so working memory beyond the (N, 512) result stays bounded; ``should_stop`` is checked between chunks
    and raises :class:`RunCancelledError`. ``dtype`` bfloat16/float16 runs the MLPs in half precision (Fourier
    phases stay float32); the default float32 gives the model's own numbers.
    """
    points = canonical_lat_lon(lat_lon)
    on = heads.logit_scale.device
    if device is not None:
        asked = torch.device(device)
        if asked.type != on.type or (asked.index is not None and on.index is not None and asked.index != on.index):
            raise LocationError(f"the heads are on {on}, not on {asked}: move them with heads.to(device)")
    total = points.shape[0]
    out = np.empty((total, FEATURE_DIM), dtype=np.float32)
    coordinates = torch.from_numpy(points.astype(np.float32))
    for start in range(0, total, CHUNK):
        _stop_check(should_stop)
        chunk = coordinates[start : start + CHUNK]
        out[start : start + chunk.shape[0]] = encode_locations(heads, chunk, dtype=dtype).float().cpu().numpy()
        if progress:
            progress("Encoding locations", start + chunk.shape[0], total)
    return out


# ------------------------------------------------------------------------------------------ the model


@dataclass
class LocationModel:
    """GeoCLIP's heads on one device, with the files they came from (for cache keys and the gallery)."""

    heads: GeoCLIPHeads
    files: HeadsFiles
    device: torch.device
    label: str = "GeoCLIP heads"

    def encode(
        self,
        lat_lon,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        return encode_points(self.heads, lat_lon, self.device, progress, should_stop, dtype)


def load_location_model(heads: str | os.PathLike | None = None, device: str = "auto") -> LocationModel:
    """The heads found as :mod:`.weights` describes (``heads`` folder first), loaded on ``device``.

    Only GeoCLIP's heads are needed here; the CLIP backbone is not loaded.
    """
    lookup = find_heads(heads)
    folder = lookup.require()
    files = HeadsFiles(folder, gallery_csv(folder))
    target = choose_device(device)
    name = "release" if lookup.source == "geoclip wheel" else folder.name
    return LocationModel(load_heads(files).to(target), files, target, f"GeoCLIP {name} heads (location encoder)")


def grid_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Precision for dense grids: as the rasters do, float32 where the device has no fast half type."""
    precision = (precision or "auto").strip().lower()
    if precision != "auto" and precision not in PRECISIONS:
        raise LocationError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    chosen = choose_dtype(device, precision)
    if precision == "auto":
        return torch.float32 if chosen == torch.float32 else torch.bfloat16
    return chosen


# ------------------------------------------------------------------------------------------------ PCA


@dataclass
class PrincipalComponents:
    """A PCA basis of location features: ``project(x) = (x - mean) @ components.T``.

    Signs are fixed so that each component's largest loading is positive, so the same data give the
    same components on every machine.
    """

    mean: np.ndarray  # (512,)
    components: np.ndarray  # (k, 512), orthonormal rows
    explained_variance_ratio: np.ndarray  # (k,)
    fitted_on: int  # vectors used

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return ((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def project_torch(self, vectors: torch.Tensor) -> torch.Tensor:
        mean = torch.from_numpy(self.mean).to(vectors.device)
        components = torch.from_numpy(self.components).to(vectors.device)
        return (vectors.float() - mean) @ components.T


def fit_pca(
    vectors: np.ndarray, n_components: int, max_rows: int | None = None, seed: int = PCA_SEED
) -> PrincipalComponents:
    """Principal components of ``vectors`` (N, D) by SVD of the centred data (a seeded sample of
    ``max_rows`` rows when there are more)."""
    data = np.asarray(vectors, dtype=np.float64)
    if max_rows is not None and data.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(data.shape[0], max_rows, replace=False))
        data = data[rows]
    if not 1 <= n_components <= min(data.shape[1], max(data.shape[0] - 1, 1)):
        raise LocationError(
            f"{n_components} principal components need more than {n_components} points "
            f"(have {data.shape[0]}) and at most {data.shape[1]} components"
        )
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    components = vt[:n_components]
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(n_components), largest])[:, None]
    variance = singular**2
    ratio = variance[:n_components] / variance.sum() if variance.sum() > 0 else np.zeros(n_components)
    return PrincipalComponents(mean.astype(np.float32), components.astype(np.float32), ratio, data.shape[0])


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
    layer's point geometry, else from columns named as in :data:`.evaluation.LAT_COLUMNS` and
    :data:`.evaluation.LON_COLUMNS` (any case). CSV columns are read as text (so codes such as "01234"
    survive), unless a ``.csvt`` file beside the CSV gives their types. Features without a position are
    skipped and counted; a layer without a coordinate system is taken as EPSG:4326 (noted).
    """
    from osgeo import gdal, ogr, osr

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
        wgs84 = osr.SpatialReference()
        wgs84.ImportFromEPSG(4326)
        wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        srs = source.GetSpatialRef()
        if srs is None:
            notes.append(f"{path.name} has no coordinate system: positions taken as EPSG:4326")
        elif not srs.IsSame(wgs84):
            srs = srs.Clone()
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            transform = osr.CoordinateTransformation(srs, wgs84)

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
    progress: Progress | None = None,
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


def _partial_path(path: Path) -> Path:
    """Where a file is written before it is complete: same folder and extension, so GDAL picks the
    same driver; renamed over ``path`` only when finished."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _delete_dataset(path: Path) -> None:
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"), Path(f"{path}.aux.xml")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


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


def _wgs84():
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def write_points_gpkg(
    result: PointEmbeddings,
    path: str | os.PathLike,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """A GeoPackage copy of the points (layer ``embeddings``, EPSG:4326, input order) with the source's
    fields, ``source_id`` (the ids of the .npz), ``embedding`` and ``pc1..pcN``.

    ``embedding`` is JSON text (an array of 512 numbers, OGR's JSON subtype), not a BLOB: QGIS reads it as
    an array usable in expressions, SQLite's json functions and every GeoPackage reader can use it, and 9
    significant digits give back the float32 values exactly. For bulk work the .npz is smaller and faster.
    """
    from osgeo import ogr

    path = Path(path)
    table = result.table
    taken = {name.lower() for name, _ in table.fields}
    added = [SOURCE_ID_FIELD, EMBEDDING_FIELD]
    added += [f"pc{i + 1}" for i in range(result.components.shape[1])] if result.components is not None else []
    clash = [name for name in added if name.lower() in taken]
    if clash:
        raise LocationError(f"the input already has field(s) {', '.join(clash)}; rename them first")
    driver = ogr.GetDriverByName("GPKG")
    partial = _partial_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _delete_dataset(partial)
    dataset = driver.CreateDataSource(str(partial))
    if dataset is None:
        from osgeo import gdal

        raise LocationError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
    try:
        # A source field called "fid" (common in CSVs) would collide with the GeoPackage's own id column.
        fid_column = next(name for name in ("fid", "ogc_fid", "gpkg_fid") if name not in taken)
        layer = dataset.CreateLayer(POINTS_LAYER, _wgs84(), ogr.wkbPoint, ["SPATIAL_INDEX=YES", f"FID={fid_column}"])
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
            if layer.CreateField(defn) != 0:
                raise LocationError(f"cannot create field {defn.GetName()!r} in a GeoPackage; rename it first")
        layer_defn = layer.GetLayerDefn()
        first_added = len(table.fields)
        dataset.StartTransaction()
        for index in range(len(table)):
            if index % CHUNK == 0:
                _stop_check(should_stop)
                if progress:
                    progress("Writing the GeoPackage", index, len(table))
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
            if layer.CreateFeature(feature) != 0:
                raise LocationError(f"cannot write point {index} to {path}")
        dataset.CommitTransaction()
        if progress:
            progress("Writing the GeoPackage", len(table), len(table))
        dataset = None  # closes the file
        os.replace(partial, path)
    except BaseException:
        dataset = None
        _delete_dataset(partial)
        raise
    return path


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
    partial = _partial_path(path)
    with open(partial, "wb") as handle:  # a file handle keeps numpy from appending another .npz
        np.savez(handle, **arrays)
    os.replace(partial, path)
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
    partial = _partial_path(path)
    pq.write_table(pa.table(columns), str(partial))
    os.replace(partial, path)
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
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbedOutcome:
    """Embeddings for the points of a vector file or CSV (see :func:`read_points`), written to a
    GeoPackage copy, a .npz and/or a Parquet file. Vectors are unit-normalised, as in the model."""
    if not (gpkg or npz or parquet):
        raise LocationError("name at least one output: a .gpkg, a .npz or a .parquet file")
    if parquet:
        _require_parquet()  # before any work, not after it
    if progress:
        progress("Reading points", 0, 1)
    table = read_points(source, layer, lat_column, lon_column, id_field)
    if progress:
        progress("Reading points", 1, 1)
    result = embed_table(model, table, pca_components, progress, should_stop)
    written = []
    if gpkg:
        written.append(write_points_gpkg(result, gpkg, progress, should_stop))
    if npz:
        written.append(write_npz(result, npz))
    if parquet:
        written.append(write_parquet(result, parquet))
    return EmbedOutcome(len(table), table.skipped, written, table.notes, result)


# ------------------------------------------------------------------------------------------- grids


def parse_extent(text_or_tuple) -> tuple[float, float, float, float]:
    """W,S,E,N degrees (text or numbers), west < east, south < north, inside -180..180 / -90..90."""
    try:
        values = [float(v) for v in (text_or_tuple.split(",") if isinstance(text_or_tuple, str) else text_or_tuple)]
    except (TypeError, ValueError):
        raise LocationError(f"extent must be WEST,SOUTH,EAST,NORTH in degrees, got {text_or_tuple!r}") from None
    if len(values) != 4:
        raise LocationError(f"extent must have 4 numbers WEST,SOUTH,EAST,NORTH, got {len(values)}")
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise LocationError(
            f"extent {values} is not a box inside -180..180, -90..90 with west < east and south < north"
        )
    return west, south, east, north


@dataclass(frozen=True)
class Grid:
    """A north-up grid of ``cell`` degrees from (west, north); cell centres are where features are taken.

    When ``cell`` does not divide the extent, the last column/row reaches past east/south.
    """

    west: float
    north: float
    cell: float
    rows: int
    cols: int

    @classmethod
    def over(cls, extent=WORLD, cell: float = DEFAULT_CELL) -> Grid:
        west, south, east, north = parse_extent(extent)
        if not (cell > 0 and math.isfinite(cell)):
            raise LocationError(f"cell size must be a positive number of degrees, got {cell}")
        cols = max(1, math.ceil((east - west) / cell - 1e-9))
        rows = max(1, math.ceil((north - south) / cell - 1e-9))
        return cls(west, north, float(cell), rows, cols)

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        return (self.west, self.cell, 0.0, self.north, 0.0, -self.cell)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (self.west, self.north - self.rows * self.cell, self.west + self.cols * self.cell, self.north)

    def is_world(self) -> bool:
        try:
            shape = world_shape(self.cell)
        except ValueError:
            return False
        return (
            shape == (self.rows, self.cols)
            and math.isclose(self.west, -180.0, abs_tol=1e-9)
            and math.isclose(self.north, 90.0, abs_tol=1e-9)
        )

    def centres(self, row0: int = 0, row1: int | None = None) -> np.ndarray:
        """(n, 2) float32 lat, lon of the cell centres of rows row0..row1, row-major; latitudes past a
        pole are clamped to it."""
        row1 = self.rows if row1 is None else row1
        points = grid_centres(self.west, self.north - row0 * self.cell, self.cell, row1 - row0, self.cols)
        np.clip(points[:, 0], -90.0, 90.0, out=points[:, 0])
        return points

    def cell_centres(self, indices: np.ndarray) -> np.ndarray:
        rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), self.cols)
        lat = np.clip(self.north - (rows + 0.5) * self.cell, -90.0, 90.0)
        return np.stack([lat, self.west + (cols + 0.5) * self.cell], axis=1).astype(np.float32)

    def cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        row = min(max(math.floor((self.north - lat) / self.cell), 0), self.rows - 1)
        col = min(max(math.floor((lon - self.west) / self.cell), 0), self.cols - 1)
        return row, col


class _NotCachedError(Exception):
    pass


def _cached_world(model: LocationModel, grid: Grid):
    """The rasters' cached world-grid features (bf16) for this grid, if they are in memory or on disk;
    never computed here (a fine world grid would not fit in memory)."""
    if not grid.is_world():
        return None

    def refuse():
        raise _NotCachedError

    key = features_key(model.files, f"world-{float(grid.cell)}", "bf16")
    try:
        return cached_location_features(model.heads, key, refuse, model.device, dtype=torch.bfloat16)
    except _NotCachedError:
        return None


class _GridFeatures:
    """Location features of a grid's cells, row tile by row tile: from the cached world grid where it
    exists, else encoded on the fly (cancellable every :data:`.gallery.CHUNK` cells)."""

    def __init__(self, model: LocationModel, grid: Grid, dtype: torch.dtype, reuse_cache: bool):
        self.model, self.grid, self.dtype = model, grid, dtype
        self.cached = _cached_world(model, grid) if reuse_cache else None

    @property
    def source(self) -> str:
        return "cached world grid (bf16)" if self.cached is not None else f"encoded ({str(self.dtype)[6:]})"

    @torch.inference_mode()
    def at(self, indices: np.ndarray, should_stop: ShouldStop | None = None) -> torch.Tensor:
        if self.cached is not None:
            return self.cached.features[torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.model.device)]
        return self._encode(self.grid.cell_centres(indices), should_stop)

    @torch.inference_mode()
    def rows(self, row0: int, row1: int, should_stop: ShouldStop | None = None) -> torch.Tensor:
        if self.cached is not None:
            return self.cached.features[row0 * self.grid.cols : row1 * self.grid.cols]
        return self._encode(self.grid.centres(row0, row1), should_stop)

    def _encode(self, centres: np.ndarray, should_stop: ShouldStop | None) -> torch.Tensor:
        def check(done, total):
            _stop_check(should_stop)

        coordinates = torch.from_numpy(canonical_lat_lon(centres).astype(np.float32))
        return encode_locations(self.model.heads, coordinates, check if should_stop else None, self.dtype)


# ------------------------------------------------------------------------------------ GeoTIFF streaming


class _TileWriter:
    """A GeoTIFF written row tile by row tile (GDAL WriteArray at a row offset) under a ``.partial``
    name, renamed when complete and deleted when not. Strips are one tile high, so every strip is
    written once and compressed once. Per-band statistics are gathered as tiles pass."""

    def __init__(
        self,
        path: Path,
        grid: Grid,
        bands: int,
        gdal_type: int,
        tile_rows: int,
        metadata: dict,
        descriptions: Sequence[str] = (),
        rgb: bool = False,
    ):
        from osgeo import gdal, osr

        self.path, self.partial = Path(path), _partial_path(Path(path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _delete_dataset(self.partial)
        options = [
            "COMPRESS=DEFLATE",
            f"PREDICTOR={2 if gdal_type == gdal.GDT_Byte else 3}",
            "TILED=NO",
            f"BLOCKYSIZE={tile_rows}",
            "BIGTIFF=IF_SAFER",
            "INTERLEAVE=PIXEL" if rgb else "INTERLEAVE=BAND",
        ]
        if rgb:
            options.append("PHOTOMETRIC=RGB")
        self.dataset = gdal.GetDriverByName("GTiff").Create(
            str(self.partial), grid.cols, grid.rows, bands, gdal_type, options=options
        )
        if self.dataset is None:
            raise LocationError(f"cannot write {self.path}: {gdal.GetLastErrorMsg()}")
        self.dataset.SetGeoTransform(grid.geotransform)
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(4326)
        self.dataset.SetProjection(srs.ExportToWkt())
        self.dataset.SetMetadata({key: str(value) for key, value in metadata.items()})
        colours = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
        for index in range(bands):
            band = self.dataset.GetRasterBand(index + 1)
            if index < len(descriptions):
                band.SetDescription(descriptions[index])
            if rgb:
                band.SetColorInterpretation(colours[index])
        self.bands = bands
        self.count = 0
        self.total = np.zeros(bands)
        self.squares = np.zeros(bands)
        self.low = np.full(bands, np.inf)
        self.high = np.full(bands, -np.inf)

    def write(self, row0: int, values: np.ndarray) -> None:
        """``values``: (bands, rows, cols) for the rows from ``row0``."""
        for index in range(self.bands):
            if self.dataset.GetRasterBand(index + 1).WriteArray(values[index], 0, row0) != 0:
                raise LocationError(f"cannot write rows {row0}.. of {self.path}")
        flat = values.reshape(self.bands, -1).astype(np.float64)
        self.count += flat.shape[1]
        self.total += flat.sum(axis=1)
        self.squares += (flat**2).sum(axis=1)
        self.low = np.minimum(self.low, flat.min(axis=1))
        self.high = np.maximum(self.high, flat.max(axis=1))

    def finish(self, overviews: bool) -> Path:
        """Statistics, overviews (for a few bands), close, and rename into place."""
        mean = self.total / max(self.count, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.count, 1) - mean**2, 0.0))
        for index in range(self.bands):
            band = self.dataset.GetRasterBand(index + 1)
            band.SetStatistics(float(self.low[index]), float(self.high[index]), float(mean[index]), float(std[index]))
        if overviews:
            smaller = min(self.dataset.RasterXSize, self.dataset.RasterYSize)
            factors = [f for f in (2, 4, 8, 16, 32, 64) if smaller // f >= 64]
            if factors:
                self.dataset.BuildOverviews("AVERAGE", factors)
        self.dataset.FlushCache()
        self.dataset = None  # closes the file
        os.replace(self.partial, self.path)
        aux = Path(f"{self.partial}.aux.xml")
        if aux.exists():
            os.replace(aux, Path(f"{self.path}.aux.xml"))
        return self.path

    def abandon(self) -> None:
        self.dataset = None
        _delete_dataset(self.partial)


def _tile_rows(grid: Grid, tile_rows: int | None) -> int:
    if tile_rows is not None and tile_rows < 1:
        raise LocationError(f"tile rows must be at least 1, got {tile_rows}")
    return min(grid.rows, tile_rows or max(1, TILE_CELLS // grid.cols))


def _stream(
    writer: _TileWriter,
    grid: Grid,
    rows_per_tile: int,
    features: _GridFeatures,
    to_values: Callable[[torch.Tensor, int, int], np.ndarray],
    stage: str,
    progress: Progress | None,
    should_stop: ShouldStop | None,
) -> Path:
    """Encode, convert (``to_values(features, row0, rows)`` -> (bands, rows, cols)) and write each row
    tile; the file is renamed into place at the end, or deleted on cancel or failure."""
    tiles = math.ceil(grid.rows / rows_per_tile)
    try:
        for tile in range(tiles):
            _stop_check(should_stop)
            row0 = tile * rows_per_tile
            row1 = min(grid.rows, row0 + rows_per_tile)
            writer.write(row0, to_values(features.rows(row0, row1, should_stop), row0, row1 - row0))
            if progress:
                progress(stage, tile + 1, tiles)
        _stop_check(should_stop)
        return writer.finish(overviews=writer.bands <= 4)
    except BaseException:
        writer.abandon()
        raise


def _base_metadata(model: LocationModel, grid: Grid, features: _GridFeatures, kind: str, values: str) -> dict:
    west, south, east, north = grid.extent
    return {
        "GEOCLIP_RASTER": kind,
        "GEOCLIP_VALUES": values,
        "GEOCLIP_MODEL": model.label,
        "GEOCLIP_CELL_DEG": f"{grid.cell:g}",
        "GEOCLIP_EXTENT": f"{west:g},{south:g},{east:g},{north:g}",
        "GEOCLIP_FEATURES": features.source,
        "GEOCLIP_NORMALISATION": "location features are unit-length, as in the model; sampled at cell centres",
    }


# ----------------------------------------------------------------------------------- embedding maps


@dataclass
class EmbeddingMap:
    """What :func:`embedding_map` wrote: the file, its grid, and how its values were made."""

    path: Path
    grid: Grid
    bands: str  # "rgb", "pca" or "all"
    band_count: int
    pca: PrincipalComponents | None
    byte_ranges: np.ndarray | None  # (k, 2) component values mapped to bytes 0 and 255 ("rgb")
    features: str  # where the cells' features came from
    tiles: int


def embedding_map(
    model: LocationModel,
    path: str | os.PathLike,
    extent=WORLD,
    cell: float = DEFAULT_CELL,
    bands: str = "rgb",
    components: int = 3,
    sample: int = PCA_SAMPLE,
    seed: int = PCA_SEED,
    precision: str = "auto",
    tile_rows: int | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbeddingMap:
    """A GeoTIFF of the location encoder over ``extent`` (W,S,E,N degrees) at ``cell`` degrees.

    ``bands``: ``"rgb"`` (default): the first three principal components as Byte red, green, blue, each
    mapped linearly from its 1st..99th percentile over the PCA sample to 0..255 (clipped); ``"pca"``: the
    first ``components`` principal components as Float32; ``"all"``: the 512 feature values as Float32.
    The PCA is fitted on ``sample`` cells drawn at random (seeded) from the grid. Features are those of the
    cell centres, unit-normalised as in the model. Rows are encoded, projected and written one tile at a
    time (``tile_rows``; default about :data:`TILE_CELLS` cells a tile), so memory does not grow with the
    map; a cancelled or failed map leaves no file. ``precision``: ``auto`` reuses the rasters' cached
    world grid when the grid is that grid and encodes in bf16 where the device is fast at it;
    ``fp32`` encodes everything in float32.
    """
    if bands not in MAP_BANDS:
        raise LocationError(f"bands must be one of {', '.join(MAP_BANDS)}, got {bands!r}")
    grid = Grid.over(extent, cell)
    count = {"rgb": 3, "pca": int(components), "all": FEATURE_DIM}[bands]
    if bands == "pca" and not 1 <= count <= FEATURE_DIM:
        raise LocationError(f"components must be between 1 and {FEATURE_DIM}, got {components}")
    if sample < 2:
        raise LocationError(f"the PCA sample needs at least 2 cells, got {sample}")
    dtype = grid_dtype(model.device, precision)
    features = _GridFeatures(model, grid, dtype, reuse_cache=precision != "fp32")
    rows_per_tile = _tile_rows(grid, tile_rows)

    pca, byte_ranges = None, None
    if bands != "all":
        if count >= grid.cells:
            raise LocationError(f"{count} principal components need more than {count} cells; the grid has {grid.cells}")
        if progress:
            progress("Fitting principal components", 0, 1)
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(grid.cells, min(sample, grid.cells), replace=False))
        sampled = features.at(picked, should_stop).float().cpu().numpy()
        pca = fit_pca(sampled, count)
        if bands == "rgb":
            projected = pca.project(sampled)
            byte_ranges = np.stack(
                [
                    np.percentile(projected, BYTE_PERCENTILES[0], axis=0),
                    np.percentile(projected, BYTE_PERCENTILES[1], axis=0),
                ],
                axis=1,
            )
            byte_ranges[:, 1] = np.maximum(byte_ranges[:, 1], byte_ranges[:, 0] + 1e-6)
        if progress:
            progress("Fitting principal components", 1, 1)

    from osgeo import gdal

    kind = {
        "rgb": "embedding map (RGB)",
        "pca": "embedding map (principal components)",
        "all": "embedding map (features)",
    }[bands]
    values = {
        "rgb": "first three principal components of the location features, each scaled linearly from "
        "GEOCLIP_BYTE_RANGES (its 1st..99th percentile over the PCA sample) to 0..255, clipped",
        "pca": "principal component scores of the location features: (feature - mean) . component",
        "all": "the 512 values of the location feature of each cell centre (unit length)",
    }[bands]
    metadata = _base_metadata(model, grid, features, kind, values)
    if pca is not None:
        metadata.update(
            GEOCLIP_PCA_SAMPLE=str(pca.fitted_on),
            GEOCLIP_PCA_SEED=str(seed),
            GEOCLIP_PCA_EXPLAINED_VARIANCE=",".join(f"{v:.6f}" for v in pca.explained_variance_ratio),
        )
    if byte_ranges is not None:
        metadata["GEOCLIP_BYTE_RANGES"] = ";".join(f"{low:.9g},{high:.9g}" for low, high in byte_ranges)
    if bands == "all":
        descriptions = [f"feature {i + 1}" for i in range(count)]
    else:
        names = ("red", "green", "blue")
        descriptions = [f"PC{i + 1}" + (f" ({names[i]})" if bands == "rgb" else "") for i in range(count)]
    writer = _TileWriter(
        Path(path),
        grid,
        count,
        gdal.GDT_Byte if bands == "rgb" else gdal.GDT_Float32,
        rows_per_tile,
        metadata,
        descriptions,
        rgb=bands == "rgb",
    )

    @torch.inference_mode()
    def to_values(tile: torch.Tensor, row0: int, rows: int) -> np.ndarray:
        if bands == "all":
            values = tile.float().cpu().numpy()
        else:
            values = pca.project_torch(tile).cpu().numpy()
        if bands == "rgb":
            low, high = byte_ranges[:, 0], byte_ranges[:, 1]
            values = np.clip(np.rint((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(values.T.reshape(count, rows, grid.cols))

    written = _stream(writer, grid, rows_per_tile, features, to_values, "Embedding map", progress, should_stop)
    return EmbeddingMap(
        written, grid, bands, count, pca, byte_ranges, features.source, math.ceil(grid.rows / rows_per_tile)
    )


# ---------------------------------------------------------------------------------- similar places


@dataclass
class SimilarPlace:
    rank: int
    lat: float
    lon: float
    similarity: float  # cosine similarity of location features, -1..1
    distance_km: float  # great-circle distance from the query point


@dataclass
class SimilarPlaces:
    """Places whose location features are most like the query point's, from the 100K GPS gallery."""

    lat: float
    lon: float
    places: list[SimilarPlace]
    exclude_km: float  # gallery places closer than this to the point were left out
    spread_km: float = 0.0  # listed places are at least this far apart
    raster: Path | None = None
    grid: Grid | None = None
    peak: tuple[float, float, float] | None = None  # (lat, lon, similarity) of the most similar cell
    features: str = ""

    def csv_rows(self) -> list[list]:
        return [
            [p.rank, f"{p.lat:.6f}", f"{p.lon:.6f}", f"{p.similarity:.6f}", f"{p.distance_km:.3f}"] for p in self.places
        ]


PLACE_COLUMNS = ("rank", "lat", "lon", "similarity", "distance_km")


def similar_places(
    model: LocationModel,
    lat: float,
    lon: float,
    raster: str | os.PathLike | None = None,
    extent=WORLD,
    cell: float = DEFAULT_CELL,
    top: int = 20,
    exclude_km: float = EXCLUDE_KM,
    spread_km: float = 0.0,
    precision: str = "auto",
    tile_rows: int | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> SimilarPlaces:
    """Where else does GeoCLIP's location encoder see a place like (lat, lon)?

    - ``places``: the ``top`` places of GeoCLIP's 100K GPS gallery (MP-16 photo positions) whose
      location features are most similar (cosine) to the point's, best first. Gallery places within
      ``exclude_km`` of the point are left out, so the answer is not the point's own neighbourhood; with
      ``spread_km``, a place closer than that to a better one already listed is skipped.
    - With ``raster``: a Float32 GeoTIFF over ``extent`` at ``cell`` degrees of the cosine similarity
      (-1..1) between the point's feature (float32) and each cell centre's, streamed by row tiles.
    """
    point = canonical_lat_lon([[lat, lon]])
    lat, lon = float(point[0, 0]), float(point[0, 1])
    if not 1 <= int(top):
        raise LocationError(f"top must be at least 1, got {top}")
    if not (exclude_km >= 0 and spread_km >= 0):
        raise LocationError(f"distances must be 0 km or more, got {exclude_km} and {spread_km}")
    query = torch.from_numpy(model.encode(point)[0]).to(model.device)
    result = SimilarPlaces(lat, lon, [], float(exclude_km), float(spread_km))

    if progress:
        progress("Loading the GPS gallery", 0, 1)
    gallery = load_gallery(
        model.heads,
        model.files,
        model.device,
        lambda done, total: progress("Encoding the GPS gallery (first use only)", done, total) if progress else None,
    )
    with torch.inference_mode():
        similarity = (gallery.features.float() @ query).cpu().numpy().astype(np.float64)
    coordinates = gallery.coordinates.float().cpu().numpy().astype(np.float64)
    distance = haversine_km(lat, lon, coordinates[:, 0], coordinates[:, 1])
    similarity[distance < exclude_km] = -np.inf
    picked: list[int] = []
    for i in np.argsort(-similarity, kind="stable"):
        if len(picked) == int(top) or not np.isfinite(similarity[i]):
            break
        # The gallery holds many photos of one city; a separation keeps one place per neighbourhood.
        if (
            spread_km > 0
            and picked
            and haversine_km(coordinates[i, 0], coordinates[i, 1], coordinates[picked, 0], coordinates[picked, 1]).min()
            < spread_km
        ):
            continue
        picked.append(int(i))
    result.places = [
        SimilarPlace(
            rank + 1, float(coordinates[i, 0]), float(coordinates[i, 1]), float(similarity[i]), float(distance[i])
        )
        for rank, i in enumerate(picked)
    ]
    if progress:
        progress("Loading the GPS gallery", 1, 1)

    if raster is not None:
        from osgeo import gdal

        grid = Grid.over(extent, cell)
        features = _GridFeatures(model, grid, grid_dtype(model.device, precision), reuse_cache=precision != "fp32")
        rows_per_tile = _tile_rows(grid, tile_rows)
        metadata = _base_metadata(
            model,
            grid,
            features,
            "similarity",
            "cosine similarity (-1..1) between the location feature of GEOCLIP_POINT and that of each cell centre",
        )
        metadata["GEOCLIP_POINT"] = f"{lat:.6f},{lon:.6f}"
        writer = _TileWriter(Path(raster), grid, 1, gdal.GDT_Float32, rows_per_tile, metadata, ["cosine similarity"])
        best = (-np.inf, 0.0, 0.0)  # similarity, lat, lon of the most similar cell so far

        @torch.inference_mode()
        def to_values(tile: torch.Tensor, row0: int, rows: int) -> np.ndarray:
            nonlocal best
            values = (tile.float() @ query).cpu().numpy().reshape(1, rows, grid.cols)
            r, c = np.unravel_index(int(np.argmax(values[0])), values[0].shape)
            if values[0, r, c] > best[0]:
                best = (
                    float(values[0, r, c]),
                    grid.north - (row0 + r + 0.5) * grid.cell,
                    grid.west + (c + 0.5) * grid.cell,
                )
            return values

        result.raster = _stream(
            writer, grid, rows_per_tile, features, to_values, "Similarity raster", progress, should_stop
        )
        result.grid, result.features = grid, features.source
        result.peak = (best[1], best[2], best[0])
    return result


def write_places_gpkg(result: SimilarPlaces, path: str | os.PathLike) -> Path:
    """The similar places as a point layer ``similar_places`` (EPSG:4326): rank, lat, lon, similarity,
    distance_km, plus the query point and exclusion radius in every row."""
    from osgeo import ogr

    path = Path(path)
    partial = _partial_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _delete_dataset(partial)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(partial))
    if dataset is None:
        raise LocationError(f"cannot write {path}")
    try:
        layer = dataset.CreateLayer(PLACES_LAYER, _wgs84(), ogr.wkbPoint)
        columns = [
            ("rank", ogr.OFTInteger),
            ("lat", ogr.OFTReal),
            ("lon", ogr.OFTReal),
            ("similarity", ogr.OFTReal),
            ("distance_km", ogr.OFTReal),
            ("query_lat", ogr.OFTReal),
            ("query_lon", ogr.OFTReal),
            ("exclude_km", ogr.OFTReal),
        ]
        for name, kind in columns:
            layer.CreateField(ogr.FieldDefn(name, kind))
        for place in result.places:
            feature = ogr.Feature(layer.GetLayerDefn())
            values = (
                place.rank,
                place.lat,
                place.lon,
                place.similarity,
                place.distance_km,
                result.lat,
                result.lon,
                result.exclude_km,
            )
            for (name, _), value in zip(columns, values):
                feature.SetField(name, value)
            point = ogr.Geometry(ogr.wkbPoint)
            point.AddPoint_2D(place.lon, place.lat)
            feature.SetGeometry(point)
            layer.CreateFeature(feature)
        dataset = None
        os.replace(partial, path)
    except BaseException:
        dataset = None
        _delete_dataset(partial)
        raise
    return path
