"""Where a run's answers are written: a writer picked by the output's extension.

CSV with the csv module, GeoJSON and GeoPackage through GDAL/OGR, one class per format; every one is an
:class:`.answer_writer.AnswerWriter` (what every writer does and promises is written down there), and the
GeoPackage is also the one :class:`.answer_writer.ResumableStore`. Points are EPSG:4326 with the columns
of :data:`..results.POINT_COLUMNS`; photos that failed go to an ``errors`` table (GeoPackage), a feature
with no geometry (GeoJSON) or a row with the ``error`` column set (CSV).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from ..errors import GeoCLIPError, WriteError
from ..filelock import refuse_link
from .answer_writer import AnswerWriter, DiscardWriter, ResumableStore, check_output_path
from .csv_writer import CsvWriter
from .geojson_writer import GeoJsonWriter
from .gpkg_writer import GeoPackageWriter

__all__ = [
    "AnswerWriter",
    "CsvWriter",
    "DiscardWriter",
    "FORMATS",
    "GeoJsonWriter",
    "GeoPackageWriter",
    "ResumableStore",
    "WriteError",
    "check_output_path",
    "open_writer",
    "output_format",
]

FORMATS = {".csv": "CSV", ".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


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
) -> AnswerWriter:
    """A writer for ``path`` by its extension; CSV to ``stdout`` when there is no path. ``batch``: photos
    per GeoPackage transaction."""
    if not path:
        return CsvWriter(stdout or sys.stdout, model, run_at, area=area)
    refuse_link(path, "where the answers would go")  # never written through, whatever the format
    kind = output_format(path)
    if kind == "CSV":
        return CsvWriter(path, model, run_at, area=area)
    if kind == "GeoJSON":
        return GeoJsonWriter(path, model, run_at, area)
    return GeoPackageWriter(path, model, run_at, area, batch)
