"""A run's GeoPackage, read back: its answers with their candidates and EXIF, regions, confidence
areas, query vectors and provenance. What the case report, "how likely here?" and the plugin's results
panel are built from, without running CLIP again.

When a photo was answered by several runs into the file (``--redo``), the latest answer counts.

A GeoPackage may come from someone else, so everything in it is data to check, never to trust:

- the tables are read with SQLite itself, read-only, with their values' real types (GDAL would read
  text in a number column as 0): a row whose rank, position or probability is missing, text, not
  finite or out of range is left out, and the reason is added to ``skipped``; an optional value that
  is unusable (EXIF position, altitude, a query vector of the wrong size) is dropped, and said so;
- a file that is no run at all (not SQLite, no ``predictions`` table, no ``photo`` column) is a
  :class:`RunFileError`;
- the photo file an answer names is only ever read through :func:`photo_file`: a file whose bytes have
  the sha256 the run recorded, never any file the GeoPackage names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import stat
import threading
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

from ..earth.confidence import ConfidenceArea
from ..earth.regions import RegionRow
from ..errors import GeoCLIPError
from ..output.answer_layers import AREAS_LAYER, ERRORS_LAYER, FEATURES_LAYER, POINTS_LAYER, REGIONS_LAYER, RUNS_LAYER
from ..results import HINT_WEIGHT_MAX, AnswerKind, Candidate, Hint, PhotoMetadata, PhotoResult

FEATURE_BYTES = 512 * 4  # a query vector: 512 float32 numbers (heads.IMAGE_FEATURE_DIM)
PHOTO_MAX_BYTES = 1 << 30  # a file larger than this is not hashed to find an answer's photo
JSON_MAX_DEPTH = 16  # run settings are flat tables; deeper nesting is not ours
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RunFileError(GeoCLIPError):
    """The file cannot be read as a run's GeoPackage (not SQLite, no answers table, no photo column...)."""


@dataclass
class StoredAnswer:
    photo: str  # as written (readable text)
    path: str  # the photo's path as the run recorded it (exact bytes restored); read it only via photo_file
    result: PhotoResult  # candidates, EXIF metadata, error; ``feature`` when the file kept it
    run_at: str = ""
    regions: list[RegionRow] = field(default_factory=list)
    areas: list[ConfidenceArea] = field(default_factory=list)
    gpkg: str = ""  # the GeoPackage it was read from


# ------------------------------------------------------------------------------------ reading rows


class _RowError(Exception):
    """A value a row cannot do without is missing or wrong: the row is left out, for this reason."""


def _kind(value) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes):
        return f"{len(value)} bytes of binary data"
    return f"{value!r}"


def _number(row: dict, key: str, low: float = -math.inf, high: float = math.inf) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _RowError(f"{key} is {_kind(value)}, not a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise _RowError(f"{key} is {number!r}, not a number from {low:g} to {high:g}")
    return number


def _whole(row: dict, key: str, low: int = 0) -> int:
    value = row.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _RowError(f"{key} is {_kind(value)}, not a whole number of at least {low}")
    return value


def _optional(row: dict, key: str, notes: list[str], low: float = -math.inf, high: float = math.inf) -> float | None:
    """An optional number: None when absent; dropped, with a note, when it is not a usable number."""
    if row.get(key) is None:
        return None
    try:
        return _number(row, key, low, high)
    except _RowError as exc:
        notes.append(f"{exc}: left out")
        return None


def _hint(row: dict, notes: list[str]) -> Hint | None:
    """The text hint an answer was steered by; its weight None when the file's is not a usable one."""
    text = _text(row.get("hint"))
    return Hint(text, _optional(row, "hint_weight", notes, 0, HINT_WEIGHT_MAX)) if text else None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _photo(row: dict) -> str:
    value = row.get("photo")
    if not isinstance(value, str) or not value:
        raise _RowError(f"photo is {_kind(value)}, not a name")
    return value


def _sha256(value, notes: list[str]) -> str | None:
    if value is None or value == "":
        return None
    text = value.lower() if isinstance(value, str) else ""
    if not _SHA256.fullmatch(text):
        notes.append("photo_sha256 is not a sha256: left out (the photo cannot be shown)")
        return None
    return text


def _path(photo: str, photo_bytes_hex, notes: list[str]) -> str:
    """The path a row names: from its bytes when the name was not UTF-8, else the text itself."""
    if not photo_bytes_hex:
        return photo
    try:
        return os.fsdecode(bytes.fromhex(photo_bytes_hex))
    except (TypeError, ValueError):
        notes.append("photo_bytes_hex is not hexadecimal bytes: the photo's name is taken as written")
        return photo


def _connect(path) -> tuple[sqlite3.Connection, set[str]]:
    """The file, opened read-only, and its tables (real tables only: a view is not read)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise RunFileError(f"{name} is not a GeoPackage of GeoCLIP answers (no such file)")
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(os.fsencode(os.path.abspath(name)))}?mode=ro", uri=True)
        db.execute("PRAGMA trusted_schema = OFF")  # the file's views and triggers call no function
        db.execute("PRAGMA query_only = ON")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise RunFileError(f"{name} is not a GeoPackage of GeoCLIP answers ({exc})") from None
    if POINTS_LAYER not in tables:
        db.close()
        raise RunFileError(f"{name} is not a GeoPackage of GeoCLIP answers (no {POINTS_LAYER} layer)")
    return db, tables


class _Db:
    """A run's GeoPackage open for reading, closed after use."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.db, self.tables = _connect(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()

    def rows(self, name: str, required: tuple[str, ...] = ("photo",)) -> list[dict]:
        """The table's rows as dicts (with ``_row``: the row number), in the order written; [] when the
        file has no such table."""
        if name not in self.tables:
            return []
        try:
            # ``name`` is one of this module's own table names, and the file has it (checked above)
            cursor = self.db.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid')  # nosec B608
            columns = ["_row", *(d[0] for d in cursor.description[1:])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise RunFileError(f"{self.path}: the {name} table has no {', '.join(missing)} column")
            return [dict(zip(columns, values)) for values in cursor]
        except sqlite3.Error as exc:
            raise RunFileError(f"{self.path}: cannot read its {name} table ({exc})") from None


def _left_out(skipped: list[str] | None, table: str, row: dict, reason: str) -> None:
    if skipped is not None:
        photo = row.get("photo")
        named = f" ({photo})" if isinstance(photo, str) and photo else ""
        skipped.append(f"{table} row {row.get('_row')}{named} left out: {reason}")


def _note(skipped: list[str] | None, table: str, row: dict, notes: list[str]) -> None:
    """Values dropped from a row that is still used, said as such."""
    if skipped is not None:
        photo = row.get("photo")
        named = f" ({photo})" if isinstance(photo, str) and photo else ""
        skipped.extend(f"{table} row {row.get('_row')}{named}: {note}" for note in notes)
    notes.clear()


# ----------------------------------------------------------------------------------------- answers


def read_answers(
    path: str | os.PathLike, photos: list[str] | None = None, skipped: list[str] | None = None
) -> list[StoredAnswer]:
    """The answers in the file, in the order they were written (latest run per photo); only those whose
    photo text is in ``photos`` when given. Rows that cannot be used are left out, and why is appended
    to ``skipped`` (when given). A file that is no run raises :class:`RunFileError`."""
    try:
        with _Db(path) as db:
            return _read_answers(db, photos, skipped)
    except RecursionError:
        raise RunFileError(f"{os.fspath(path)} cannot be read: a value nests too deeply") from None


def _read_answers(db: _Db, photos: list[str] | None, skipped: list[str] | None) -> list[StoredAnswer]:
    wanted = set(photos) if photos is not None else None
    by_photo: dict[str, dict] = {}
    for row in db.rows(POINTS_LAYER):
        try:
            photo = _photo(row)
            row["rank"] = _whole(row, "rank", 1)
            row["lat"] = _number(row, "lat", -90, 90)
            row["lon"] = _number(row, "lon", -180, 180)
            row["probability"] = _number(row, "probability", 0, 1)
        except _RowError as exc:
            _left_out(skipped, POINTS_LAYER, row, str(exc))
            continue
        run_at = _text(row.get("run_at"))
        entry = by_photo.setdefault(photo, {"run_at": run_at, "rows": []})
        if run_at > entry["run_at"]:
            entry.update(run_at=run_at, rows=[])
        if run_at == entry["run_at"]:
            entry["rows"].append(row)
    for row in db.rows(ERRORS_LAYER):
        try:
            photo = _photo(row)
        except _RowError as exc:
            _left_out(skipped, ERRORS_LAYER, row, str(exc))
            continue
        entry = by_photo.setdefault(photo, {"run_at": _text(row.get("run_at")), "rows": [], "error": None})
        if not entry["rows"]:
            entry.update(
                error=_text(row.get("error")) or "no reason recorded",
                sha256=row.get("photo_sha256"),
                hex=row.get("photo_bytes_hex"),
            )
            entry["error_row"] = row
    features = _features(db, skipped)
    regions = _group(_regions(db, skipped))
    areas = _group(_areas(db, skipped))
    answers = []
    for photo, entry in by_photo.items():
        if wanted is not None and photo not in wanted:
            continue
        rows = sorted(entry["rows"], key=lambda r: r["rank"])
        first = rows[0] if rows else entry.get("error_row", {})
        table = POINTS_LAYER if rows else ERRORS_LAYER
        notes: list[str] = []
        sha = _sha256(first.get("photo_sha256") if rows else entry.get("sha256"), notes)
        raw_hex = first.get("photo_bytes_hex") if rows else entry.get("hex")
        exif_lat = _optional(first, "exif_lat", notes, -90, 90)
        exif_lon = _optional(first, "exif_lon", notes, -180, 180)
        if (exif_lat is None) != (exif_lon is None):
            notes.append("the EXIF position has only one coordinate: left out")
            exif_lat = exif_lon = None
        metadata = PhotoMetadata(
            latitude=exif_lat,
            longitude=exif_lon,
            altitude=_optional(first, "altitude", notes),
            direction=_optional(first, "direction", notes, 0, 360),
            timestamp=_text(first.get("timestamp")) or None,
            camera_make=_text(first.get("camera_make")) or None,
            camera_model=_text(first.get("camera_model")) or None,
        )
        candidates = []
        for r in rows:
            candidates.append(
                Candidate(
                    r["rank"],
                    r["lat"],
                    r["lon"],
                    r["probability"],
                    _text(r.get("place")),
                    _text(r.get("region")),
                    _text(r.get("country")),
                    _optional(r, "place_km", notes, 0),
                    radius_km=_optional(r, "radius_km", notes, 0),
                    gallery_lat=_optional(r, "gallery_lat", notes, -90, 90),
                    gallery_lon=_optional(r, "gallery_lon", notes, -180, 180),
                )
            )
        _note(skipped, table, first or {"photo": photo}, notes)
        result = PhotoResult(
            photo,
            candidates,
            metadata,
            error=entry.get("error") if not rows else None,
            feature=features.get(photo),
            sha256=sha,
            kind=AnswerKind.of_row(first.get("kind"), photo) if rows else AnswerKind.PHOTO,  # only photos fail
            hint=_hint(first, notes) if rows else None,
        )
        path = _path(photo, raw_hex, notes)
        _note(skipped, table, first or {"photo": photo}, notes)
        answers.append(
            StoredAnswer(
                photo,
                path,
                result,
                entry["run_at"],
                sorted(regions.get(photo, []), key=lambda r: (r.level, r.rank)),
                sorted(areas.get(photo, []), key=lambda a: a.level),
                db.path,
            )
        )
    return answers


def _features(db: _Db, skipped: list[str] | None) -> dict[str, np.ndarray]:
    """Each photo's query vector (the last one written), when it is 512 finite float32 numbers."""
    vectors: dict[str, np.ndarray] = {}
    for row in db.rows(FEATURES_LAYER):
        try:
            photo = _photo(row)
            blob = row.get("feature")
            if not isinstance(blob, bytes) or len(blob) != FEATURE_BYTES:
                raise _RowError(f"the query vector is {_kind(blob)}, not {FEATURE_BYTES // 4} float32 numbers")
            vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            if not np.isfinite(vector).all():
                raise _RowError("the query vector holds numbers that are not finite")
        except _RowError as exc:
            _left_out(skipped, FEATURES_LAYER, row, str(exc))
            continue
        vectors[photo] = vector
    return vectors


def _regions(db: _Db, skipped: list[str] | None) -> list[tuple[str, str, RegionRow]]:
    found = []
    for row in db.rows(REGIONS_LAYER):
        try:
            photo = _photo(row)
            level = row.get("level")
            if not isinstance(level, str) or not level:
                raise _RowError(f"level is {_kind(level)}, not a name")
            region = RegionRow(
                photo,
                level,
                _text(row.get("region")),
                _text(row.get("country")),
                _text(row.get("country_code")),
                _number(row, "probability", 0, 1),
                _whole(row, "rank", 1),
            )
        except _RowError as exc:
            _left_out(skipped, REGIONS_LAYER, row, str(exc))
            continue
        found.append((photo, _text(row.get("run_at")), region))
    return found


def _areas(db: _Db, skipped: list[str] | None) -> list[tuple[str, str, ConfidenceArea]]:
    found = []
    for row in db.rows(AREAS_LAYER):
        try:
            photo = _photo(row)
            area = ConfidenceArea(
                _number(row, "level", 0, 1),
                _wkt(row.get("geom")),
                _number(row, "area_km2", 0),
                _number(row, "mass", 0, 1),
                _whole(row, "cells") if row.get("cells") is not None else 0,
                _whole(row, "parts") if row.get("parts") is not None else 0,
                float("nan"),
                False,
            )
        except _RowError as exc:
            _left_out(skipped, AREAS_LAYER, row, str(exc))
            continue
        found.append((photo, _text(row.get("run_at")), area))
    return found


def _wkt(blob) -> str:
    """A GeoPackage geometry as WKT ("" when there is none or it cannot be read)."""
    if not isinstance(blob, bytes) or len(blob) < 8 or blob[:2] != b"GP":
        return ""
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((blob[3] >> 1) & 0x07)
    if envelope is None:
        return ""
    from osgeo import ogr

    geometry = ogr.CreateGeometryFromWkb(blob[8 + envelope :])
    return geometry.ExportToWkt() if geometry is not None else ""


def _group(rows: list[tuple[str, str, object]]) -> dict[str, list]:
    """Values by photo, keeping only each photo's latest run."""
    latest: dict[str, str] = {}
    for photo, run_at, _ in rows:
        latest[photo] = max(latest.get(photo, ""), run_at)
    grouped: dict[str, list] = {}
    for photo, run_at, value in rows:
        if run_at == latest[photo]:
            grouped.setdefault(photo, []).append(value)
    return grouped


# -------------------------------------------------------------------------------------- provenance


def _depth(value, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests no deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return True


def _table(text, key: str, notes: list[str]) -> dict:
    """A JSON table of the runs table ({} when absent; {} and a note when it is not a usable table)."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text if isinstance(text, (str, bytes)) else "")
    except (ValueError, RecursionError):
        notes.append(f"{key} is not readable JSON: left out")
        return {}
    if not isinstance(value, dict):
        notes.append(f"{key} is not a table: left out")
        return {}
    if not _depth(value, JSON_MAX_DEPTH):
        notes.append(f"{key} nests deeper than {JSON_MAX_DEPTH} levels: left out")
        return {}
    return value


def read_provenance(path: str | os.PathLike, run_at: str | None = None, skipped: list[str] | None = None) -> dict:
    """A run's record (the run made at ``run_at`` when the file holds it, else the last run): when, engine
    version, model, parameters, the sha256 of every weight file, and what the CLIP backbone was:
    ``backbone`` (its architecture in words, "" when the run did not record it) and ``backbone_vit_l14``
    (True, False, or None when not recorded). What cannot be used is left out, and why is appended to
    ``skipped`` (when given)."""
    with _Db(path) as db:
        rows = db.rows(RUNS_LAYER, required=())
    if not rows:
        return {}
    chosen = next((row for row in reversed(rows) if run_at and _text(row.get("run_at")) == run_at), rows[-1])
    record = {key: value for key, value in chosen.items() if key not in ("_row", "fid")}
    notes: list[str] = []
    for key in ("run_at", "engine_version", "model", "area", "backbone"):
        record[key] = _text(record.get(key))
    record["parameters"] = _table(record.get("parameters"), "parameters", notes)
    weights = _table(record.get("weights_sha256"), "weights_sha256", notes)
    record["weights_sha256"] = {k: v for k, v in weights.items() if isinstance(v, str)}
    if len(record["weights_sha256"]) < len(weights):
        notes.append("weights_sha256 holds values that are not text: those left out")
    flag = record.get("backbone_vit_l14")
    record["backbone_vit_l14"] = None if not isinstance(flag, int) or not record["backbone"] else bool(flag)
    if skipped is not None:
        skipped.extend(f"{RUNS_LAYER} row {chosen.get('_row')}: {note}" for note in notes)
    return record


def run_area(provenance: dict):
    """The area of interest a run used (from its provenance), or None for the whole world. A recorded area
    that is no box (or no polygon) raises :class:`RunFileError`: answers are judged in their run's area."""
    from ..photos.area import Area

    parameters = provenance.get("parameters") or {}
    bbox, wkt, names = parameters.get("area_bbox"), parameters.get("area_wkt"), parameters.get("area_names")
    if names:  # countries and regions by name: the same gazetteer rule again
        from ..earth.named_areas import area_from_names

        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RunFileError("the run's area of interest cannot be used: its names are not a list of text")
        try:
            return area_from_names(names)
        except GeoCLIPError as exc:
            raise RunFileError(f"the run's area of interest cannot be used: {exc}") from None
    if not bbox:
        return None
    label = parameters.get("area", "area")
    try:
        if not isinstance(bbox, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
        ):
            raise GeoCLIPError("its box is not four numbers")
        box = Area.from_bbox(bbox).bbox
        if wkt is not None and not isinstance(wkt, str):
            raise GeoCLIPError("its polygon is not text")
        polygon = Area.from_wkt(wkt).wkt if wkt else None
    except GeoCLIPError as exc:
        raise RunFileError(f"the run's area of interest cannot be used: {exc}") from None
    return Area(label if isinstance(label, str) else "area", box, polygon)


# ------------------------------------------------------------------------------- the photo's file

_hashes: dict[tuple, str] = {}
_hashes_lock = threading.Lock()


def _file_sha256(path: str) -> str | None:
    """The sha256 of a regular file's bytes (None for anything else: a folder, a device, a pipe, a file
    over PHOTO_MAX_BYTES, one that cannot be read), remembered by its identity, size and time."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        handle = os.open(path, flags)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or info.st_size > PHOTO_MAX_BYTES:
            return None
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        with _hashes_lock:
            if key in _hashes:
                return _hashes[key]
        digest = hashlib.sha256()
        with os.fdopen(os.dup(handle), "rb") as reader:
            while block := reader.read(1 << 20):
                digest.update(block)
        with _hashes_lock:
            if len(_hashes) > 4096:
                _hashes.clear()
            _hashes[key] = digest.hexdigest()
        return _hashes[key]
    except OSError:
        return None
    finally:
        os.close(handle)


def photo_candidates(stored: StoredAnswer) -> list[str]:
    """Where this answer's photo may be, in the order tried: the path the run recorded when it is absolute;
    else that relative path under the GeoPackage's folder (never climbing out of it with ``..``); then
    the file name alone in the GeoPackage's folder. Never relative to the current folder."""
    path = stored.path
    if not stored.gpkg or not path or "\0" in path or stored.result.kind is not AnswerKind.PHOTO:
        return []
    folder = os.path.dirname(os.path.abspath(stored.gpkg))
    found = []
    if os.path.isabs(path):
        found.append(path)
    elif ".." not in re.split(r"[\\/]", path):
        found.append(os.path.join(folder, os.path.normpath(path)))
    name = re.split(r"[\\/]", path)[-1]
    if name not in ("", ".", ".."):
        found.append(os.path.join(folder, name))
    return list(dict.fromkeys(found))


def photo_file(stored: StoredAnswer) -> str | None:
    """The file holding this answer's photo, or None: the first of :func:`photo_candidates` whose bytes
    have the sha256 the run recorded for the photo. An answer without a recorded sha256 (a text query, a
    fused set, a file that lost it) has none. The case report, the results panel and the PDF report show
    only this file, so a received GeoPackage cannot make them read any other."""
    expected = stored.result.sha256
    if not expected or stored.result.kind is not AnswerKind.PHOTO:
        return None
    for candidate in photo_candidates(stored):
        if _file_sha256(candidate) == expected:
            return candidate
    return None
