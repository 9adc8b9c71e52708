"""The command line's arguments: ``predict``, ``evaluate``, ``text``, ``finetune``, ``models``, ``cache``,
with the workbench's and the location tools' commands (:mod:`.workbench`, :mod:`.location`)."""

from __future__ import annotations

import argparse

from ..version import __version__
from .location import add_location_commands
from .workbench import add_workbench_commands


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (weights/*.pth, gps_gallery/*.csv)")
    parser.add_argument("--clip", metavar="DIR", help="Hugging Face CLIP checkpoint folder")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="precision of the CLIP tower and the location-encoder grid; auto = bf16/fp16 on GPU, bf16 on CPUs "
        "with native bf16",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not keep the photos' CLIP embeddings on disk (nothing about them is stored)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="photos per batch (default: 8 on CPU, by free memory on GPU)",
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        metavar="N",
        help="threads decoding and preparing photos (default: one per core with a GPU, 1 per 16 cores on CPU)",
    )


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates per photo (default 5)")
    parser.add_argument("--out", metavar="FILE", help="write .csv, .gpkg or .geojson (default: CSV on stdout)")
    parser.add_argument("--rasters", metavar="DIR", help="also write probability GeoTIFFs (world + local) here")
    parser.add_argument("--world-cell", type=float, default=0.25, metavar="DEG", help="world raster cell (0.25)")
    parser.add_argument("--local-cell", type=float, default=0.01, metavar="DEG", help="local raster cell (0.01)")
    parser.add_argument(
        "--regions",
        type=int,
        default=1,
        metavar="N",
        help="local rasters around the N most probable places (1), plus the top-1 answer's own if it lies elsewhere",
    )
    parser.add_argument(
        "--world-rasters",
        choices=["combined", "each"],
        default="combined",
        help="one world raster for the whole run, the mean of its answers (combined, default), "
        "or one per answer (each)",
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="also each answer's confidence areas: the smallest areas holding 50 %% and 90 %% of its probability, "
        "as polygons with their size in km² (GeoPackage output)",
    )
    area = parser.add_mutually_exclusive_group()
    area.add_argument(
        "--area",
        metavar="W,S,E,N",
        help="only places inside this box (degrees); write --area=-10,35,30,60 when W is negative",
    )
    area.add_argument("--area-file", metavar="FILE", help="only places inside the polygons of this vector file")
    parser.add_argument("--area-layer", metavar="NAME", help="the layer of --area-file to use, when it has several")
    parser.add_argument(
        "--country",
        action="append",
        default=[],
        metavar="NAME",
        help="only places in this country (name or ISO code; repeat for several)",
    )
    parser.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="NAME",
        help='only places in this first-level region ("Bavaria" or "Bavaria, Germany"; repeat for several)',
    )
    _add_place_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    _add_run_options(parser)


def _add_place_options(parser: argparse.ArgumentParser, evaluating: bool = False) -> None:
    from ..model.place_options import MERGE_KM
    from ..results import HINT_WEIGHT, MAX_PLACES

    if evaluating:  # the paper's protocol by default: the gallery's top-1 point
        parser.add_argument(
            "--places",
            action="store_true",
            help="score distinct places (the gallery's probability grouped) instead of the gallery's top-1 point",
        )
        parser.add_argument(
            "--refine",
            action="store_true",
            help="score distinct places refined on the location encoder, beside their gallery points",
        )
    else:
        parser.add_argument(
            "--gallery-points",
            action="store_true",
            help="answer with the gallery's top-k points as GeoCLIP's release does, not distinct places "
            f"(places: at most {MAX_PLACES})",
        )
        parser.add_argument(
            "--no-refine", action="store_true", help="keep each place at its gallery point (no refinement)"
        )
    parser.add_argument(
        "--merge-km",
        type=float,
        default=MERGE_KM,
        metavar="KM",
        help=f"gallery points closer than this are one place ({MERGE_KM:g})",
    )
    parser.add_argument("--hint", metavar="TEXT", help='what you know of the place, e.g. "a harbour town in Brazil"')
    parser.add_argument(
        "--hint-weight",
        type=float,
        default=HINT_WEIGHT,
        metavar="W",
        help=f"how much the hint weighs against the photo ({HINT_WEIGHT:g}; 1 = as much as the photo)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoclip-qgis", description="Geolocate photos with GeoCLIP, offline.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="top-k locations for photos or folders of photos")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders (walked recursively)")
    predict.add_argument(
        "--fuse", action="store_true", help="also give one joint answer for all photos (photos known to show one place)"
    )
    predict.add_argument(
        "--skip-geotagged", action="store_true", help="do not answer photos that already have EXIF GPS"
    )
    predict.add_argument(
        "--redo", action="store_true", help="answer every photo again, even those a .gpkg --out already holds"
    )
    predict.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster: 'local' starts one here, 'auto' or ray://host:port joins one",
    )
    predict.add_argument(
        "--workers", type=int, default=1, metavar="N", help="engine actors on Ray (one per GPU, or per CPU worker)"
    )
    _add_query_options(predict)

    evaluate = commands.add_parser("evaluate", help="accuracy at 1/25/200/750/2500 km against known positions")
    evaluate.add_argument(
        "data",
        metavar="CSV_OR_FOLDER",
        help="a CSV with photo,lat,lon columns (e.g. Im2GPS3k's IMG_ID,LAT,LON), or a folder of photos with EXIF GPS",
    )
    evaluate.add_argument("--images", metavar="DIR", help="folder the CSV's photo names are relative to")
    evaluate.add_argument("--report", metavar="FILE.json", help="also write the table as JSON")
    evaluate.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates kept per photo (default 5)")
    evaluate.add_argument("--out", metavar="FILE", help="per-photo answers as .csv, .gpkg or .geojson")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    _add_place_options(evaluate, evaluating=True)
    evaluate.add_argument(
        "--preprocessing",
        choices=("engine", "release"),
        default="engine",
        help="engine (default): photos turned upright, transparency on white, large JPEGs decoded reduced; "
        "release: decoded exactly as the official GeoCLIP.predict() does, for the paper's protocol",
    )
    _add_run_options(evaluate)

    text = commands.add_parser("text", help="top-k locations for a text description (CLIP's text tower)")
    text.add_argument("queries", nargs="+", metavar="QUERY", help='e.g. "a tropical beach with palm trees"')
    _add_query_options(text)

    tune = commands.add_parser("finetune", help="adapt GeoCLIP's heads to your own geotagged photos")
    tune.add_argument(
        "data", nargs="+", metavar="PHOTOS_OR_CSV", help="photos/folders with EXIF GPS, or one CSV of photo,lat,lon"
    )
    tune.add_argument("--out", required=True, metavar="DIR", help="the new heads folder (loads with --heads DIR)")
    tune.add_argument("--images", metavar="DIR", help="folder the CSV's photo names are relative to")
    tune.add_argument("--epochs", type=int, default=20)
    tune.add_argument("--train-batch", type=int, default=256, metavar="N", help="photos per training step (256)")
    tune.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    tune.add_argument("--queue-size", type=int, default=4096, help="GPS queue of extra negatives (4096, as released)")
    tune.add_argument("--val-fraction", type=float, default=0.2, help="share of photos held out (0.2)")
    tune.add_argument("--patience", type=int, default=4, help="epochs without gain at 25 km before stopping (4)")
    tune.add_argument(
        "--val-candidates",
        type=int,
        default=None,
        metavar="N",
        help="rank validation photos over N gallery places (default: the whole gallery)",
    )
    tune.add_argument("--extend-gallery", action="store_true", help="add the training photos' positions to the gallery")
    tune.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tune.add_argument("--quiet", action="store_true")
    _add_run_options(tune)

    add_location_commands(commands)
    add_workbench_commands(commands)

    cache = commands.add_parser("cache", help="what the cache folder holds, and clearing it")
    cache_actions = cache.add_subparsers(dest="action", required=True)
    cache_actions.add_parser("status", help="the cache folder and the size of each part")
    clear = cache_actions.add_parser("clear", help="delete the cache (photo embeddings and location features)")
    clear.add_argument("--photos-only", action="store_true", help="delete only the photos' CLIP embeddings")

    models = commands.add_parser("models", help="where weights are, and how to get them")
    actions = models.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="what was found where, with sizes and checksums")
    _add_model_options(status)
    status.add_argument("--no-checksums", action="store_true", help="skip sha256 (faster)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    actions.add_parser("download", help="download the CLIP backbone (the only command that uses the network)")
    importer = actions.add_parser(
        "import", help="copy heads and/or a CLIP folder (or a .zip bundle) into the models folder"
    )
    importer.add_argument("path", metavar="PATH")
    exporter = actions.add_parser(
        "export", help="write heads + backbone + sha256 manifest to one .zip for offline machines"
    )
    exporter.add_argument("path", metavar="BUNDLE.zip")
    exporter.add_argument("--heads-only", action="store_true", help="leave the CLIP backbone out")
    _add_model_options(exporter)
    return parser
