"""Probability by region: how much of one answer's probability falls in each country, each
first-level region (admin1), or each of the user's own polygons.

An answer's probabilities are the gallery softmax: one value per gallery point, in the order of
``Gallery.coordinates``, summing to 1 (or to 1 over the points inside an area of interest).

Countries and regions: each gallery point takes the country and admin1 region of its nearest
populated place in the GeoNames gazetteer of :mod:`.places`. A point off the coast (a boat, a
pier, an island too small for the gazetteer) therefore gets its nearest place's country, whatever
the maritime borders say. The assignment is made once per gallery and gazetteer and kept in the
cache folder as a NumPy ``.npz`` of plain arrays (read with ``allow_pickle=False``).

User polygons: gallery points are tested against each polygon by the rule of :mod:`..photos.polygons` (OGR
``Contains``, each part of a multipolygon after its own bounding-box test, many points per GEOS call).
Polygons may overlap; a point inside two polygons counts for both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GeoCLIPError
from ..progress import ProgressCallback, ShouldStop, Stage, stop_check
from ..store.cache import private_folder
from ..store.weights import cache_dir
from .places import gazetteer

COUNTRY = "country"
ADMIN1 = "admin1"
ZONE = "zone"
ASSIGNMENT_FORMAT = "regions-v1"  # bump when the arrays stored change


@dataclass(frozen=True)
class RegionRow:
    """One region's share of one answer's probability. ``rank`` 1 is the most probable at its level."""

    photo: str
    level: str  # COUNTRY, ADMIN1 or ZONE
    region: str  # the country's, region's or polygon's name
    country: str  # the country it belongs to ("" for user polygons)
    country_code: str
    probability: float
    rank: int


@dataclass
class RegionAssignment:
    """Country and admin1 region of each of N points, as indices into name tables."""

    country: np.ndarray  # (N,) int32 index into country_codes / countries
    region: np.ndarray  # (N,) int32 index into regions / region_country
    distance_km: np.ndarray  # (N,) float32: from the point to the place that named it
    country_codes: list[str]
    countries: list[str]
    regions: list[str]
    region_country: np.ndarray  # (R,) int32 country of each region

    def __len__(self) -> int:
        return self.country.shape[0]


def assign_points(lat, lon) -> RegionAssignment:
    """Country and admin1 region of each point from its nearest populated place."""
    table = gazetteer()
    index, distance = table.nearest(lat, lon)
    return RegionAssignment(
        table.country[index].astype(np.int32),
        table.region[index].astype(np.int32),
        distance.astype(np.float32),
        list(table.country_codes),
        list(table.countries),
        list(table.regions),
        table.region_country.astype(np.int32),
    )


def _assignment_file(gallery_key: str) -> Path:
    return cache_dir() / "regions" / f"{gallery_key}-{gazetteer().key}-{ASSIGNMENT_FORMAT}.npz"


def _read_assignment(path: Path, size: int) -> RegionAssignment | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            made = RegionAssignment(
                data["country"],
                data["region"],
                data["distance_km"],
                data["country_codes"].tolist(),
                data["countries"].tolist(),
                data["regions"].tolist(),
                data["region_country"],
            )
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache is rebuilt, never trusted
    ok = (
        len(made) == size
        and made.region.shape == (size,)
        and made.distance_km.shape == (size,)
        and len(made.regions) == made.region_country.shape[0]
    )
    return made if ok else None


def _write_assignment(path: Path, made: RegionAssignment) -> None:
    try:
        private_folder(path.parent)  # 0700, as the README promises
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial.npz")
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                country=made.country,
                region=made.region,
                distance_km=made.distance_km,
                country_codes=np.array(made.country_codes, dtype=str),
                countries=np.array(made.countries, dtype=str),
                regions=np.array(made.regions, dtype=str),
                region_country=made.region_country,
            )
        os.replace(tmp, path)  # readers see the whole file or none of it
    except OSError:
        pass  # a read-only cache folder only costs recomputation next time


_memory: dict[tuple[str, str], RegionAssignment] = {}


def gallery_regions(coordinates, gallery_key: str) -> RegionAssignment:
    """The assignment of a gallery's points, made once and cached in memory and on disk.

    ``coordinates``: (N, 2) lat, lon (``Gallery.coordinates``, a tensor or an array); ``gallery_key``:
    ``Gallery.key`` (it changes with the gallery's checksum).
    """
    coordinates = _as_array(coordinates)
    memory_key = (gallery_key, gazetteer().key)
    made = _memory.get(memory_key)
    if made is not None and len(made) == coordinates.shape[0]:
        return made
    path = _assignment_file(gallery_key)
    made = _read_assignment(path, coordinates.shape[0])
    if made is None:
        made = assign_points(coordinates[:, 0], coordinates[:, 1])
        _write_assignment(path, made)
    _memory[memory_key] = made
    return made


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _probabilities(probabilities, size: int) -> np.ndarray:
    values = _as_array(probabilities).reshape(-1)
    if values.shape[0] != size:
        raise GeoCLIPError(f"{values.shape[0]} probabilities for {size} gallery points")
    return np.nan_to_num(values, nan=0.0)


def _ranked(
    photo: str,
    level: str,
    masses: np.ndarray,
    names: Sequence[str],
    countries: Sequence[str],
    codes: Sequence[str],
    top: int | None,
    include_zero: bool,
) -> list[RegionRow]:
    order = np.argsort(-masses, kind="stable")
    if not include_zero:
        order = order[masses[order] > 0]
    if top is not None:
        order = order[:top]
    return [
        RegionRow(photo, level, names[i], countries[i], codes[i], float(masses[i]), rank)
        for rank, i in enumerate(order, 1)
    ]


def region_probabilities(
    probabilities,
    assignment: RegionAssignment,
    photo: str = "",
    levels: Sequence[str] = (COUNTRY, ADMIN1),
    top: int | None = None,
) -> list[RegionRow]:
    """Probability per country and per admin1 region, each level ranked best first.

    ``top`` keeps the first rows of each level; regions with no probability at all are left out.
    """
    p = _probabilities(probabilities, len(assignment))
    rows: list[RegionRow] = []
    for level in levels:
        if level == COUNTRY:
            masses = np.bincount(assignment.country, weights=p, minlength=len(assignment.countries))
            rows += _ranked(
                photo,
                COUNTRY,
                masses,
                assignment.countries,
                assignment.countries,
                assignment.country_codes,
                top,
                include_zero=False,
            )
        elif level == ADMIN1:
            masses = np.bincount(assignment.region, weights=p, minlength=len(assignment.regions))
            countries = [assignment.countries[c] for c in assignment.region_country]
            codes = [assignment.country_codes[c] for c in assignment.region_country]
            rows += _ranked(photo, ADMIN1, masses, assignment.regions, countries, codes, top, include_zero=False)
        else:
            raise ValueError(f"unknown level {level!r}: use {COUNTRY!r} or {ADMIN1!r}")
    return rows


# --------------------------------------------------------------------------------- user polygons


@dataclass
class Zones:
    """Which points lie in each of the user's polygons (computed once, reused for every answer)."""

    names: list[str]
    members: list[np.ndarray]  # per polygon: indices of the points inside it
    size: int  # number of points tested


def zones_of(
    coordinates,
    wkts: Sequence[str],
    names: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> Zones:
    """Points (``(N, 2)`` lat, lon) inside each polygon (WKT, EPSG:4326, lon/lat axis order), by the rule
    of :mod:`..photos.polygons` (OGR ``Contains``: points on an edge are outside; invalid polygons are repaired
    with a warning). ``progress`` hears one step per polygon; ``should_stop`` is asked before each
    polygon and, when it says yes, :class:`~.errors.Cancelled` is raised."""
    from ..photos.polygons import PointIndex, polygon_parts

    coordinates = _as_array(coordinates)
    names = list(names) if names is not None else [f"zone {i + 1}" for i in range(len(wkts))]
    if len(names) != len(wkts):
        raise GeoCLIPError(f"{len(wkts)} polygons but {len(names)} names")
    points = PointIndex(coordinates[:, 0], coordinates[:, 1])
    stage = Stage(progress, "Finding the gallery places inside the polygons", len(wkts), "polygons")
    members = []
    for number, (wkt, name) in enumerate(zip(wkts, names)):
        done = f"{number} of {len(wkts)} done"
        stop_check(should_stop, f"cancelled while finding the gallery places inside the polygons ({done})")
        parts = polygon_parts(wkt, f"zone {name!r}")  # not a polygon, or not repairable: a named error
        members.append(np.flatnonzero(points.inside(parts, f"zone {name!r}")).astype(np.int64))
        stage.update(number + 1)
    return Zones(names, members, coordinates.shape[0])


def zonal_probabilities(probabilities, zones: Zones, photo: str = "", top: int | None = None) -> list[RegionRow]:
    """Probability per user polygon, ranked best first (polygons holding no gallery point give 0)."""
    p = _probabilities(probabilities, zones.size)
    masses = np.array([p[m].sum() for m in zones.members], dtype=np.float64)
    blank = [""] * len(zones.names)
    return _ranked(photo, ZONE, masses, zones.names, blank, blank, top, include_zero=True)


# ------------------------------------------------------------------------------------ evaluation


def country_top1_accuracy(truth_lat_lon, predicted_lat_lon) -> float:
    """Share of photos whose top-1 answer lies in the same country as the truth (both by nearest
    populated place, so a coastal answer a little offshore still counts). NaN for no photos."""
    truth, predicted = _as_array(truth_lat_lon).reshape(-1, 2), _as_array(predicted_lat_lon).reshape(-1, 2)
    if truth.shape != predicted.shape:
        raise ValueError(f"{truth.shape[0]} true positions but {predicted.shape[0]} answers")
    if truth.shape[0] == 0:
        return float("nan")
    table = gazetteer()
    truth_country = table.country[table.nearest(truth[:, 0], truth[:, 1])[0]]
    predicted_country = table.country[table.nearest(predicted[:, 0], predicted[:, 1])[0]]
    return float(np.mean(truth_country == predicted_country))
