"""Command line for judging and documenting answers already in a run's GeoPackage:

    geoclip-qgis report run.gpkg --out report.html            # a self-contained HTML case report
    geoclip-qgis likely run.gpkg villages.gpkg > likely.csv   # "which of these places?" per answer

Both read the file back (:mod:`.run_file`); ``likely`` makes each answer's probability rasters again
from the query vector the file keeps (the location encoder only: no photo is read, no CLIP runs).
"""

from __future__ import annotations

import argparse
import csv
import sys

from .errors import GeoCLIPError

WORKBENCH_COMMANDS = ("report", "likely")


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
    likely.add_argument("--photo", action="append", metavar="NAME", help="only this answer; repeat for more")
    likely.add_argument("--layer", help="the layer of PLACES, when it has several")
    likely.add_argument("--id-field", help="the field naming each place (default: its feature id)")
    likely.add_argument("--lat-column", help="latitude column of a CSV")
    likely.add_argument("--lon-column", help="longitude column of a CSV")
    likely.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (the ones the run used)")
    likely.add_argument("--clip", metavar="DIR", help="Hugging Face CLIP checkpoint folder")
    likely.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def run_workbench_command(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    return _likely(args)


def _report(args) -> int:
    from .report import report_from_geopackage, write_html_report

    data = report_from_geopackage(args.answers, args.photo, args.title)
    if not data.answers:
        raise GeoCLIPError(f"{args.answers} holds no answer{' for those photos' if args.photo else ''}")
    try:
        path = write_html_report(data, args.out)
    except OSError as exc:
        raise GeoCLIPError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(path)
    return 0


def _likely(args) -> int:
    from .factory import build_engine
    from .likelihood import for_answer
    from .location_embeddings import read_points
    from .run_file import read_answers, read_provenance, run_area

    answers = [a for a in read_answers(args.answers, args.photo) if a.result.feature is not None]
    if not answers:
        raise GeoCLIPError(
            f"{args.answers} keeps no query vector{' for those photos' if args.photo else ''}; "
            "answer the photos again into a GeoPackage"
        )
    table = read_points(args.points, args.layer, args.lat_column, args.lon_column, args.id_field)
    if not len(table):
        raise GeoCLIPError(f"{args.points} holds no place with a position")
    points = [(str(i), float(a), float(b)) for i, a, b in zip(table.ids, table.lat, table.lon)]
    engine = build_engine(heads=args.heads, clip=args.clip, device=args.device, precision="fp32", embedding_cache=False)
    area = run_area(read_provenance(args.answers))  # the same area of interest as the run
    rows = csv.writer(sys.stdout, lineterminator="\n")
    header = None
    for answer in answers:
        for found in for_answer(engine, answer.result, points, area):
            row = found.row()
            if header is None:
                header = ["photo", *row]
                rows.writerow(header)
            rows.writerow([answer.photo, *("" if v is None else v for v in row.values())])
    return 0
