"""Accuracy the way the paper reports it: share of photos whose top-1 answer lies within 1, 25, 200,
750 and 2500 km of the truth, plus the median error.

Protocol: one answer per photo (the gallery's top-1), great-circle distance by the haversine formula on
a sphere of radius 6371.0088 km (the IUGG mean radius), every photo counted once, photos that fail to
decode reported apart (not counted as misses). Truth comes from the photo's EXIF GPS or from a CSV of
(photo, lat, lon) as the public benchmarks ship them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GeoCLIPError, InputFileError
from ..geo import THRESHOLDS_KM

PHOTO_COLUMNS = ("photo", "path", "image", "img_id", "filename", "file")
LAT_COLUMNS = ("lat", "latitude")
LON_COLUMNS = ("lon", "lng", "long", "longitude")


def accuracy_table(errors_km) -> dict:
    """{"photos": n, "acc_1km": %, ..., "acc_2500km": %, "median_km": km} over top-1 errors."""
    errors = np.asarray([e for e in errors_km if e is not None], dtype=np.float64)
    table = {"photos": int(errors.size)}
    for km in THRESHOLDS_KM:
        table[f"acc_{km}km"] = float(100.0 * np.mean(errors <= km)) if errors.size else None
    table["median_km"] = float(np.median(errors)) if errors.size else None
    return table


def format_table(table: dict) -> str:
    if not table["photos"]:
        return "no photos with ground truth"
    head = " ".join(f"{str(km) + ' km':>8}" for km in THRESHOLDS_KM)

    def cells(row: dict) -> str:
        return " ".join(f"{row[f'acc_{km}km']:>7.1f}%" for km in THRESHOLDS_KM)

    country = table.get("acc_country")
    same = f", top-1 in the right country {country:.1f}%" if country is not None else ""
    lines = [f"photos {table['photos']}, median error {table['median_km']:.1f} km{same}"]
    if table.get("candidates"):
        lines.append(f"candidates: {table['candidates']}")
    found_at = table.get("gallery_point")
    if found_at:  # refined places beside the gallery points they were found at
        lines += [f"within     {head}", f"gallery    {cells(found_at)}", f"refined    {cells(table)}"]
        return "\n".join(lines)
    return "\n".join(lines + [f"within {head}", f"{'':6} {cells(table)}"])


def is_truth_csv(source: str | os.PathLike) -> bool:
    """Positions come from a CSV of photo,lat,lon when one is named; otherwise from the photos' EXIF GPS."""
    return str(source).lower().endswith(".csv")


@dataclass(frozen=True)
class Truth:
    photo: str
    lat: float
    lon: float


def _column(header: list[str], names: tuple[str, ...], what: str, path) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise GeoCLIPError(f"{path}: no {what} column (looked for {', '.join(names)}; found {', '.join(header)})")


def read_truth_csv(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[Truth]:
    """Rows of (photo, lat, lon); photo paths are relative to ``images`` or else to the CSV's folder.

    The file comes from outside, so whatever is wrong with it is an :class:`..errors.InputFileError`
    naming the line: text that is not UTF-8, a row shorter than its columns, a field over
    :data:`MAX_FIELD` characters, a name with a NUL character, a position that is not one."""
    path = Path(path)
    base = Path(images) if images else path.parent
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise GeoCLIPError(f"{path} is empty")
            p, la, lo = (
                _column(header, PHOTO_COLUMNS, "photo", path),
                _column(header, LAT_COLUMNS, "latitude", path),
                _column(header, LON_COLUMNS, "longitude", path),
            )
            for row in reader:
                if not row:
                    continue
                rows.append(_truth(row, (p, la, lo), len(header), base, f"{path}, line {reader.line_num}"))
        except UnicodeDecodeError:
            raise InputFileError(
                f"{path}, line {_first_undecodable_line(path)}: the text is not UTF-8 (a Latin-1 or Windows "
                "export?); save it as UTF-8 (a spreadsheet's 'CSV UTF-8') and run again"
            ) from None
        except csv.Error as exc:  # a field over the csv module's limit, an unclosed quote...
            raise InputFileError(f"{path}, line {reader.line_num}: not a readable CSV row ({exc})") from None
    return rows


def _first_undecodable_line(path: Path) -> int:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


MAX_FIELD = 131_072  # characters: the csv module's own limit on one field


def _truth(row: list[str], columns: tuple[int, int, int], width: int, base: Path, where: str) -> Truth:
    p, la, lo = columns
    if len(row) <= max(columns):
        raise InputFileError(f"{where}: {len(row)} value(s) where the header has {width} columns")
    try:
        lat, lon = float(row[la]), float(row[lo])
    except ValueError:
        raise InputFileError(f"{where}: latitude/longitude are not numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InputFileError(f"{where}: ({lat}, {lon}) is not a position")
    if "\x00" in row[p]:
        raise InputFileError(f"{where}: the photo name holds a NUL character, which no file name can")
    photo = Path(row[p])
    return Truth(str(photo if photo.is_absolute() else base / photo), lat, lon)
