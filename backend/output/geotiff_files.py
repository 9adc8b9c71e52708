"""GeoTIFFs GeoCLIP writes: one way to create, fill and put them in place, for probability rasters
(:mod:`.geotiff`) and embedding maps and similarity rasters (:mod:`..location.embedding_maps`).

- Ours, or refused: every GeoTIFF we write carries ``GEOCLIP_*`` metadata; a file at the target's name
  without it, a symbolic link or a folder is refused and left as it is (:func:`refuse_foreign_raster`).
- EPSG:4326 (:func:`.geo.wgs84`), north-up, with the creation options and metadata the caller gives.
- Written inside a fresh private folder beside the target (:func:`..filelock.staged`), so nothing already
  there under an unfinished name can be written through; read back, and renamed into place only when
  whole. A raster that fails or is stopped leaves no file (:meth:`GeoTiffFile.abandon`).
- Every band write is checked: a failure raises :class:`..errors.WriteError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import WriteError
from ..filelock import put_in_place, refuse_non_file, staged
from ..geo import wgs84
from .gdal_messages import gdal_error, quiet_gdal


def refuse_foreign_raster(path: str | os.PathLike) -> None:
    """A raster about to be replaced must be absent or a GeoTIFF GeoCLIP wrote; a symbolic link, a folder
    or another program's file is refused (a :class:`..errors.GeoCLIPError`)."""
    path = Path(path)
    refuse_non_file(path, "where a raster would go")
    if path.exists() and not is_ours(path):
        raise WriteError(f"{path} exists and was not written by GeoCLIP; refusing to overwrite it")


def is_ours(path: str | os.PathLike) -> bool:
    """True for a GeoTIFF GeoCLIP wrote (it carries GEOCLIP_* metadata)."""
    from osgeo import gdal

    if Path(path).is_symlink():
        return False
    try:
        with quiet_gdal():  # a file GDAL cannot read is not ours: nothing to say about it on stderr
            dataset = gdal.OpenEx(str(path), gdal.OF_RASTER, allowed_drivers=["GTiff"])
    except RuntimeError:  # GDAL with exceptions on
        return False
    return dataset is not None and any(key.startswith("GEOCLIP_") for key in (dataset.GetMetadata() or {}))


class GeoTiffFile:
    """A GeoTIFF being written under its unfinished name: made with ``options`` (GDAL creation options),
    ``geotransform`` in EPSG:4326 and ``metadata`` (which must hold a ``GEOCLIP_*`` item: the mark that
    makes it ours). Fill its bands, then :meth:`finish` puts it in place; leaving a ``with`` block
    without finishing removes it."""

    def __init__(
        self,
        path: str | os.PathLike,
        cols: int,
        rows: int,
        bands: int,
        gdal_type: int,
        options: Sequence[str],
        geotransform: Sequence[float],
        metadata: Mapping[str, object],
    ):
        from osgeo import gdal

        self.path = Path(path)
        refuse_foreign_raster(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create the folder {self.path.parent}: {exc.strerror or exc}") from None
        self._staging = staged(self.path)
        self.partial = self._staging.__enter__()  # a fresh private folder beside the target, removed at the end
        self.dataset = gdal.GetDriverByName("GTiff").Create(
            str(self.partial), cols, rows, bands, gdal_type, options=list(options)
        )
        if self.dataset is None:
            message = gdal_error()
            self.abandon()
            raise WriteError(f"cannot write {self.path}: {message}")
        self.dataset.SetGeoTransform(tuple(geotransform))
        self.dataset.SetProjection(wgs84().ExportToWkt())
        self.dataset.SetMetadata({key: str(value) for key, value in metadata.items()})

    def __enter__(self) -> GeoTiffFile:
        return self

    def __exit__(self, *exc) -> None:
        self.abandon()  # after finish() there is nothing left to remove

    def band(self, number: int):
        """GDAL's band ``number`` (from 1), for its description, no-data value, colour and statistics."""
        return self.dataset.GetRasterBand(number)

    def write(self, number: int, values: np.ndarray, row0: int = 0) -> None:
        """``values`` (rows x cols) into band ``number`` from row ``row0``."""
        if self.dataset.GetRasterBand(number).WriteArray(values, 0, row0) != 0:
            raise WriteError(f"cannot write {self.path}: {gdal_error()}")

    def finish(self) -> Path:
        """Close, read back, and rename into place (with GDAL's ``.aux.xml`` side file, when it made one)."""
        from osgeo import gdal

        failed = self.dataset.FlushCache() not in (None, 0)
        self.dataset = None  # closes the file
        if failed or gdal.Open(str(self.partial)) is None:
            raise WriteError(f"cannot write {self.path}: {gdal_error('the file did not read back')}")
        refuse_foreign_raster(self.path)  # still ours (or absent) when it is replaced
        aux = Path(f"{self.partial}.aux.xml")
        if aux.exists():
            put_in_place(aux, Path(f"{self.path}.aux.xml"))
        put_in_place(self.partial, self.path)
        self.abandon()  # the staging folder, now empty
        return self.path

    def abandon(self) -> None:
        """Close and remove what was written (nothing once finished)."""
        self.dataset = None
        if self._staging is not None:
            self._staging.__exit__(None, None, None)
            self._staging = None
