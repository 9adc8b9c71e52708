"""Command line: ``geoclip-qgis predict|models ...`` (also ``python -m geoclip_qgis.backend``).

Exit status: 0 when the run finished and at least one photo was answered (or there were none),
1 when every photo failed, 2 for a problem with the command or the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timezone

from .errors import GeoCLIPError
from .version import __version__

PROGRESS_THRESHOLD = 3  # show a progress bar for more photos than this


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (weights/*.pth, gps_gallery/*.csv)")
    parser.add_argument("--clip", metavar="DIR", help="Hugging Face CLIP checkpoint folder")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="CLIP tower precision; auto = bf16/fp16 on GPU, bf16 on CPUs with native bf16")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="photos per batch (default: 8 on CPU, by free memory on GPU)")


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates per photo (default 5)")
    parser.add_argument("--out", metavar="FILE", help="write .csv, .gpkg or .geojson (default: CSV on stdout)")
    parser.add_argument("--rasters", metavar="DIR", help="also write probability GeoTIFFs (world + local) here")
    parser.add_argument("--world-cell", type=float, default=0.25, metavar="DEG", help="world raster cell (0.25)")
    parser.add_argument("--local-cell", type=float, default=0.01, metavar="DEG", help="local raster cell (0.01)")
    parser.add_argument("--regions", type=int, default=1, metavar="N",
                        help="local rasters around the N most probable places (1), plus the top-1 answer's "
                             "own if it lies elsewhere")
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--area", metavar="W,S,E,N",
                      help="only places inside this box (degrees); write --area=-10,35,30,60 when W is negative")
    area.add_argument("--area-file", metavar="FILE", help="only places inside the polygons of this vector file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    _add_run_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoclip-qgis", description="Geolocate photos with GeoCLIP, offline.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="top-k locations for photos or folders of photos")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders (walked recursively)")
    predict.add_argument("--fuse", action="store_true",
                         help="also give one joint answer for all photos (photos known to show one place)")
    predict.add_argument("--skip-geotagged", action="store_true",
                         help="do not answer photos that already have EXIF GPS")
    predict.add_argument("--redo", action="store_true",
                         help="answer every photo again, even those a .gpkg --out already holds")
    predict.add_argument("--ray", metavar="ADDRESS",
                         help="run on a Ray cluster: 'local' starts one here, 'auto' or ray://host:port joins one")
    predict.add_argument("--workers", type=int, default=1, metavar="N",
                         help="engine actors on Ray (one per GPU, or per CPU worker)")
    _add_query_options(predict)

    evaluate = commands.add_parser("evaluate", help="accuracy at 1/25/200/750/2500 km against known positions")
    evaluate.add_argument("data", metavar="CSV_OR_FOLDER",
                          help="a CSV with photo,lat,lon columns (e.g. Im2GPS3k's IMG_ID,LAT,LON), or a folder "
                               "of photos with EXIF GPS")
    evaluate.add_argument("--images", metavar="DIR", help="folder the CSV's photo names are relative to")
    evaluate.add_argument("--report", metavar="FILE.json", help="also write the table as JSON")
    evaluate.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates kept per photo (default 5)")
    evaluate.add_argument("--out", metavar="FILE", help="per-photo answers as .csv, .gpkg or .geojson")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    _add_run_options(evaluate)

    text = commands.add_parser("text", help="top-k locations for a text description (CLIP's text tower)")
    text.add_argument("queries", nargs="+", metavar="QUERY", help='e.g. "a tropical beach with palm trees"')
    _add_query_options(text)

    tune = commands.add_parser("finetune", help="adapt GeoCLIP's heads to your own geotagged photos")
    tune.add_argument("data", nargs="+", metavar="PHOTOS_OR_CSV",
                      help="photos/folders with EXIF GPS, or one CSV of photo,lat,lon")
    tune.add_argument("--out", required=True, metavar="DIR", help="the new heads folder (loads with --heads DIR)")
    tune.add_argument("--images", metavar="DIR", help="folder the CSV's photo names are relative to")
    tune.add_argument("--epochs", type=int, default=20)
    tune.add_argument("--train-batch", type=int, default=256, metavar="N", help="photos per training step (256)")
    tune.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    tune.add_argument("--queue-size", type=int, default=4096, help="GPS queue of extra negatives (4096, as released)")
    tune.add_argument("--val-fraction", type=float, default=0.2, help="share of photos held out (0.2)")
    tune.add_argument("--patience", type=int, default=4, help="epochs without gain at 25 km before stopping (4)")
    tune.add_argument("--val-candidates", type=int, default=None, metavar="N",
                      help="rank validation photos over N gallery places (default: the whole gallery)")
    tune.add_argument("--extend-gallery", action="store_true",
                      help="add the training photos' positions to the gallery")
    tune.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tune.add_argument("--quiet", action="store_true")
    _add_run_options(tune)

    models = commands.add_parser("models", help="where weights are, and how to get them")
    actions = models.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="what was found where, with sizes and checksums")
    _add_model_options(status)
    status.add_argument("--no-checksums", action="store_true", help="skip sha256 (faster)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    actions.add_parser("download", help=f"download the CLIP backbone (the only command that uses the network)")
    importer = actions.add_parser("import", help="copy heads and/or a CLIP folder (or a .zip bundle) into the models folder")
    importer.add_argument("path", metavar="PATH")
    exporter = actions.add_parser("export", help="write heads + backbone + sha256 manifest to one .zip for offline machines")
    exporter.add_argument("path", metavar="BUNDLE.zip")
    exporter.add_argument("--heads-only", action="store_true", help="leave the CLIP backbone out")
    _add_model_options(exporter)
    return parser


def _progress_bar(total: int, enabled: bool):
    if not enabled or total <= PROGRESS_THRESHOLD:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True)


def _area(args):
    from .area import Area

    if args.area:
        return Area.from_bbox(args.area)
    if args.area_file:
        return Area.from_file(args.area_file)
    return None


class _Run:
    """One command's outputs: rows to the writer, rasters to a folder, progress and a summary."""

    def __init__(self, args, engine, total: int):
        from .writers import open_writer

        self.args, self.engine = args, engine
        self.area = _area(args)
        run_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.writer = open_writer(args.out, engine.model_name, run_at, area=self.area.label if self.area else "",
                                  batch=engine.batch_size)
        self.bar = _progress_bar(total, not args.quiet)
        self.rasters_written = 0

    def say(self, message: str) -> None:
        if not self.args.quiet:
            (self.bar.write if self.bar else lambda m: print(m, file=sys.stderr))(message)

    def on_result(self, result) -> None:
        if result.ok and not result.skipped and self.args.rasters:
            self.write_rasters(result)
        if result.error:
            self.say(f"failed: {result.photo}: {result.error}")
        if self.bar:
            self.bar.update(1)

    def write_rasters(self, result) -> None:
        from pathlib import Path

        from .geotiff import raster_name, write_geotiff

        made = self.engine.rasters(result, self.area, self.args.regions, self.args.world_cell, self.args.local_cell)
        folder = Path(self.args.rasters)
        write_geotiff(made.world, folder / raster_name(result.photo, "world"))
        for index, local in enumerate(made.local):
            write_geotiff(local, folder / raster_name(result.photo, "local", index))
        self.rasters_written += 1 + len(made.local)

    def close(self, summary=None) -> None:
        self.writer.close()
        if self.bar:
            self.bar.close()
        if not self.args.quiet and summary is not None:
            where = f"written to {self.args.out}" if self.args.out else ""
            rasters = f"{self.rasters_written} rasters in {self.args.rasters}" if self.rasters_written else ""
            print("geoclip-qgis: " + summary.text(), file=sys.stderr)
            if where or rasters:
                print("geoclip-qgis: " + ", ".join(filter(None, (where, rasters))), file=sys.stderr)


def _engine(args, load: bool = True):
    from .engine import Engine
    from .writers import output_format

    if args.out:
        output_format(args.out)  # refuse an unknown extension before loading a model
    engine = Engine(heads=args.heads, clip=args.clip, device=args.device, precision=args.precision,
                    batch_size=args.batch_size)
    if load:  # on Ray the workers load the model; the driver only resolves weights and writes
        engine.load()
        engine.check_top_k(args.top_k)
    return engine


def _count(paths) -> int:
    from .walk import expand_paths

    return sum(1 for _ in expand_paths(paths))  # a cheap first walk, so memory stays flat


def run_predict(args) -> int:
    from .batch import run_photos
    from .walk import expand_paths

    total = _count(args.paths)
    engine = _engine(args, load=not args.ray)
    if not args.quiet:
        print(f"geoclip-qgis: {total} photo(s), {engine.model_name} on {engine.device}", file=sys.stderr)
    run = _Run(args, engine, total)
    answered = []

    def on_result(result):
        run.on_result(result)
        if args.fuse and result.ok and not result.skipped:
            answered.append(result)

    summary = None
    try:
        if args.ray:
            from .distributed import run_photos_on_ray

            if run.area or args.rasters:
                raise GeoCLIPError("--area and --rasters are not available with --ray yet")
            options = {"heads": args.heads, "clip": str(engine.clip_dir), "device": args.device,
                       "precision": args.precision, "batch_size": engine.batch_size}
            summary = run_photos_on_ray(expand_paths(args.paths), run.writer, options, args.top_k,
                                        None if args.ray == "local" else args.ray, args.workers,
                                        engine.batch_size, not args.redo, args.skip_geotagged, on_result)
        else:
            summary = run_photos(engine, expand_paths(args.paths), run.writer, args.top_k, run.area,
                                 resume=not args.redo, skip_geotagged=args.skip_geotagged, on_result=on_result)
        if args.fuse and answered:
            fused = engine.fuse(answered, args.top_k, run.area)
            run.writer.write(fused)
            run.on_result(fused)
    finally:
        run.close(summary)
    if summary is not None and summary.answered == 0 and summary.failed:
        return 1
    return 0


def run_text(args) -> int:
    from .batch import RunSummary

    engine = _engine(args)
    run = _Run(args, engine, len(args.queries))
    summary = RunSummary()
    try:
        for result in engine.predict_text(args.queries, args.top_k, run.area):
            run.writer.write(result)
            summary.add(result)
            run.on_result(result)
    finally:
        run.close(summary)
    return 0


def run_evaluate(args) -> int:
    """Top-1 accuracy against known positions: a CSV of (photo, lat, lon), or photos' EXIF GPS."""
    from .evaluation import evaluate, format_table, read_truth_csv

    count = len(read_truth_csv(args.data, args.images)) if args.data.lower().endswith(".csv") else _count([args.data])
    engine = _engine(args)
    run = _Run(args, engine, count)
    try:
        table = evaluate(engine, args.data, run.writer, args.images, args.top_k, on_result=run.on_result)
    finally:
        run.close()
    table["model"] = engine.model_name
    print(format_table(table))
    if table["failed"] or table["without_truth"]:
        print(f"not counted: {table['failed']} failed to decode, {table['without_truth']} without a known position",
              file=sys.stderr)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(table, handle, indent=2)
    return 0 if table["photos"] else 1


def run_finetune(args) -> int:
    from .engine import Engine
    from .evaluation import format_table
    from .finetune import FinetuneSettings, collect_samples, finetune

    engine = Engine(heads=args.heads, clip=args.clip, device=args.device, precision=args.precision,
                    batch_size=args.batch_size)
    bars = {}

    def embedded(done, total):  # the bar appears once the number of photos is known
        bar = bars.setdefault("bar", _progress_bar(total, not args.quiet))
        if bar:
            bar.update(done - bar.n)

    source = args.data[0] if len(args.data) == 1 else args.data
    collected = collect_samples(engine, source, args.images, embedded)
    if bars.get("bar"):
        bars["bar"].close()
    if not args.quiet:
        print(f"geoclip-qgis: {len(collected.samples)} photos with a position, {collected.without_gps} without, "
              f"{len(collected.failed)} unreadable", file=sys.stderr)
    settings = FinetuneSettings(epochs=args.epochs, batch_size=args.train_batch, lr=args.lr,
                                queue_size=args.queue_size, val_fraction=args.val_fraction, patience=args.patience,
                                extend_gallery=args.extend_gallery, val_candidates=args.val_candidates)

    def epoch_done(message, epoch, epochs):
        if not args.quiet:
            print(f"geoclip-qgis: {message}", file=sys.stderr)

    manifest = finetune(engine, collected.samples, args.out, settings, epoch_done, resume=args.resume)
    validation = manifest["validation"]
    print(f"validation before ({validation['candidates']} gallery places):\n{format_table(validation['before'])}")
    print(f"after (best epoch {validation['best_epoch']}):\n{format_table(validation['after'])}")
    print(f"heads written to {args.out}: use --heads {args.out}")
    return 0


def run_models(args) -> int:
    from . import weights

    if args.action == "status":
        report = weights.status(args.heads, args.clip, checksums=not args.no_checksums)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_status(report)
        return 0 if report["heads"]["found"] and report["backbone"]["found"] else 1
    if args.action == "download":
        print(f"Downloading {weights.BACKBONE_REPO} at {weights.BACKBONE_REVISION} into "
              f"{weights.models_dir() / weights.BACKBONE_FOLDER} ...", file=sys.stderr)
        print(weights.download_backbone())
        return 0
    if args.action == "export":
        path = weights.export_bundle(args.path, args.heads, args.clip, with_backbone=not args.heads_only)
        print(f"wrote {path} ({weights.human_size(path.stat().st_size)})")
        return 0
    imported = weights.import_models(args.path)
    print(f"imported {', '.join(imported)} into {weights.models_dir()}")
    return 0


def _print_status(report: dict) -> None:
    import torch

    from . import weights
    from .device import available_devices, choose_device, choose_dtype

    print(f"models folder: {report['models_dir']}")
    print(f"cache folder:  {report['cache_dir']}")
    for key, title in (("heads", "GeoCLIP heads"), ("backbone", "CLIP backbone")):
        entry = report[key]
        if entry["found"]:
            print(f"{title}: {entry['path']}  (from {entry['source']})")
            for row in entry["files"]:
                print(f"    {row['file']:<40} {weights.human_size(row['bytes']):>10}  {row['sha256']}")
        else:
            print(f"{title}: NOT FOUND")
        for source, path, reason in entry["tried"]:
            print(f"    passed over {source}: {path} ({reason})")
    device = choose_device("auto")
    print(f"devices: {', '.join(label for _, label in available_devices())}; auto = {device}, "
          f"precision auto = {str(choose_dtype(device)).replace('torch.', '')}")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return run_predict(args)
        if args.command == "text":
            return run_text(args)
        if args.command == "finetune":
            return run_finetune(args)
        if args.command == "evaluate":
            args.rasters = None
            args.area = args.area_file = None
            return run_evaluate(args)
        return run_models(args)
    except GeoCLIPError as exc:
        print(f"geoclip-qgis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoclip-qgis: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
