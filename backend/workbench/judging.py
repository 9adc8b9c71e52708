"""Judging answers already in a run's GeoPackage, one answer at a time: probability per user polygon
("which of these districts?") and "how likely here?" for user points ("which of these villages?").

Shared by the command line (``geoclip-qgis zones``, ``geoclip-qgis likely``) and the plugin's
Processing algorithms. Each answer is judged from the query vector the file keeps, in the run's own
area of interest: the gallery softmax for polygons, the probability rasters made again for points
(the location encoder only; no photo is read, no CLIP runs). Both yield one answer at a time, so a
caller can report progress and stop between answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..earth.likelihood import RADII_KM, Likelihood, for_answer
from ..earth.regions import RegionRow, Zones, zonal_probabilities, zones_of
from ..errors import GeoCLIPError
from ..progress import ProgressCallback, ShouldStop
from .run_file import StoredAnswer, read_answers, read_provenance, run_area

ZONE_COLUMNS = ("photo", "zone", "probability", "rank")
LIKELY_COLUMNS = (
    *(f"mass_within_{radius:g}km" for radius in RADII_KM),
    "density_ratio",
    "rank",
    "cells",
    "credible_level",
)


def file_name(photo: str) -> str:
    """The last part of a photo's path (either separator)."""
    return re.split(r"[\\/]", photo)[-1]


def answers_with_vectors(path: str | os.PathLike, photos: Sequence[str] | None = None) -> list[StoredAnswer]:
    """The file's answers that keep a query vector, in the order written; with ``photos``, only those
    whose photo is named there, as the file writes it or by its file name alone."""
    wanted = {p for p in photos or () if p} or None
    answers = [
        a
        for a in read_answers(path)
        if a.result.feature is not None and (wanted is None or a.photo in wanted or file_name(a.photo) in wanted)
    ]
    if not answers:
        raise GeoCLIPError(
            f"{path} keeps no query vector{' for ' + ', '.join(sorted(wanted)) if wanted else ''}; "
            "answer the photos again into a GeoPackage"
        )
    return answers


def area_of_run(path: str | os.PathLike):
    """The area of interest the run used (None: the whole world), so answers are judged as they were made."""
    return run_area(read_provenance(path))


@dataclass
class ZonalAnswer:
    """One answer's probability per polygon."""

    answer: StoredAnswer
    rows: list[RegionRow]  # every polygon, ranked best first (rank 1: the most probable)
    probabilities: list[float]  # per polygon, in the order the polygons were given
    ranks: list[int]  # per polygon, in that order


def zonal_for_answers(
    engine,
    answers: Sequence[StoredAnswer],
    wkts: Sequence[str],
    names: Sequence[str] | None = None,
    area=None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> Iterator[ZonalAnswer]:
    """Per answer, its probability in each polygon (WKT, EPSG:4326, lon/lat): the gallery softmax
    summed over the gallery places inside (:func:`..earth.regions.zonal_probabilities`; 0 for a polygon holding
    none). Which places lie in which polygon is worked out once, before the first answer, reporting to
    ``progress`` per polygon and stopping when ``should_stop`` says so (:func:`..earth.regions.zones_of`)."""
    zones = zones_of(engine.gallery.coordinates, wkts, names, progress, should_stop)
    by_index = Zones([str(i) for i in range(len(zones.names))], zones.members, zones.size)  # names may repeat
    for answer in answers:
        probabilities = engine.gallery_probabilities(answer.result.feature, area)
        ranked = zonal_probabilities(probabilities, by_index, answer.photo)
        mass, rank = [0.0] * len(zones.names), [0] * len(zones.names)
        rows = []
        for row in ranked:
            index = int(row.region)
            mass[index], rank[index] = row.probability, row.rank
            rows.append(replace(row, region=zones.names[index]))
        yield ZonalAnswer(answer, rows, mass, rank)


def likely_for_answers(
    engine, answers: Sequence[StoredAnswer], points: Sequence[tuple[str, float, float]], area=None
) -> Iterator[tuple[StoredAnswer, list[Likelihood]]]:
    """Per answer, "how likely here?" for each point ``(id, lat, lon)``, in the points' order."""
    for answer in answers:
        yield answer, for_answer(engine, answer.result, points, area)


def likely_values(found: Likelihood) -> list:
    """The :data:`LIKELY_COLUMNS` of one point and answer (None for no rank or level: outside the area)."""
    row = found.row()
    values = [row[column] for column in LIKELY_COLUMNS]
    return [None if isinstance(v, float) and v != v else v for v in values]


def read_polygons(
    path: str | os.PathLike, layer: str | None = None, name_field: str | None = None
) -> tuple[list[str], list[str]]:
    """The polygons of one layer of a vector file (any OGR format), reprojected to EPSG:4326, as WKT
    (curves made straight), with their names: the ``name_field`` value, else the feature id. Features
    without a polygon are left out."""
    from osgeo import ogr

    from ..geo import transform_to_wgs84
    from ..photos.polygons import to_wgs84

    source = ogr.Open(os.fspath(path))
    if source is None:
        raise GeoCLIPError(f"cannot open {path} as a vector file")
    polygonal = (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface)
    layers = [source.GetLayer(i) for i in range(source.GetLayerCount())]
    if layer is not None:
        chosen = source.GetLayerByName(layer)
        if chosen is None:
            raise GeoCLIPError(f"{path} has no layer {layer!r} (its layers: {', '.join(x.GetName() for x in layers)})")
    else:
        candidates = [x for x in layers if ogr.GT_Flatten(x.GetGeomType()) in polygonal]
        if len(candidates) != 1:
            names = ", ".join(x.GetName() for x in candidates)
            raise GeoCLIPError(
                f"{path} holds no polygon layer" if not candidates else f"{path} has polygon layers {names}: choose one"
            )
        chosen = candidates[0]
    defn = chosen.GetLayerDefn()
    name_index = -1
    if name_field:
        fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        name_index = defn.GetFieldIndex(name_field)
        if name_index < 0:
            raise GeoCLIPError(f"{path}: no field {name_field!r} (fields: {', '.join(fields) or 'none'})")
    transform = transform_to_wgs84(chosen.GetSpatialRef())
    wkts, names = [], []
    for feature in chosen:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            continue
        geometry = geometry.GetLinearGeometry() if geometry.HasCurveGeometry() else geometry.Clone()
        if ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
            continue
        to_wgs84(geometry, transform, f"{path}: feature {feature.GetFID()}")
        geometry.FlattenTo2D()
        wkts.append(geometry.ExportToWkt())
        named = feature.GetField(name_index) if name_index >= 0 and feature.IsFieldSetAndNotNull(name_index) else None
        names.append(str(feature.GetFID()) if named is None or str(named) == "" else str(named))
    if not wkts:
        raise GeoCLIPError(f"layer {chosen.GetName()} of {path} holds no polygons")
    return wkts, names
