"""A run's GeoPackage, read back: its answers with their candidates and EXIF, regions, confidence
areas, query vectors and provenance. What the case report, "how likely here?" and the plugin's results
panel are built from, without running CLIP again.

When a photo was answered by several runs into the file (``--redo``), the latest answer counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .confidence import ConfidenceArea
from .errors import GeoCLIPError
from .exif import PhotoMetadata
from .regions import RegionRow
from .results import Candidate, PhotoResult, path_from_text
from .writers import AREAS_LAYER, ERRORS_LAYER, FEATURES_LAYER, POINTS_LAYER, REGIONS_LAYER, RUNS_LAYER


@dataclass
class StoredAnswer:
    photo: str  # as written (readable text)
    path: str  # the photo's path as the file system knows it (exact bytes restored)
    result: PhotoResult  # candidates, EXIF metadata, error; ``feature`` when the file kept it
    run_at: str = ""
    regions: list[RegionRow] = field(default_factory=list)
    areas: list[ConfidenceArea] = field(default_factory=list)


def _open(path: str | os.PathLike):
    from osgeo import ogr

    source = ogr.Open(str(path), 0)
    if source is None or source.GetLayerByName(POINTS_LAYER) is None:
        raise GeoCLIPError(f"{path} is not a GeoPackage of GeoCLIP answers (no {POINTS_LAYER} layer)")
    return source


def _rows(source, name: str) -> list[dict]:
    layer = source.GetLayerByName(name)
    if layer is None:
        return []
    rows = []
    for feature in layer:
        row = feature.items()
        geometry = feature.GetGeometryRef()
        if geometry is not None:
            row["_wkt"] = geometry.ExportToWkt()
        if name == FEATURES_LAYER:
            index = feature.GetFieldIndex("feature")
            row["feature"] = feature.GetFieldAsBinary(index) if index >= 0 else None
        rows.append(row)
    return rows


def read_answers(path: str | os.PathLike, photos: list[str] | None = None) -> list[StoredAnswer]:
    """The answers in the file, in the order they were written (latest run per photo); only those whose
    photo text is in ``photos`` when given."""
    source = _open(path)
    by_photo: dict[str, dict] = {}
    for row in _rows(source, POINTS_LAYER):
        entry = by_photo.setdefault(row["photo"], {"run_at": "", "rows": []})
        if (row.get("run_at") or "") > entry["run_at"]:
            entry.update(run_at=row.get("run_at") or "", rows=[])
        if (row.get("run_at") or "") == entry["run_at"]:
            entry["rows"].append(row)
    for row in _rows(source, ERRORS_LAYER):
        entry = by_photo.setdefault(row["photo"], {"run_at": row.get("run_at") or "", "rows": [], "error": None})
        if not entry["rows"]:
            entry.update(error=row.get("error"), sha256=row.get("photo_sha256"), hex=row.get("photo_bytes_hex"))
    wanted = set(photos) if photos is not None else None
    features = {r["photo"]: r for r in _rows(source, FEATURES_LAYER)}
    regions = _group(_rows(source, REGIONS_LAYER))
    areas = _group(_rows(source, AREAS_LAYER))
    answers = []
    for photo, entry in by_photo.items():
        if wanted is not None and photo not in wanted:
            continue
        rows = sorted(entry["rows"], key=lambda r: r["rank"])
        first = rows[0] if rows else {}
        sha = first.get("photo_sha256") or entry.get("sha256")
        raw_hex = first.get("photo_bytes_hex") or entry.get("hex")
        metadata = PhotoMetadata(
            latitude=first.get("exif_lat"),
            longitude=first.get("exif_lon"),
            altitude=first.get("altitude"),
            direction=first.get("direction"),
            timestamp=first.get("timestamp"),
            camera_make=first.get("camera_make"),
            camera_model=first.get("camera_model"),
        )
        candidates = [
            Candidate(
                int(r["rank"]),
                float(r["lat"]),
                float(r["lon"]),
                float(r["probability"]),
                r.get("place") or "",
                r.get("region") or "",
                r.get("country") or "",
                r.get("place_km"),
            )
            for r in rows
        ]
        stored = features.get(photo)
        vector = None
        if stored is not None and stored.get("feature"):
            vector = np.frombuffer(stored["feature"], dtype="<f4").astype(np.float32)
        result = PhotoResult(
            photo, candidates, metadata, error=entry.get("error") if not rows else None, feature=vector, sha256=sha
        )
        answers.append(
            StoredAnswer(
                photo,
                path_from_text(photo, raw_hex),
                result,
                entry["run_at"],
                [
                    RegionRow(
                        photo,
                        r["level"],
                        r["region"],
                        r.get("country") or "",
                        r.get("country_code") or "",
                        float(r["probability"]),
                        int(r["rank"]),
                    )
                    for r in sorted(regions.get(photo, []), key=lambda r: (r["level"], r["rank"]))
                ],
                [
                    ConfidenceArea(
                        float(r["level"]),
                        r.get("_wkt") or "",
                        float(r["area_km2"]),
                        float(r["mass"]),
                        int(r.get("cells") or 0),
                        int(r.get("parts") or 0),
                        float("nan"),
                        False,
                    )
                    for r in sorted(areas.get(photo, []), key=lambda r: r["level"])
                ],
            )
        )
    return answers


def _group(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by photo, keeping only each photo's latest run."""
    latest: dict[str, str] = {}
    for row in rows:
        latest[row["photo"]] = max(latest.get(row["photo"], ""), row.get("run_at") or "")
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        if (row.get("run_at") or "") == latest[row["photo"]]:
            grouped.setdefault(row["photo"], []).append(row)
    return grouped


def read_provenance(path: str | os.PathLike, run_at: str | None = None) -> dict:
    """A run's record (the run made at ``run_at`` when the file holds it, else the last run): when, engine
    version, model, parameters, the sha256 of every weight file, and what the CLIP backbone was:
    ``backbone`` (its architecture in words, "" when the run did not record it) and ``backbone_vit_l14``
    (True, False, or None when not recorded)."""
    rows = _rows(_open(path), RUNS_LAYER)
    if not rows:
        return {}
    last = next((row for row in reversed(rows) if run_at and row.get("run_at") == run_at), rows[-1])
    for key in ("parameters", "weights_sha256"):
        try:
            last[key] = json.loads(last.get(key) or "{}")
        except ValueError:
            last[key] = {}
    last["backbone"] = last.get("backbone") or ""
    flag = last.get("backbone_vit_l14")
    last["backbone_vit_l14"] = None if flag is None or not last["backbone"] else bool(flag)
    return last


def run_area(provenance: dict):
    """The area of interest a run used (from its provenance), or None for the whole world."""
    from .area import Area

    parameters = provenance.get("parameters") or {}
    bbox, wkt = parameters.get("area_bbox"), parameters.get("area_wkt")
    if not bbox:
        return None
    return Area(parameters.get("area", "area"), tuple(bbox), wkt)
