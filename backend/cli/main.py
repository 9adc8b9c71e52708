"""Command line: ``geoclip-qgis predict|models ...`` (also ``python -m geoclip_qgis.backend``).

Exit status: 0 when the run finished and at least one photo was answered (or there were none),
1 when every photo failed, 2 for a problem with the command or the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import GeoCLIPError
from ..shown_text import printable
from .arguments import build_parser
from .location import LOCATION_COMMANDS, run_location_command
from .workbench import WORKBENCH_COMMANDS, run_workbench_command

PROGRESS_THRESHOLD = 3  # show a progress bar for more photos than this


def _print_lines(text: str, prefix: str = "geoclip-qgis: ") -> None:
    for number, line in enumerate(text.splitlines()):
        print((prefix if number == 0 else "") + printable(line), file=sys.stderr)


class Terminal:
    """Progress and messages on stderr (stdout carries data only): a bar for each long stage, a line for
    each step, the reason of each failed photo."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.stage = None
        self.bar = None

    def say(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def progress(self, event) -> None:
        if self.quiet:
            return
        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            if event.total > PROGRESS_THRESHOLD:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=event.total,
                    desc=event.stage,
                    unit=f" {event.unit}" if event.unit else "it",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            elif event.total == 0:
                self.say(f"geoclip-qgis: {event.stage}")
        if self.bar is not None:
            self.bar.update(event.done - self.bar.n)
        if event.detail:
            self.say(f"geoclip-qgis: {event.detail}")

    def on_result(self, result) -> None:
        if result.error:
            self.say(f"failed: {printable(result.photo)}: {printable(result.error)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stage = None


def _area(args):
    from ..photos.area import Area

    if getattr(args, "area", None) is not None:  # --area= (empty) is an error, never the whole world
        return Area.from_bbox(args.area)
    if getattr(args, "area_file", None) is not None:
        return Area.from_file(args.area_file, args.area_layer)
    if getattr(args, "area_layer", None):
        raise GeoCLIPError("--area-layer needs --area-file")
    return None


def _area_or_names(args):
    """The one area of interest: a box, a polygon file, or countries and regions by name."""
    countries, regions = getattr(args, "country", []), getattr(args, "region", [])
    if not (countries or regions):
        return _area(args)
    if getattr(args, "area", None) is not None or getattr(args, "area_file", None) is not None:
        raise GeoCLIPError("give one area: --area, --area-file, or --country/--region")
    from ..earth.named_areas import named_area

    return named_area(countries, regions)


def _places(args):
    from ..model.place_options import GALLERY_POINTS, PlaceOptions

    if hasattr(args, "gallery_points"):
        if args.gallery_points:
            return GALLERY_POINTS
        return PlaceOptions(merge_km=args.merge_km, refine=not args.no_refine)
    if not (getattr(args, "places", False) or getattr(args, "refine", False)):
        return GALLERY_POINTS  # evaluate: the paper's protocol
    return PlaceOptions(merge_km=args.merge_km, refine=args.refine)


def _hint(args):
    from ..results import Hint

    text = getattr(args, "hint", None)
    return None if text is None else Hint(text, args.hint_weight)


def _engine(args):
    from ..model.factory import build_engine

    return build_engine(
        heads=args.heads,
        clip=args.clip,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        embedding_cache=not args.no_cache,
        decode_workers=args.decode_workers,
        preprocessing=getattr(args, "preprocessing", "engine"),  # only evaluate offers the release's way
    )


def _request(args, **fields):
    from ..pipeline.run import RasterOptions, RunRequest

    rasters = None
    if getattr(args, "rasters", None):
        rasters = RasterOptions(args.rasters, args.world_cell, args.local_cell, args.regions, args.world_rasters)
    out = getattr(args, "out", None)
    return RunRequest(
        top_k=args.top_k,
        area=_area_or_names(args),
        places=fields.pop("places", None) or _places(args),
        hint=_hint(args),
        output=out,
        rasters=rasters,
        confidence=getattr(args, "confidence", False),
        **fields,
    )


def _report(terminal: Terminal, outcome) -> None:
    from ..results import OutputKind

    terminal.close()
    if terminal.quiet:
        return
    _print_lines(outcome.summary.text())
    by_path: dict[str, list[str]] = {}
    for file in outcome.files:
        if file.layer:
            by_path.setdefault(file.path, []).append(file.layer)
    for path, layers in by_path.items():
        _print_lines(f"written to {path} (layers: {', '.join(layers)})")
    for file in outcome.files:
        if not file.layer and file.kind == OutputKind.POINTS:
            _print_lines(f"written to {file.path}")
    rasters = [f for f in outcome.files if f.kind != OutputKind.POINTS and not f.layer]
    if rasters:
        _print_lines(f"{len(rasters)} rasters in {Path(rasters[0].path).parent}")


def _execute(args, request, action=None):
    """A run-pipeline action (``run.execute`` unless named) with this command's engine and progress on
    stderr; returns what the action returned."""
    from ..pipeline.run import execute

    request.check()  # before loading a model
    engine = _engine(args)
    terminal = Terminal(args.quiet)
    terminal.say(f"geoclip-qgis: {engine.model_name} on {engine.device}")
    try:
        outcome = (action or execute)(request, engine, terminal.progress, on_result=terminal.on_result)
    finally:
        terminal.close()
    return terminal, outcome


def _run(args, request) -> int:
    terminal, outcome = _execute(args, request)
    _report(terminal, outcome)
    summary = outcome.summary
    return 1 if summary.answered == 0 and summary.failed_count else 0


def run_predict(args) -> int:
    from ..pipeline.run import RayOptions

    ray = RayOptions(None if args.ray == "local" else args.ray, args.workers) if args.ray else None
    request = _request(
        args,
        photos=args.paths,
        fuse=args.fuse,
        skip_geotagged=args.skip_geotagged,
        resume=not args.redo,
        ray=ray,
        stream=None if args.out else sys.stdout,
    )
    return _run(args, request)


def run_text(args) -> int:
    return _run(args, _request(args, texts=args.queries, stream=None if args.out else sys.stdout))


def run_evaluate(args) -> int:
    """Top-1 accuracy against known positions: a CSV of (photo, lat, lon), or photos' EXIF GPS. The table
    goes to stdout; per-photo answers only to --out."""
    from ..earth.evaluation import format_table
    from ..pipeline.evaluate import evaluate, truth_inputs

    inputs = {**truth_inputs(args.data, args.images), "places": _places(args)}
    if args.report:
        _refuse_foreign_report(Path(args.report))
    _, evaluation = _execute(args, _request(args, **inputs), evaluate)
    print(format_table(evaluation.table))
    if evaluation.not_counted:
        print(evaluation.not_counted, file=sys.stderr)
    if args.report:
        _write_report(Path(args.report), json.dumps(evaluation.table, indent=2))
    return 0 if evaluation.table["photos"] else 1


REPORT_KEYS = ("photos", "median_km")  # every accuracy table has them


def _refuse_foreign_report(path: Path) -> None:
    """An evaluation report replaces only an earlier report (a JSON object with the table's keys)."""
    from ..errors import ForeignFileError
    from ..filelock import refuse_non_file
    from ..store.weights import parse_json

    refuse_non_file(path, "where the report would go")
    if not path.exists():
        return
    try:
        table = parse_json(path.read_bytes()) if path.stat().st_size < 1 << 20 else None
    except (OSError, ValueError):
        table = None
    if not (isinstance(table, dict) and all(key in table for key in REPORT_KEYS)):
        raise ForeignFileError(f"{path} exists and is not an evaluation report GeoCLIP wrote; refusing to overwrite it")


def _write_report(path: Path, text: str) -> None:
    """Written whole beside its name, read back, then renamed over it."""
    from ..filelock import put_in_place, staged

    _refuse_foreign_report(path)
    with staged(path) as partial:
        try:
            data = text.encode("utf-8")
            with open(partial, "wb") as handle:
                handle.write(data)
            if partial.read_bytes() != data:
                raise OSError("the report did not read back whole")
        except OSError as exc:
            raise GeoCLIPError(f"cannot write {path}: {exc.strerror or exc}") from None
        _refuse_foreign_report(path)
        put_in_place(partial, path)


def run_finetune(args) -> int:
    from ..pipeline.finetune import FinetuneSettings, check_out_folder, tune_heads

    check_out_folder(args.out)  # before minutes of loading a model: a folder that is not ours is refused
    engine = _engine(args)
    terminal = Terminal(args.quiet)

    def collected(samples) -> None:
        terminal.close()
        terminal.say(f"geoclip-qgis: {samples.line()}")

    settings = FinetuneSettings(
        epochs=args.epochs,
        batch_size=args.train_batch,
        lr=args.lr,
        queue_size=args.queue_size,
        val_fraction=args.val_fraction,
        patience=args.patience,
        extend_gallery=args.extend_gallery,
        val_candidates=args.val_candidates,
    )
    source = args.data[0] if len(args.data) == 1 else args.data
    tuned = tune_heads(
        engine, source, args.out, settings, args.images, terminal.progress, resume=args.resume, on_collected=collected
    )
    terminal.close()
    print(tuned.tables())
    if tuned.kept_note:
        terminal.say(f"geoclip-qgis: {tuned.kept_note}")
    print(f"heads written to {args.out}: use --heads {args.out}")
    return 0


def run_cache(args) -> int:
    from ..store.cache import cache_report, clear_caches
    from ..store.weights import human_size

    if args.action == "clear":
        removed = clear_caches(photos_only=args.photos_only)
        print(f"removed {', '.join(removed) if removed else 'nothing (the cache was empty)'}")
        return 0
    report = cache_report()
    print(f"cache folder: {report['folder']}")
    for name, size in report["parts"].items():
        print(f"    {name:<28} {human_size(size):>10}")
    return 0


def run_models(args) -> int:
    from ..store import bundles, weights

    if args.action == "status":
        report = weights.status(args.heads, args.clip, checksums=not args.no_checksums)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_status(report)
        return 0 if report["heads"]["found"] and report["backbone"]["found"] else 1
    if args.action == "download":
        print(
            f"Downloading {weights.BACKBONE_REPO} at {weights.BACKBONE_REVISION} into "
            f"{weights.models_dir() / weights.BACKBONE_FOLDER} ...",
            file=sys.stderr,
        )
        print(weights.download_backbone())
        return 0
    if args.action == "export":
        path = bundles.export_bundle(args.path, args.heads, args.clip, with_backbone=not args.heads_only)
        print(f"wrote {path} ({weights.human_size(path.stat().st_size)})")
        return 0
    imported = bundles.import_models(args.path)
    print(f"imported {', '.join(imported)} into {weights.models_dir()}")
    return 0


def _print_status(report: dict) -> None:
    import torch

    from ..model.device import available_devices, choose_device, choose_dtype
    from ..store import weights

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
    print(
        f"devices: {', '.join(label for _, label in available_devices())}; auto = {device}, "
        f"precision auto = {str(choose_dtype(device)).replace('torch.', '')}"
    )
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


def _log_to_stderr() -> None:
    """The engine's warnings (a cache it cannot use, say) as lines on stderr."""
    import logging

    logger = logging.getLogger("geoclip_qgis")
    if not any(getattr(h, "geoclip_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("geoclip-qgis: warning: %(message)s"))
        handler.geoclip_cli = True
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        if args.command == "predict":
            return run_predict(args)
        if args.command == "text":
            return run_text(args)
        if args.command == "finetune":
            return run_finetune(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "cache":
            return run_cache(args)
        if args.command in LOCATION_COMMANDS:
            return run_location_command(args)
        if args.command in WORKBENCH_COMMANDS:
            return run_workbench_command(args)
        return run_models(args)
    except GeoCLIPError as exc:
        _print_lines(f"error: {exc}")
        return 2
    except OSError as exc:  # a file the command names cannot be read or written
        where = f" ({exc.filename})" if exc.filename else ""
        _print_lines(f"error: {exc.strerror or exc}{where}")
        return 2
    except KeyboardInterrupt:
        print("geoclip-qgis: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
