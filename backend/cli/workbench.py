"""Command line for judging and documenting answers already in a run's GeoPackage:

    geoclip-qgis report run.gpkg --out report.html            # a self-contained HTML case report
    geoclip-qgis likely run.gpkg villages.gpkg > likely.csv   # "which of these places?" per answer
    geoclip-qgis zones run.gpkg districts.gpkg > zones.csv    # "which of these districts?" per answer

All read the file back (:mod:`..workbench.run_file`); ``likely`` and ``zones`` judge each answer from the query
vector the file keeps, in the run's area (:mod:`..workbench.judging`, shared with the plugin's Processing
algorithms): the location encoder only, no photo is read, no CLIP runs.

The file may come from someone else: rows it holds that cannot be used are left out and named on
stderr (and in the report); ``report`` never overwrites a file it did not make, nor the GeoPackage it
reads; every CSV cell goes through :func:`..csv_safety.csv_cell` (no spreadsheet formulas); places that
``likely`` cannot judge are named on stderr and as rows with their reason in the ``skipped`` column.
"""

from __future__ import annotations

import argparse
import csv
import sys

from ..csv_safety import csv_row
from ..errors import GeoCLIPError

WORKBENCH_COMMANDS = ("report", "likely", "zones")


def add_workbench_commands(subparsers) -> None:
    report = subparsers.add_parser("report", help="an HTML case report of a run's GeoPackage (works without QGIS)")
    report.add_argument("answers", metavar="RUN.gpkg", help="a GeoPackage written by a run")
    report.add_argument("--out", required=True, metavar="REPORT.html", help="the report to write")
    report.add_argument(
        "--photo", action="append", metavar="NAME", help="only this photo (as the file names it); repeat for more"
    )
    report.add_argument("--title", help="the report's title")

    likely = subparsers.add_parser(
        "likely",
        help="how likely each of some places is, for each answer of a run (probability within 1, 25 and 200 km, "
        "density relative to the best place, rank among all world cells)",
    )
    likely.add_argument("answers", metavar="RUN.gpkg", help="a GeoPackage written by a run")
    likely.add_argument("points", metavar="PLACES", help="the places to test: a point layer or a CSV of lat/lon")
    likely.add_argument(
        "--photo", action="append", metavar="NAME", help="only this answer (its photo, or file name); repeat for more"
    )
    likely.add_argument("--layer", help="the layer of PLACES, when it has several")
    likely.add_argument("--id-field", help="the field naming each place (default: its feature id)")
    likely.add_argument("--lat-column", help="latitude column of a CSV")
    likely.add_argument("--lon-column", help="longitude column of a CSV")
    _add_model_arguments(likely)

    zones = subparsers.add_parser(
        "zones",
        help="probability by region: each answer's probability inside each polygon of a layer, ranked "
        "(CSV photo,zone,probability,rank on stdout)",
    )
    zones.add_argument("answers", metavar="RUN.gpkg", help="a GeoPackage written by a run")
    zones.add_argument("polygons", metavar="POLYGONS", help="the regions: a polygon layer (any OGR format, any CRS)")
    zones.add_argument(
        "--photo", action="append", metavar="NAME", help="only this answer (its photo, or file name); repeat for more"
    )
    zones.add_argument("--layer", help="the layer of POLYGONS, when it has several")
    zones.add_argument("--name-field", help="the field naming each polygon (default: its feature id)")
    _add_model_arguments(zones)


def _add_model_arguments(parser) -> None:
    parser.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (the ones the run used)")
    # accepted as before, but unused: the answers' stored query vectors need only the heads
    parser.add_argument("--clip", metavar="DIR", help="not needed (the run's query vectors need only the heads)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="precision of the location-encoder grid the densities are read from (as predict's --precision)",
    )


def run_workbench_command(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    if args.command == "zones":
        return _zones(args)
    return _likely(args)


def _engine(args):
    """GeoCLIP's heads and gallery alone: answers are judged from their stored query vectors, so no CLIP
    backbone is sought or loaded (a machine that only judges a colleague's run needs none)."""
    from ..model.factory import build_engine

    return build_engine(
        heads=args.heads, device=args.device, precision=args.precision, embedding_cache=False, backbone=False
    )


NOTES_ON_STDERR = 20  # rows left out that stderr names one by one (then how many more)


def _say(text: str) -> None:
    """One line on stderr, with anything from the file written out as escapes."""
    from ..shown_text import printable

    print("geoclip-qgis: " + printable(text), file=sys.stderr)


def _report(args) -> int:
    from ..workbench.report import check_report_path, report_from_geopackage, shown_notes, write_html_report

    check_report_path(args.out, args.answers)  # before any work: never the input, never a file not ours
    data = report_from_geopackage(args.answers, args.photo, args.title)
    for note in shown_notes(data.notes, NOTES_ON_STDERR):
        _say(note)
    if not data.answers:
        raise GeoCLIPError(f"{args.answers} holds no answer{' for those photos' if args.photo else ''}")
    try:
        path = write_html_report(data, args.out, source=args.answers)
    except OSError as exc:
        raise GeoCLIPError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(path)
    return 0


def _likely(args) -> int:
    from ..earth.likelihood import SkippedPlace, unread_places
    from ..location.point_embeddings import read_points
    from ..workbench.judging import answers_with_vectors, area_of_run, likely_for_answers

    answers = answers_with_vectors(args.answers, args.photo)
    table = read_points(args.points, args.layer, args.lat_column, args.lon_column, args.id_field)
    skipped = unread_places(args.points, args.layer, args.lat_column, args.lon_column, args.id_field)
    if table.skipped > len(skipped):  # cannot happen unless the two readings disagree: still say so
        skipped.append(SkippedPlace("", f"{table.skipped - len(skipped)} more place(s) without a usable position"))
    for place in skipped:
        _say(f"place {place.id} skipped: {place.reason}")
    if not len(table):
        raise GeoCLIPError(f"{args.points} holds no place with a position")
    points = [(str(i), float(a), float(b)) for i, a, b in zip(table.ids, table.lat, table.lon)]
    engine = _engine(args)
    rows = csv.writer(sys.stdout, lineterminator="\n")
    header = None
    for answer, found in likely_for_answers(engine, answers, points, area_of_run(args.answers)):
        for place in found:
            row = place.row()
            if header is None:
                header = ["photo", *row, "skipped"]
                rows.writerow(header)
            rows.writerow(csv_row([answer.photo, *row.values(), None]))
        for place in skipped:  # the places not judged, with why, in the same table
            rows.writerow(csv_row([answer.photo, place.id, *[None] * (len(header) - 3), place.reason]))
    return 0


def _zones(args) -> int:
    from ..workbench.judging import ZONE_COLUMNS, answers_with_vectors, area_of_run, read_polygons, zonal_for_answers

    answers = answers_with_vectors(args.answers, args.photo)
    wkts, names = read_polygons(args.polygons, args.layer, args.name_field)
    engine = _engine(args)
    rows = csv.writer(sys.stdout, lineterminator="\n")
    rows.writerow(ZONE_COLUMNS)
    for judged in zonal_for_answers(engine, answers, wkts, names, area_of_run(args.answers)):
        for row in judged.rows:
            rows.writerow(csv_row([row.photo, row.region, row.probability, row.rank]))
    return 0
