"""What QGIS hands the plugin, turned into what the engine takes: areas of interest in EPSG:4326 from
an extent, polygons or country and region names, photo paths from a point layer, the kind of candidates
and the hint. Shared by the dock and the Processing algorithms."""

from __future__ import annotations

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject

from ..backend.results import MAX_PLACES

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
PHOTO_FIELD_NAMES = ("photo", "path", "filepath", "file", "filename")  # "photo": QGIS's geotagged photo layer


# The kinds of candidates offered, (key, words), in the order the dock's combo and Processing's enum list them.
CANDIDATES = (
    ("refined", "Distinct places, refined"),
    ("distinct", "Distinct places at gallery points"),
    ("gallery", "Gallery points (as GeoCLIP's release)"),
)
MAX_GALLERY_POINTS = 100  # GeoCLIP's release answers with any number; more than this is no list to read


class InputError(ValueError):
    """The user's choice in QGIS cannot be used as it is; the message says why."""


def place_options(choice: str):
    """The engine's PlaceOptions for a key of :data:`CANDIDATES`."""
    from ..backend.model.place_options import GALLERY_POINTS, PlaceOptions

    if choice == "gallery":
        return GALLERY_POINTS
    return PlaceOptions(distinct=True, refine=choice != "distinct")


def top_k_limit(choice: str) -> int:
    """The most candidates an answer may list with this kind of candidates."""
    return MAX_GALLERY_POINTS if choice == "gallery" else MAX_PLACES


def hint_from(text: str, weight: float):
    """The engine's Hint for the text typed (None when there is none), checked by the engine's rule."""
    from ..backend.errors import GeoCLIPError
    from ..backend.results import Hint

    if not text.strip():
        return None
    hint = Hint(text.strip(), float(weight))
    try:
        hint.check()
    except GeoCLIPError as exc:
        raise InputError(str(exc)) from None
    return hint


def area_name_choices() -> list[str]:
    """Every country, then every first-level region ("Region, Country"), as the engine names them."""
    from ..backend.earth.named_areas import country_names, region_names

    return list(dict.fromkeys([*country_names(), *region_names()]))


def area_from_names(names: list[str]):
    """The area of the countries and first-level regions named: each name a country when the engine knows
    a country by it, else a region ("Bavaria" or "Bavaria, Germany"). None when no name is given."""
    from ..backend.earth.named_areas import find_country, find_region, named_area
    from ..backend.errors import GeoCLIPError

    countries, regions = [], []
    for name in (n.strip() for n in names):
        if not name:
            continue
        try:
            find_country(name)
            countries.append(name)
            continue
        except GeoCLIPError as exc:
            not_country = str(exc)
        try:
            find_region(name)
        except GeoCLIPError as exc:
            # the engine's words, with its suggestions (or why the name is ambiguous) where it has some
            said = [text for text in (not_country, str(exc)) if "(" in text]
            raise InputError("; ".join(said) or f"no country or first-level region is called {name!r}") from None
        regions.append(name)
    try:
        return named_area(countries, regions)
    except GeoCLIPError as exc:
        raise InputError(str(exc)) from None


def area_from_extent(extent, crs, transform_context=None, label: str = "map extent"):
    """A box area from a rectangle in ``crs``, clipped to the world."""
    from ..backend.photos.area import Area

    transform = QgsCoordinateTransform(crs, WGS84, transform_context or QgsProject.instance().transformContext())
    box = transform.transformBoundingBox(extent)
    west, east = max(box.xMinimum(), -180.0), min(box.xMaximum(), 180.0)
    south, north = max(box.yMinimum(), -90.0), min(box.yMaximum(), 90.0)
    if not (west < east and south < north):
        raise InputError("the extent does not cover any part of the world")
    area = Area.from_bbox((west, south, east, north))
    return Area(f"{label} {west:.3f},{south:.3f},{east:.3f},{north:.3f}", area.bbox)


def area_from_polygons(features, crs, name: str):
    """The union of the features' polygons, reprojected to EPSG:4326 by the engine's rule (a polygon
    beyond its coordinate system's valid area is refused, not wrapped)."""
    from ..backend.photos.area import Area

    geometries = [f.geometry() for f in features if f.hasGeometry()]
    if not geometries:
        raise InputError(f"{name} has no polygons to use as the area of interest")
    from ..backend.errors import GeoCLIPError
    from ..backend.photos.polygons import wkt_to_wgs84

    union = QgsGeometry.unaryUnion(geometries)
    try:  # the engine's rule: reprojected, and checked to lie on the Earth
        wkt = wkt_to_wgs84(union.asWkt(), crs.toWkt(), name)
    except GeoCLIPError as exc:
        raise InputError(str(exc)) from None
    return Area.from_wkt(wkt, label=f"{name} ({len(geometries)} polygons)")


def guess_photo_field(fields) -> str:
    """The field of a point layer that most likely holds photo paths ("" when none does)."""
    names = {field.name().lower(): field.name() for field in fields}
    return next((names[n] for n in PHOTO_FIELD_NAMES if n in names), "")


def photo_paths(features, field: str) -> list[str]:
    """The photo paths in ``field`` of these features, in order, without empty values or repeats."""
    seen, paths = set(), []
    for feature in features:
        value = feature[field]
        if value is None or not str(value).strip() or str(value) == "NULL":
            continue
        path = str(value)
        if path not in seen:
            seen.add(path)
            paths.append(path)
    return paths
