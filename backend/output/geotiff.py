"""Probability rasters to GeoTIFF through GDAL: EPSG:4326, Float32, NaN as no-data, with metadata
saying what the values are and where they come from; file names unique per answer.

Band 1 holds the probability per cell. Band 2, when written, holds each cell's confidence level
(:class:`..earth.confidence.DrawnAreas`): the smallest of 0.25 / 0.5 / 0.75 / 0.9 whose confidence area holds
the cell, 1 in none. A style with classes up to those values on band 2 draws the very cells of the
confidence polygons; nothing needs to rank the cells again."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..results import AnswerKind, RasterFacts, path_text
from .gdal_messages import quiet_gdal
from .geotiff_files import GeoTiffFile

if TYPE_CHECKING:  # the rasters are computed with torch; writing and reading them needs only GDAL
    from ..model.rasters import Raster

VALUES_PER_CELL = (
    "probability per cell: the model's density (softmax score per unit area) integrated over "
    "each cell; the world raster's cells sum to 1"
)
VALUES_COMBINED = "probability per cell, mean over the run's answers; sums to 1"
LEVELS_BAND = 2
LEVELS_DESCRIPTION = "confidence level: the smallest confidence area (0.25, 0.5, 0.75, 0.9) holding the cell; 1: none"


def raster_metadata(
    raster: Raster,
    query: str,
    model: str,
    world_cell: float,
    local_cell: float,
    area: str = "",
    values: str = VALUES_PER_CELL,
) -> dict[str, str]:
    """The ``GEOCLIP_*`` metadata items of one raster: what was asked, by which model, in which units."""
    return {
        "GEOCLIP_QUERY": path_text(query)[0],
        "GEOCLIP_MODEL": model,
        "GEOCLIP_VALUES": values,
        "GEOCLIP_WORLD_CELL_DEG": str(world_cell),
        "GEOCLIP_LOCAL_CELL_DEG": str(local_cell),
        "GEOCLIP_AREA": area or "whole world",
        "GEOCLIP_RASTER": raster.kind,
    }


def facts_of(raster: Raster, levels: np.ndarray | None = None) -> RasterFacts:
    """What a style needs of this raster: the same values :func:`write_geotiff` writes as metadata."""
    finite = raster.values[np.isfinite(raster.values)]
    peak = float(finite.max()) if finite.size else None
    return RasterFacts(raster.kind, LEVELS_BAND if levels is not None else None, peak)


def read_raster_facts(path: str | os.PathLike) -> RasterFacts:
    """The facts a GeoTIFF says of itself (a raster of an earlier run, a received file): read, checked,
    never trusted beyond what a run writes."""
    import math

    from osgeo import gdal

    with quiet_gdal():
        dataset = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=["GTiff"])
    if dataset is None:
        return RasterFacts()
    kind, band = dataset.GetMetadataItem("GEOCLIP_RASTER"), dataset.GetMetadataItem("GEOCLIP_LEVELS_BAND")
    band = int(band) if band is not None and band.isdigit() and 2 <= int(band) <= dataset.RasterCount else None
    try:
        peak = float(dataset.GetMetadataItem("GEOCLIP_PEAK") or "nan")
    except ValueError:
        peak = math.nan
    peak = peak if math.isfinite(peak) and 0 < peak <= 1 else None
    return RasterFacts(kind if kind in ("world", "local") else None, band, peak)


def write_geotiff(
    raster: Raster,
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    levels: np.ndarray | None = None,
) -> Path:
    """Write one raster (and ``levels``, its confidence levels, as band 2); it appears under ``path`` only
    once written whole (never half a file), and a file of that name that GeoCLIP did not write (or a
    symbolic link) is refused, not replaced (:class:`.geotiff_files.GeoTiffFile`)."""
    from osgeo import gdal

    marked = {"GEOCLIP_RASTER": raster.kind, **(metadata or {})}  # the mark that makes it ours
    facts = facts_of(raster, levels)
    marked["GEOCLIP_PEAK"] = repr(facts.peak) if facts.peak is not None else "nan"
    written = [(raster.values, "probability per cell")]
    if facts.levels_band is not None:
        marked["GEOCLIP_LEVELS_BAND"] = str(facts.levels_band)
        written.append((levels, LEVELS_DESCRIPTION))
    geotransform = (raster.west, raster.cell, 0.0, raster.north, 0.0, -raster.cell)
    options = ["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES"]
    with GeoTiffFile(
        path, raster.cols, raster.rows, len(written), gdal.GDT_Float32, options, geotransform, marked
    ) as tiff:
        for number, (values, description) in enumerate(written, start=1):
            band = tiff.band(number)
            band.SetNoDataValue(float("nan"))
            band.SetDescription(description)
            tiff.write(number, values)
            band.ComputeStatistics(False)
        return tiff.finish()


def _stem(label: str, answer: AnswerKind) -> str:
    # a photo by its file name; a text query by its text (its label is "text: <the text>"); a fused set by its label
    stem = {AnswerKind.PHOTO: Path(label).stem, AnswerKind.TEXT: label.partition(": ")[2]}.get(answer, label)
    return re.sub(r"[^\w.-]+", "_", stem).strip("_")[:60] or "query"


class RasterNames:
    """File names for one run's rasters: ``<photo stem>_world.tif``, ``<photo stem>_local1.tif``...

    Two answers with the same stem (``a/IMG_1.jpg`` and ``b/IMG_1.jpg``, or ``IMG_1.jpg`` and
    ``IMG_1.png``) get the second and later ones a short hash of their full label, so no raster
    overwrites another's."""

    def __init__(self):
        self._owner: dict[str, str] = {}  # stem -> the label that has it

    def stem(self, label: str, answer: AnswerKind = AnswerKind.PHOTO) -> str:
        stem = _stem(label, answer)
        owner = self._owner.setdefault(stem, label)
        if owner != label:
            stem = f"{stem}_{hashlib.sha256(label.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
            self._owner.setdefault(stem, label)
        return stem

    def name(self, label: str, kind: str, index: int = 0, answer: AnswerKind = AnswerKind.PHOTO) -> str:
        return f"{self.stem(label, answer)}_{kind}{index + 1 if kind == 'local' else ''}.tif"


def raster_name(label: str, kind: str, index: int = 0, answer: AnswerKind = AnswerKind.PHOTO) -> str:
    """The name of a raster of one answer, without regard to others in the run."""
    return f"{_stem(label, answer)}_{kind}{index + 1 if kind == 'local' else ''}.tif"
