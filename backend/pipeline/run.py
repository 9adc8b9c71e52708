"""One run, for every door: the command line, the plugin's dock and its Processing algorithms.

A :class:`RunRequest` goes in (photos and folders, text queries, a truth table to score against,
top-k, area, fusion, rasters, skip rules, the output); results stream to the writer as they come (a
GeoPackage commits once per engine batch, so a kill loses at most one batch); rasters, the joint
answer and the accuracy table are made here; a :class:`RunOutcome` comes out naming every file and
layer written, with its kind. Nothing here knows about Qt, QGIS or the terminal: progress goes to a
:data:`..progress.ProgressCallback`, each result to an optional ``on_result``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..errors import Cancelled, GeoCLIPError
from ..model.place_options import PlaceOptions
from ..output.answer_writer import AnswerWriter, ResumableStore
from ..output.geotiff import VALUES_COMBINED, RasterNames, facts_of, raster_metadata, write_geotiff
from ..photos.area import Area
from ..progress import ProgressCallback, ShouldStop, Stage, report_step, stop_check
from ..results import SKIP_ANSWERED, AnswerKind, Hint, OutputFile, OutputKind, PhotoResult
from ..store import weights
from ..store.cache import warn_once
from ..version import __version__
from .summary import RunSummary

if TYPE_CHECKING:  # torch is loaded with the model, not with the pipeline (a cold start's largest part)
    from ..model.engine import Engine
    from ..model.rasters import Raster

WORLD_EACH = "each"  # a world raster per answer
WORLD_COMBINED = "combined"  # one world raster for the run: the mean of its answers'
FUSE_MINIMUM = 2  # a joint answer needs at least this many answered photos


@dataclass
class RasterOptions:
    folder: str
    world_cell: float = 0.25
    local_cell: float = 0.01
    regions: int = 1  # local rasters around the N most probable places (plus the top-1 answer's own)
    world: str = WORLD_COMBINED

    def check(self) -> None:
        from ..model.rasters import world_shape

        for name, cell in (("world cell", self.world_cell), ("local cell", self.local_cell)):
            if not (isinstance(cell, (int, float)) and np.isfinite(cell) and 0 < cell <= 10):
                raise GeoCLIPError(f"the {name} must be a number of degrees above 0 and at most 10, got {cell}")
        try:
            world_shape(self.world_cell)
        except ValueError as exc:
            raise GeoCLIPError(str(exc)) from None
        ratio = self.world_cell / self.local_cell
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) % 5:
            raise GeoCLIPError(
                f"the local cell ({self.local_cell}°) must divide the world cell ({self.world_cell}°) "
                "into a multiple of 5 (e.g. 0.25 and 0.01)"
            )
        if int(self.regions) < 1:
            raise GeoCLIPError(f"regions must be 1 or more, got {self.regions}")
        if self.world not in (WORLD_EACH, WORLD_COMBINED):
            raise GeoCLIPError(f"world rasters must be {WORLD_EACH!r} or {WORLD_COMBINED!r}, got {self.world!r}")
        if Path(self.folder).exists() and not Path(self.folder).is_dir():
            raise GeoCLIPError(f"the raster folder {self.folder} is a file, not a folder")


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local cluster; "auto" or "ray://host:port": join one
    workers: int = 1


@dataclass
class RunRequest:
    photos: list = field(default_factory=list)  # photo files and folders (walked recursively), or PIL images
    # How many photos ``photos`` names, when the caller has counted them already (the dock counts folders as
    # they are added): the run then walks the folders once, lazily, while answering. None: the run's one walk
    # lists them first, and that list is the count.
    photo_count: int | None = None
    texts: list[str] = field(default_factory=list)  # descriptions of places, answered like photos
    truth_csv: str | None = None  # photo,lat,lon: the photos to answer and score (else EXIF GPS is the truth)
    images: str | None = None  # the folder the truth CSV's photo names are relative to
    top_k: int = 5
    area: Area | None = None
    places: PlaceOptions = field(default_factory=PlaceOptions)  # distinct places (refined), or gallery points
    hint: Hint | None = None  # text that steers every photo's answer (photos, not text queries)
    output: str | None = None  # .gpkg, .csv or .geojson
    stream: TextIO | None = None  # without an output file: CSV here (neither: answers are only counted)
    rasters: RasterOptions | None = None
    fuse: bool = False  # also one joint answer for all photos (photos known to show one place)
    confidence: bool = False  # also each answer's confidence areas (50 % and 90 %), GeoPackage only
    skip_geotagged: bool = False
    resume: bool = True  # skip photos the output GeoPackage already answers
    ray: RayOptions | None = None

    def check(self) -> None:
        """Refuse a request that cannot work, before any model is loaded."""
        from ..output.writers import output_format

        if not self.photos and not self.texts and not self.truth_csv:
            raise GeoCLIPError("nothing to answer: give photos, folders or text queries")
        if int(self.top_k) < 1:
            raise GeoCLIPError(f"top-k must be 1 or more, got {self.top_k}")
        self.places.check(self.top_k)
        if self.hint is not None:
            self.hint.check()
        if self.output:
            output_format(self.output)
        if self.rasters is not None:
            self.rasters.check()
        if self.ray is not None and self.texts:
            raise GeoCLIPError("text queries are answered locally, not on Ray: run them without --ray")


@dataclass
class RunOutcome:
    files: list[OutputFile] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)
    model: str = ""
    run_at: str = ""
    fused: PhotoResult | None = None
    total: int = 0  # photos and text queries asked for

    @property
    def cancelled(self) -> bool:
        return self.summary.stopped

    @property
    def failures(self) -> list[tuple[str, str]]:
        return self.summary.failures

    def of_kind(self, *kinds: OutputKind) -> list[OutputFile]:
        return [f for f in self.files if f.kind in kinds]


def default_raster_folder(output: str | os.PathLike) -> str:
    """Where a run's rasters go when only the output file is named: ``<name>_rasters`` beside it."""
    path = Path(output)
    return str(path.with_name(path.stem + "_rasters"))


def _photo_items(request: RunRequest, truths: dict | None) -> tuple[Iterable, int]:
    """The photos to answer and how many they are, from one walk of the folders: a lazy walk when the
    caller counted them already, else a list (a path is about 100 bytes: 10 MB for 100,000 photos)."""
    from ..photos.walk import expand_paths

    if truths is not None:
        return list(truths), len(truths)
    if request.photo_count is not None:
        return expand_paths(request.photos), request.photo_count
    items = list(expand_paths(request.photos))
    return items, len(items)


def execute(
    request: RunRequest,
    engine: Engine,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    on_result: Callable[[PhotoResult], None] | None = None,
) -> RunOutcome:
    """Answer the request into its output; raise :class:`GeoCLIPError` for what stops the whole run.

    Bad photos do not stop it: each is recorded with its reason and the rest go on. ``should_stop`` is
    asked while the model's caches are first built and after every answer; the run then ends within the
    current batch and returns its outcome, ``cancelled``, with what was written kept for a resume.
    """
    request.check()
    summary = RunSummary()
    truths = _truths(request)
    photos, photo_count = _photo_items(request, truths)
    total = photo_count + len(request.texts)
    run_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcome = RunOutcome(summary=summary, model=engine.model_name, run_at=run_at, total=total)
    if truths is not None:
        summary.truth_source = f"the positions in {Path(request.truth_csv).name}"

    # The output first: a locked, foreign or unwritable file is refused before minutes of model loading.
    writer = _open_writer(request, engine, run_at)
    try:
        skip = _resume(request, engine, writer, run_at)
        answers = _RunAnswers(request, engine, writer, outcome, on_result)
        try:
            _load(request, engine, progress, should_stop)
            summary.load_seconds = summary.seconds
            answers.answer_all(photos, total, skip, truths, progress, should_stop)
        except Cancelled:
            # A stop on request is an outcome, not an error: every answer so far is written whole, and a
            # run into the same output resumes after them.
            summary.stopped = True
        answers.conclude(progress)
    except BaseException:
        writer.abort()  # a GeoPackage keeps every whole batch; a half-written GeoJSON is removed
        raise
    finally:
        summary.finished = time.perf_counter()
    writer.close()
    outcome.files = writer.outputs() + outcome.files
    return outcome


def _load(
    request: RunRequest, engine: Engine, progress: ProgressCallback | None, should_stop: ShouldStop | None
) -> None:
    """The model and its caches (their first build can be stopped), before the first answer."""
    if request.ray is not None:
        engine.load_gallery(progress, should_stop)  # the workers load the vision tower; the driver scores and writes
    else:
        engine.load(progress, should_stop)
    engine.check_top_k(request.top_k)
    if request.rasters is not None:
        engine.surface(request.rasters.world_cell, request.rasters.local_cell, progress, should_stop)


def _open_writer(request: RunRequest, engine: Engine, run_at: str) -> AnswerWriter:
    from ..output.writers import DiscardWriter, open_writer

    if not (request.output or request.stream):
        return DiscardWriter()
    area = request.area.label if request.area is not None else ""
    return open_writer(request.output, engine.model_name, run_at, request.stream, area, engine.batch_size)


RESUME_SETTINGS = {
    "weights_key": "model weights",
    "top_k": "top-k",
    "area": "area of interest",
    "candidates": "candidates",
    "hint": "hint",
}


def _resume(request: RunRequest, engine: Engine, writer: AnswerWriter, run_at: str) -> frozenset[str] | set[str]:
    """The photos to skip because this output already answers them, after checking that it answered them
    with the same settings (store this run's settings for the next one)."""
    if not isinstance(writer, ResumableStore):
        return frozenset()
    settings = {
        "run_at": run_at,
        "engine_version": __version__,
        "model": engine.model_name,
        "weights_key": engine.weights_key,
        "top_k": int(request.top_k),
        "area": request.area.label if request.area is not None else "",
        "candidates": request.places.shown,
        "hint": _hint_shown(request.hint),
        "parameters": json.dumps(run_parameters(request, engine), sort_keys=True),
        "weights_sha256": json.dumps(weights.weight_checksums(engine.heads_files, engine.clip_dir), sort_keys=True),
        **weights.backbone_provenance(engine.clip_dir),
    }
    previous = writer.previous_settings()
    skip = writer.answered_hashes() if request.resume else frozenset()
    if previous and skip:
        changed = [
            f"{label}: {_shown(key, previous.get(key))} then, {_shown(key, settings[key])} now"
            for key, label in RESUME_SETTINGS.items()
            if _shown(key, previous.get(key)) != _shown(key, settings[key])
        ]
        if changed:
            raise GeoCLIPError(
                f"{request.output} holds answers made with other settings ({'; '.join(changed)}). Resuming would "
                "mix them. Run with the same settings to resume, answer every photo again with the new ones "
                "(--redo, or uncheck resume), or write to another file."
            )
    writer.record_run(settings)
    return skip


def _hint_shown(hint: Hint | None) -> str:
    return hint.shown if hint is not None else ""


def run_parameters(request: RunRequest, engine: Engine) -> dict:
    """What a run was asked to do and how, for its provenance (the runs table, reports)."""
    rasters = request.rasters
    return {
        "top_k": int(request.top_k),
        "area": request.area.label if request.area is not None else "whole world",
        "area_bbox": list(request.area.bbox) if request.area is not None and request.area.bbox else None,
        "area_wkt": request.area.wkt if request.area is not None else None,
        "area_names": getattr(request.area, "names", None),
        "candidates": request.places.shown,
        "distinct_places": request.places.distinct,
        "merge_km": request.places.merge_km if request.places.distinct else None,
        "refined": request.places.refine and request.places.distinct,
        "hint": request.hint.text if request.hint is not None else None,
        "hint_weight": request.hint.weight if request.hint is not None else None,
        "fuse": request.fuse,
        "skip_geotagged": request.skip_geotagged,
        "confidence_areas": request.confidence,
        "rasters": None
        if rasters is None
        else {
            "world_cell": rasters.world_cell,
            "local_cell": rasters.local_cell,
            "regions": rasters.regions,
            "world": rasters.world,
        },
        "truth": Path(request.truth_csv).name if request.truth_csv else None,
        "device": str(engine.device),
        "precision": engine.precision,
        "batch_size": engine.batch_size,
        "preprocessing": engine.preprocessing.value,
    }


def _shown(key: str, value) -> str:
    if value not in (None, ""):
        return repr(value)
    # a run before candidates were recorded answered with gallery points
    return {"area": "whole world", "candidates": "'gallery points'", "hint": "no hint"}.get(key, "none")


class _RunAnswers:
    """Every answer to the writer as it comes, with its rasters (:meth:`answer_all`, which a stop on
    request ends between answers); then the joint answer, unless stopped, and the table (:meth:`conclude`)."""

    def __init__(self, request: RunRequest, engine: Engine, writer, outcome: RunOutcome, on_result):
        self.request, self.engine, self.writer, self.outcome = request, engine, writer, outcome
        self.on_result = on_result
        self.details = _AnswerDetails(request, engine, writer)
        self.members: list[PhotoResult] = []  # answers that go into the joint answer
        self.earlier: list[str] = []  # photos answered by an earlier run: still members of the joint answer

    def answer_all(self, photos, total: int, skip, truths, progress, should_stop: ShouldStop | None) -> None:
        request, summary = self.request, self.outcome.summary
        units = "photos" if not request.texts else "queries" if total == len(request.texts) else "answers"
        stage = Stage(progress, "Answering " + units, total, unit=units)
        with closing(
            _answers(request, self.engine, photos, skip, self.writer.stores_regions)
        ) as results:  # a stop ends its batches now
            for result in results:
                if truths is not None:  # the CSV's position, not EXIF GPS, is what error_km and the table use
                    result.truth = truths.get(result.photo)
                answered = result.ok and not result.skipped
                if answered:  # its details first: the candidates' commit then covers them too
                    result = self.details.named(result)
                    self.outcome.files += self.details.add(result)
                self.writer.write(result)
                summary.add(result)
                if answered and request.fuse and result.kind is AnswerKind.PHOTO:
                    self.members.append(result)
                elif result.skipped == SKIP_ANSWERED and request.fuse:
                    self.earlier.append(result.photo)
                stage.advance()
                if self.on_result:
                    self.on_result(result)
                stop_check(should_stop)

    def conclude(self, progress) -> None:
        request, engine, writer, outcome, details = self.request, self.engine, self.writer, self.outcome, self.details
        summary = outcome.summary
        if request.fuse and not summary.stopped:
            fused = _fuse(request, engine, self.members, self.earlier, summary, progress)
            if fused is not None:
                if self.earlier and isinstance(writer, ResumableStore):
                    writer.remove_answers(AnswerKind.FUSED)  # the earlier joint answer covered fewer photos
                outcome.fused = fused = details.named(fused)
                outcome.files += details.add(fused, own_world=True)
                writer.write(fused)
                if self.on_result:
                    self.on_result(fused)
        outcome.files += details.finish()
        accuracy = summary.accuracy()
        if accuracy and isinstance(writer, ResumableStore):
            writer.write_table("accuracy", {"run_at": outcome.run_at, "model": engine.model_name, **accuracy})


def _truths(request: RunRequest) -> dict[str, tuple[float, float]] | None:
    if not request.truth_csv:
        return None
    from ..earth.evaluation import read_truth_csv

    return {t.photo: (t.lat, t.lon) for t in read_truth_csv(request.truth_csv, request.images)}


def _answers(request: RunRequest, engine: Engine, photos, skip, keep_probabilities: bool) -> Iterator[PhotoResult]:
    """Photos (locally or on Ray), then text queries, as results in input order."""
    items = photos
    if request.ray is not None:
        from .distributed import RayAnswers

        options = {
            "heads": str(engine.heads_files.folder),
            "clip": str(engine.clip_dir),
            "device": str(engine.device),
            "precision": engine.precision,
            "batch_size": engine.batch_size,
            "preprocessing": engine.preprocessing.value,  # workers decode photos as this engine does
        }
        stream: Iterable[PhotoResult] = RayAnswers(
            items,
            options,
            request.top_k,
            request.area,
            request.ray.address,
            request.ray.workers,
            engine.batch_size,
            skip,
            request.skip_geotagged,
            request.places,
            request.hint,
        )
        yield from stream
    elif photos:
        stream = engine.predict_iter(
            items,
            request.top_k,
            request.area,
            skip=skip,
            skip_geotagged=request.skip_geotagged,
            keep_probabilities=keep_probabilities,  # summed by region: the softmax the answer was ranked from
            places=request.places,
            hint=request.hint,
        )
        try:
            yield from stream
        finally:
            stream.close()
    if request.texts:
        yield from engine.predict_text(request.texts, request.top_k, request.area, request.places)


def _fuse(
    request: RunRequest,
    engine: Engine,
    members: list[PhotoResult],
    earlier: list[str],
    summary: RunSummary,
    progress: ProgressCallback | None,
) -> PhotoResult | None:
    """The joint answer over this run's photos and those an earlier run into the same file answered."""
    if earlier:  # their query vectors are not stored: answer them again (cached embeddings make it cheap)
        report_step(progress, f"Reading {len(earlier)} photos answered before, for the joint answer")
        again = engine.predict_iter(earlier, 1, request.area, hint=request.hint)
        members = members + [r for r in again if r.ok]
    if len(members) < FUSE_MINIMUM:
        summary.notes.append(
            f"no joint answer: it needs at least {FUSE_MINIMUM} answered photos, this run has {len(members)}"
        )
        return None
    return engine.fuse(members, request.top_k, request.area, places=request.places)


class _AnswerDetails:
    """What each answer gets beyond its candidates: place names, its probability by region, its query
    vector, and when asked its rasters and confidence areas (from one evaluation of its surface)."""

    REGION_ROWS = 10  # per level and answer: the ranking a person reads; the rest is a long tail

    def __init__(self, request: RunRequest, engine: Engine, writer):
        self.request, self.engine, self.writer = request, engine, writer
        self.cells = request.rasters or RasterOptions(folder="")
        self.rasters = _RasterOutputs(request, engine) if request.rasters is not None else None
        self._assignment = None

    def named(self, result: PhotoResult) -> PhotoResult:
        from ..earth.places import name_candidates

        try:
            return name_candidates(result)
        except GeoCLIPError as exc:  # no gazetteer: answers without place names, said once
            warn_once("places", f"place names left out: {exc}")
            return result

    def _regions(self, result: PhotoResult) -> list:
        from ..earth.regions import gallery_regions, region_probabilities

        try:
            if self._assignment is None:
                gallery = self.engine.gallery
                self._assignment = gallery_regions(gallery.coordinates.cpu().numpy(), gallery.key)
        except GeoCLIPError as exc:
            warn_once("regions", f"probability by region left out: {exc}")
            return []
        probabilities = result.probabilities
        if probabilities is None:  # an answer from Ray's workers: scored here
            probabilities = self.engine.gallery_probabilities(result.feature, self.request.area)
        return region_probabilities(probabilities, self._assignment, photo=result.photo, top=self.REGION_ROWS)

    def add(self, result: PhotoResult, own_world: bool = False) -> list[OutputFile]:
        files, areas = [], []
        if self.rasters is not None or self.request.confidence:
            made = self.engine.rasters(
                result, self.request.area, self.cells.regions, self.cells.world_cell, self.cells.local_cell
            )
            from ..earth.confidence import drawn_areas

            drawn = drawn_areas(made.world, made.local)  # one build: the polygons and the rasters' level band
            if self.rasters is not None:
                files = self.rasters.add(result, made, drawn, own_world)
            if self.request.confidence:
                areas = drawn.stored()
        regions = self._regions(result) if result.feature is not None and self.writer.stores_regions else []
        self.writer.write_details(result, regions, areas)
        result.probabilities = None  # 400 KB an answer: not kept past its details (fusion keeps its members)
        return files

    def finish(self) -> list[OutputFile]:
        return self.rasters.finish() if self.rasters is not None else []


class _RasterOutputs:
    """Writes each answer's rasters as it comes, and the run's combined world raster at the end."""

    def __init__(self, request: RunRequest, engine: Engine):
        self.options, self.engine, self.area = request.rasters, engine, request.area
        self.folder = Path(self.options.folder)
        self.names = RasterNames()
        self.area_label = request.area.label if request.area is not None else ""
        self.pending: tuple | None = None  # the first world raster and its levels, until a second comes
        self.total: np.ndarray | None = None
        self.count = 0

    def _metadata(self, raster: Raster, query: str, **extra) -> dict[str, str]:
        return raster_metadata(
            raster,
            query,
            self.engine.model_name,
            self.options.world_cell,
            self.options.local_cell,
            self.area_label,
            **extra,
        )

    def _write(
        self, raster: Raster, levels, name: str, kind: OutputKind, answer: str, answer_kind: AnswerKind, **extra
    ) -> OutputFile:
        path = write_geotiff(raster, self.folder / name, self._metadata(raster, answer, **extra), levels)
        return OutputFile(kind, str(path), answer=answer, answer_kind=answer_kind, raster=facts_of(raster, levels))

    def add(self, result: PhotoResult, made, drawn, own_world: bool = False) -> list[OutputFile]:
        """Write an answer's local rasters and its world raster (or keep it for the run's mean), each with
        its confidence areas' levels as band 2 (``drawn``: :class:`..earth.confidence.DrawnAreas`)."""
        world_levels, local_levels = drawn.world_levels, drawn.local_levels
        files = [
            self._write(
                local,
                levels,
                self.names.name(result.photo, "local", index, result.kind),
                OutputKind.LOCAL_RASTER,
                result.photo,
                result.kind,
            )
            for index, (local, levels) in enumerate(zip(made.local, local_levels))
        ]
        if own_world or self.options.world == WORLD_EACH:
            files.insert(0, self._world(result, made.world, world_levels))
        else:
            files += self._combine(result, made.world, world_levels)
        return files

    def _world(self, result: PhotoResult, world: Raster, levels) -> OutputFile:
        name = self.names.name(result.photo, "world", answer=result.kind)
        return self._write(world, levels, name, OutputKind.WORLD_RASTER, result.photo, result.kind)

    def _combine(self, result: PhotoResult, world: Raster, levels) -> list[OutputFile]:
        self.count += 1
        values = world.values.astype(np.float64)
        self.total = values if self.total is None else self.total + values
        if self.count == 1:
            self.pending = (result, world, levels)
        else:
            self.pending = None
        return []

    def finish(self) -> list[OutputFile]:
        """With one answer, its own world raster; with more, their mean (it still sums to 1)."""
        if self.pending is not None:
            return [self._world(*self.pending)]
        if self.count < 2:
            return []
        from ..earth.confidence import drawn_areas
        from ..model.rasters import Raster

        mean = Raster((self.total / self.count).astype(np.float32), -180.0, 90.0, self.options.world_cell, "world")
        label = f"mean of {self.count} answers"
        name = self.names.name("all answers", "world", answer=AnswerKind.FUSED)
        levels = drawn_areas(mean).world_levels
        combined = (mean, levels, name, OutputKind.COMBINED_RASTER, label, AnswerKind.FUSED)
        return [self._write(*combined, values=VALUES_COMBINED)]
