"""Areas by name: countries and first-level regions (states, provinces, régions), offline.

A point is in a country (or region) when its nearest populated place in the GeoNames gazetteer of
:mod:`.places` is: the very rule by which :mod:`.regions` sums an answer's probability by country and
region, so an answer restricted to France puts all of its probability in France's row of that table. The
rule follows populated places, not surveyed borders: near a border a point takes its nearest town's
country, and open sea its nearest coast's.

Names are matched without regard to case or accents ("cote d'ivoire" finds "Côte d'Ivoire"), countries
by name or ISO code, regions by name alone where only one country has it, else as "Region, Country".
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass

import numpy as np

from ..errors import GeoCLIPError
from ..photos.area import Area
from .places import gazetteer


@dataclass(frozen=True)
class NamedArea(Area):
    """Countries (ISO codes) and regions ((ISO code, region name)) by name; inside any of them is inside."""

    country_codes: tuple[str, ...] = ()
    regions: tuple[tuple[str, str], ...] = ()

    def contains(self, lat, lon) -> np.ndarray:
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        table = gazetteer()
        index, _ = table.nearest(lat.reshape(-1), lon.reshape(-1))
        wanted_countries = [i for i, code in enumerate(table.country_codes) if code in self.country_codes]
        keys = set(self.regions)
        wanted_regions = [
            i for i, name in enumerate(table.regions) if (table.country_codes[table.region_country[i]], name) in keys
        ]
        inside = np.isin(table.country[index], wanted_countries) | np.isin(table.region[index], wanted_regions)
        return inside.reshape(lat.shape)

    @property
    def names(self) -> list[str]:
        """What the area was asked as, for the run's provenance (read back by :func:`named_area`)."""
        return [f"country:{code}" for code in self.country_codes] + [f"region:{c}:{r}" for c, r in self.regions]


def _folded(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).split())


def country_names() -> list[str]:
    """Every country's name, sorted, for a list to choose from."""
    return sorted(set(gazetteer().countries), key=_folded)


def region_names() -> list[str]:
    """Every first-level region as "Region, Country", sorted, for a list to choose from."""
    table = gazetteer()
    shown = {_region_label(table, i) for i in range(len(table.regions))}
    return sorted(shown, key=_folded)


def _region_label(table, index: int) -> str:
    country = table.countries[table.region_country[index]]
    name = table.regions[index]
    return name if name == country else f"{name}, {country}"


def find_country(name: str) -> str:
    """The ISO code of a country named (or coded) ``name``; a named error with the closest names else."""
    table = gazetteer()
    wanted = _folded(name)
    for code, country in zip(table.country_codes, table.countries):
        if wanted in (_folded(country), _folded(code)):
            return code
    raise GeoCLIPError(f"no country is called {name!r}{_suggest(wanted, table.countries)}")


def find_region(name: str) -> tuple[str, str]:
    """(ISO code, region) of a first-level region named ``name`` ("Bavaria" or "Bavaria, Germany")."""
    table = gazetteer()
    wanted = _folded(name)
    labels = [_region_label(table, i) for i in range(len(table.regions))]
    found = [i for i, label in enumerate(labels) if _folded(label) == wanted]
    if not found:
        found = [i for i, region in enumerate(table.regions) if _folded(region) == wanted]
    if len(found) > 1:
        shown = ", ".join(sorted(labels[i] for i in found)[:6])
        raise GeoCLIPError(f"several regions are called {name!r} ({shown}): name it with its country")
    if not found:
        raise GeoCLIPError(f"no first-level region is called {name!r}{_suggest(wanted, labels)}")
    index = found[0]
    return table.country_codes[table.region_country[index]], table.regions[index]


def _suggest(wanted: str, names: list[str]) -> str:
    folded = {_folded(n): n for n in names}
    close = difflib.get_close_matches(wanted, list(folded), n=3, cutoff=0.75)
    return f" (did you mean {', '.join(repr(folded[c]) for c in close)}?)" if close else ""


def named_area(countries: list[str] = (), regions: list[str] = ()) -> NamedArea | None:
    """The area of the countries and regions named (None when none is), checked against the gazetteer."""
    codes = tuple(dict.fromkeys(find_country(n) for n in countries if n.strip()))
    keys = tuple(dict.fromkeys(find_region(n) for n in regions if n.strip()))
    if not codes and not keys:
        return None
    return NamedArea(label=_label(codes, keys), country_codes=codes, regions=keys)


def _label(codes, keys) -> str:
    """ "France; Bavaria, Germany": what the run records and shows as its area."""
    table = gazetteer()
    country = {code: name for code, name in zip(table.country_codes, table.countries)}
    shown = [country[c] for c in codes] + [r if r == country[c] else f"{r}, {country[c]}" for c, r in keys]
    return "; ".join(shown)


def area_from_names(names: list[str]) -> NamedArea:
    """The area a run recorded as :attr:`NamedArea.names`; a named error for anything else."""
    codes, keys = [], []
    table = gazetteer()
    for entry in names:
        kind, _, rest = str(entry).partition(":")
        if kind == "country" and rest in table.country_codes:
            codes.append(rest)
        elif kind == "region" and ":" in rest and rest.split(":", 1)[0] in table.country_codes:
            keys.append(tuple(rest.split(":", 1)))
        else:
            raise GeoCLIPError(f"the recorded area name {entry!r} is not a country or region of the gazetteer")
    return NamedArea(label=_label(codes, keys), country_codes=tuple(codes), regions=tuple(keys))
