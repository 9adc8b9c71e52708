"""The results schema shared by the CLI, the Processing algorithms and the dock.

One row per (photo, rank) candidate; a photo that failed gives one row with its error and no
candidates. Column names for photo attributes follow QGIS's "Import geotagged photos" layer where they
overlap, so other photo tools read our layers.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .geo import haversine_km

if TYPE_CHECKING:  # the plugin imports this schema in a QGIS that may have neither NumPy nor Pillow yet
    import numpy as np


# The columns of every output, in order. CSV writes all of them; point layers drop ``error``
# (failed photos go to an errors table instead).
COLUMNS = (
    "photo",
    "rank",
    "lat",
    "lon",
    "probability",
    "radius_km",
    "gallery_lat",
    "gallery_lon",
    "place",
    "region",
    "country",
    "place_km",
    "exif_lat",
    "exif_lon",
    "error_km",
    "timestamp",
    "camera_make",
    "camera_model",
    "altitude",
    "direction",
    "photo_sha256",
    "model",
    "run_at",
    "area",
    "hint",
    "hint_weight",
    "photo_bytes_hex",
    "kind",
    "error",
)
POINT_COLUMNS = COLUMNS[:-1]
ERROR_COLUMNS = ("photo", "error", "photo_sha256", "photo_bytes_hex", "run_at")
COLUMN_TYPES = {
    "photo": str,
    "rank": int,
    "lat": float,
    "lon": float,
    "probability": float,
    "radius_km": float,
    "gallery_lat": float,
    "gallery_lon": float,
    "place": str,
    "region": str,
    "country": str,
    "place_km": float,
    "exif_lat": float,
    "exif_lon": float,
    "error_km": float,
    "timestamp": str,
    "camera_make": str,
    "camera_model": str,
    "altitude": float,
    "direction": float,
    "photo_sha256": str,
    "model": str,
    "run_at": str,
    "area": str,
    "hint": str,
    "hint_weight": float,
    "photo_bytes_hex": str,
    "kind": str,
    "error": str,
}


def path_text(label: str) -> tuple[str, str | None]:
    """A photo's name as text every format takes, plus, for a name that is not valid UTF-8, its exact
    bytes in hex (``photo_bytes_hex``), so nothing is lost.

    Such names (Latin-1 from old cameras and USB sticks) reach Python as surrogate escapes; the text
    form shows each byte that is not UTF-8 as ``\\xNN`` (``caf\\xe9.jpg``). :func:`path_from_text` gives
    the exact path back.
    """
    try:
        label.encode("utf-8")
        return label, None
    except UnicodeEncodeError:
        try:
            raw = os.fsencode(label)
        except UnicodeEncodeError:
            raw = label.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace"), raw.hex()


def path_from_text(photo: str, photo_bytes_hex: str | None) -> str:
    """The path a row names: from its bytes when the name was not UTF-8, else the text itself."""
    return os.fsdecode(bytes.fromhex(photo_bytes_hex)) if photo_bytes_hex else photo


class OutputKind(str, enum.Enum):
    """What a file (or a layer in a GeoPackage) written by a run holds."""

    POINTS = "points"  # candidates, one per (photo, rank)
    ERRORS = "errors"  # photos that failed, with their reason
    TRUTH_LINES = "truth_lines"  # a photo's known position -> its top-1 answer
    ACCURACY = "accuracy"  # the run's accuracy table against known positions
    REGIONS = "regions"  # each answer's probability by country and first-level region
    CONFIDENCE_AREAS = "confidence_areas"  # each answer's smallest areas holding 50 % and 90 % of it
    PLACE_RADII = "place_radii"  # each distinct place's circle holding 90 % of its probability
    WORLD_RASTER = "world_raster"  # one answer's probability over the world
    LOCAL_RASTER = "local_raster"  # one answer's probability around a likely place, finer cells
    COMBINED_RASTER = "combined_raster"  # the run's answers' world rasters, averaged


class AnswerKind(str, enum.Enum):
    """What an answer answers. Stored with every row (the ``kind`` column) and carried by results, so
    nothing tells a text query from a photo by reading its label."""

    PHOTO = "photo"
    TEXT = "text"  # a text description through CLIP's text tower; labelled "text: <the text>"
    FUSED = "fused"  # the joint answer of several photos; labelled "fused: N photos"

    @classmethod
    def of_row(cls, value, label: str) -> AnswerKind:
        """The kind a stored row says. A run written before the ``kind`` column existed (``value`` None)
        named its text and fused answers by their label's prefix: read so for those files alone."""
        if value is None:
            return cls.TEXT if label.startswith("text: ") else cls.FUSED if label.startswith("fused: ") else cls.PHOTO
        try:
            return cls(str(value))
        except ValueError:
            return cls.PHOTO  # an unknown kind is shown as a photo's: its file is still checked by sha256


@dataclass(frozen=True)
class PhotoMetadata:
    """A photo's own metadata, from its EXIF (:mod:`.photos.exif` reads it)."""

    latitude: float | None = None  # signed decimal degrees, WGS 84 as cameras write it
    longitude: float | None = None
    altitude: float | None = None  # metres, negative below sea level
    direction: float | None = None  # degrees the camera faced
    timestamp: str | None = None  # "YYYY-MM-DDTHH:MM:SS" as the camera recorded it (no zone)
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int | None = None  # EXIF orientation 1..8 before it was applied

    @property
    def has_gps(self) -> bool:
        return self.latitude is not None and self.longitude is not None


@dataclass(frozen=True)
class OutputFile:
    kind: OutputKind
    path: str
    layer: str = ""  # the layer or table inside a GeoPackage
    answer: str = ""  # the photo, text query or fused set a raster belongs to
    answer_kind: AnswerKind = AnswerKind.PHOTO  # which of those it is
    raster: RasterFacts | None = None  # a raster the run wrote: what its style needs, without reading it back


@dataclass(frozen=True)
class RasterFacts:
    """What a style needs to know of a probability raster (written into the GeoTIFF too, see
    :mod:`.output.geotiff`); None for what a file does not say, or says in a way no run writes."""

    kind: str | None = None  # "world" or "local"
    levels_band: int | None = None  # the band holding each cell's confidence level
    peak: float | None = None  # the most probable cell's probability


SKIP_ANSWERED = "answered in an earlier run"
SKIP_GEOTAGGED = "has EXIF GPS already (skip geotagged)"


@dataclass(frozen=True)
class Hint:
    """What the analyst already knows, as text ("a harbour town"), and how much it weighs against the photo:
    the answer is the photo's distribution times the hint's to the power ``weight`` (summed logits)."""

    text: str
    weight: float | None = 0.25  # HINT_WEIGHT; None only when read back from a file that lost it

    @property
    def shown(self) -> str:
        """ "a harbour town (weight 0.25)": the hint as words."""
        return f"{self.text} (weight {'not recorded' if self.weight is None else format(self.weight, 'g')})"

    def check(self) -> None:
        import math

        from .errors import GeoCLIPError

        if not self.text.strip():
            raise GeoCLIPError("the hint is empty: give a few words, or no hint")
        weight = self.weight
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 < weight <= HINT_WEIGHT_MAX):
            raise GeoCLIPError(f"the hint's weight must be above 0 and at most {HINT_WEIGHT_MAX:g}, got {weight}")


# Distinct places (model/distinct_places.py): at most this many per answer, each with the radius holding this
# share of its probability. Here, not there, because the plugin shows them and must not load torch to do so.
MAX_PLACES = 50
RADIUS_MASS = 0.9

# A hint's default weight: conservative, so a wrong hint does not overrule a sharp photo (README, "Hints").
HINT_WEIGHT = Hint.weight
HINT_WEIGHT_MAX = 5.0


@dataclass(frozen=True)
class Candidate:
    """One answer candidate: a distinct place (its probability summed over the gallery points it groups,
    ``radius_km`` holding most of it, its coordinates refined from the gallery point it was found at) or,
    as GeoCLIP's release answers, one gallery point (``radius_km`` None)."""

    rank: int  # 1 = most probable
    lat: float
    lon: float
    probability: float
    place: str = ""  # the nearest populated place (GeoNames), filled in by the run (see .places)
    region: str = ""  # its first-level region
    country: str = ""
    place_km: float | None = None  # from the candidate to that place
    radius_km: float | None = None  # a distinct place's: the radius around lat, lon holding 90 % of it
    gallery_lat: float | None = None  # the gallery point the candidate was found at (lat, lon once refined)
    gallery_lon: float | None = None


@dataclass
class PhotoResult:
    photo: str
    candidates: list[Candidate] = field(default_factory=list)
    metadata: PhotoMetadata | None = None
    error: str | None = None
    feature: np.ndarray | None = field(default=None, repr=False)  # the query vector (512,), for rasters and fusion
    sha256: str | None = None  # of the photo file's bytes: the key for resuming and caching
    skipped: str | None = None  # why the photo was not answered on purpose (SKIP_*): nothing to write
    truth: tuple[float, float] | None = None  # (lat, lon) the run scores it against (a truth CSV's), over EXIF
    kind: AnswerKind = AnswerKind.PHOTO
    hint: Hint | None = None  # the text hint the answer was steered by
    # The gallery softmax (N,) the candidates were ranked from, in gallery order, while a run still needs it
    # for the answer's region probabilities (computed once per answer); never stored, dropped once used.
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exif_lat(self) -> float | None:
        return self.metadata.latitude if self.metadata and self.metadata.has_gps else None

    @property
    def exif_lon(self) -> float | None:
        return self.metadata.longitude if self.metadata and self.metadata.has_gps else None

    @property
    def known_position(self) -> tuple[float, float] | None:
        """Where the photo was taken as far as the run knows: its truth (a CSV's) if the run was given
        one, else its EXIF GPS; the position ``error_km`` and the accuracy table are measured from."""
        if self.truth is not None:
            return self.truth
        return (self.exif_lat, self.exif_lon) if self.exif_lat is not None else None

    def error_km(self, candidate: Candidate | None = None) -> float | None:
        """Great-circle km from the photo's known position to a candidate (top-1 by default)."""
        candidate = candidate or (self.candidates[0] if self.candidates else None)
        known = self.known_position
        if candidate is None or known is None:
            return None
        return float(haversine_km(known[0], known[1], candidate.lat, candidate.lon))

    def rows(self, model: str = "", run_at: str = "", area: str = "") -> list[dict]:
        """``model``, ``run_at`` and ``area`` describe the run: the weights, when, and the area of
        interest the answers were restricted to (empty for the whole world)."""
        meta = self.metadata
        photo, photo_bytes_hex = path_text(self.photo)
        base = {
            "photo": photo,
            "photo_bytes_hex": photo_bytes_hex,
            "kind": self.kind.value,
            "exif_lat": self.exif_lat,
            "exif_lon": self.exif_lon,
            "timestamp": meta.timestamp if meta else None,
            "camera_make": meta.camera_make if meta else None,
            "camera_model": meta.camera_model if meta else None,
            "altitude": meta.altitude if meta else None,
            "direction": meta.direction if meta else None,
            "photo_sha256": self.sha256,
            "model": model,
            "run_at": run_at,
            "area": area,
            "hint": self.hint.text if self.hint else None,
            "hint_weight": self.hint.weight if self.hint else None,
        }
        if not self.ok:
            return [{**dict.fromkeys(COLUMNS), **base, "error": self.error}]
        return [
            {
                **base,
                "rank": c.rank,
                "lat": c.lat,
                "lon": c.lon,
                "probability": c.probability,
                "radius_km": c.radius_km,
                "gallery_lat": c.gallery_lat,
                "gallery_lon": c.gallery_lon,
                "place": c.place or None,
                "region": c.region or None,
                "country": c.country or None,
                "place_km": c.place_km,
                "error_km": self.error_km(c),
                "error": None,
            }
            for c in self.candidates
        ]


def result_to_dict(result: PhotoResult) -> dict:
    """Plain data (JSON-ready) for sending a result between processes, query vector included."""
    return {
        "photo": result.photo,
        "error": result.error,
        "sha256": result.sha256,
        "skipped": result.skipped,
        "candidates": [
            [c.rank, c.lat, c.lon, c.probability, c.radius_km, c.gallery_lat, c.gallery_lon] for c in result.candidates
        ],
        "metadata": dataclasses.asdict(result.metadata) if result.metadata else None,
        "feature": result.feature.astype("float32").tolist() if result.feature is not None else None,
        "truth": list(result.truth) if result.truth is not None else None,
        "kind": result.kind.value,
        "hint": [result.hint.text, result.hint.weight] if result.hint else None,
    }


def _candidate_from_list(row: list) -> Candidate:
    rank, lat, lon, probability, radius, gallery_lat, gallery_lon = (list(row) + [None] * 3)[:7]
    return Candidate(
        int(rank),
        float(lat),
        float(lon),
        float(probability),
        radius_km=None if radius is None else float(radius),
        gallery_lat=None if gallery_lat is None else float(gallery_lat),
        gallery_lon=None if gallery_lon is None else float(gallery_lon),
    )


def result_from_dict(data: dict) -> PhotoResult:
    import numpy as np

    return PhotoResult(
        photo=data["photo"],
        error=data["error"],
        sha256=data["sha256"],
        skipped=data["skipped"],
        candidates=[_candidate_from_list(row) for row in data["candidates"]],
        metadata=PhotoMetadata(**data["metadata"]) if data["metadata"] else None,
        feature=np.asarray(data["feature"], dtype=np.float32) if data.get("feature") is not None else None,
        truth=(float(data["truth"][0]), float(data["truth"][1])) if data.get("truth") is not None else None,
        kind=AnswerKind(data.get("kind", "photo")),
        hint=Hint(str(data["hint"][0]), float(data["hint"][1])) if data.get("hint") else None,
    )


def answer_name(label: str, kind: AnswerKind) -> str:
    """An answer's name for people: a photo's file name (no folders), or a text query's or fused set's
    label as it is ("text: a harbour town", "fused: 4 photos")."""
    if kind is not AnswerKind.PHOTO:
        return label
    return os.path.basename(label.replace("\\", "/")) or label


def photo_label(item, number: int) -> str:
    """How a photo is named in results: its path as given, else a PIL image's file name, else
    ``<image N>`` for the N-th input."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return getattr(item, "filename", "") or f"<image {number}>"
