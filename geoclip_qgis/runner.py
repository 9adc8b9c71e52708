"""One run of the plugin: photos and text queries answered, written to a GeoPackage as they come.

Shared by the dock's background task and the Processing algorithms, so both do exactly the same work.
Runs in a worker thread: reads files and runs the engine; it never touches layers or widgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .session import EngineSettings, get_engine


@dataclass
class RunRequest:
    photos: list[str] = field(default_factory=list)  # files and folders
    texts: list[str] = field(default_factory=list)
    top_k: int = 5
    gpkg: str = ""
    rasters: bool = False
    fuse: bool = False
    skip_geotagged: bool = False
    world_per_photo: bool = False  # else one combined world raster for the run (the mean of the photos')
    area: object = None  # backend.area.Area or None
    engine: EngineSettings = field(default_factory=EngineSettings)


@dataclass
class RunOutcome:
    gpkg: str = ""
    rasters: list[str] = field(default_factory=list)
    summary: object = None  # backend.batch.RunSummary
    failures: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    error: str = ""  # the run as a whole failed (weights missing, disk full...)
    cancelled: bool = False


def execute(request: RunRequest, progress: Callable[[float], None] = lambda p: None,
            status: Callable[[str], None] = lambda s: None,
            should_stop: Callable[[], bool] = lambda: False) -> RunOutcome:
    """Answer the request's photos and texts into its GeoPackage; errors other than bad photos raise."""
    from .backend.batch import RunSummary, run_photos
    from .backend.walk import expand_paths
    from .backend.writers import OgrWriter

    outcome = RunOutcome(gpkg=request.gpkg)
    status("Loading the model…")
    engine = get_engine(request.engine, lambda stage, done, total: status(f"{stage} {done}/{total}" if total > 1 else stage))
    total = sum(1 for _ in expand_paths(request.photos)) + len(request.texts)
    run_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    area_label = request.area.label if request.area is not None else ""
    Path(request.gpkg).parent.mkdir(parents=True, exist_ok=True)
    writer = OgrWriter(Path(request.gpkg), "GPKG", engine.model_name, run_at, area_label, engine.batch_size)
    fused_from = []
    combined = _CombinedWorld()
    done = 0

    def on_result(result) -> None:
        nonlocal done
        done += 1
        if result.error:
            outcome.failures.append((result.photo, result.error))
        elif not result.skipped:
            if request.rasters:
                outcome.rasters += write_rasters(engine, result, request, None if request.world_per_photo else combined)
            if request.fuse:
                fused_from.append(result)
        progress(100.0 * done / max(total, 1))
        status(f"{done} / {total} photos")

    summary = RunSummary()
    try:
        if request.photos:
            summary = run_photos(engine, expand_paths(request.photos), writer, request.top_k, request.area,
                                 skip_geotagged=request.skip_geotagged, on_result=on_result, should_stop=should_stop)
        if request.texts and not should_stop():
            for result in engine.predict_text(request.texts, request.top_k, request.area):
                writer.write(result)
                summary.add(result)
                on_result(result)
        if request.fuse and len(fused_from) > 1 and not should_stop():
            fused = engine.fuse(fused_from, request.top_k, request.area)
            writer.write(fused)
            if request.rasters:
                outcome.rasters += write_rasters(engine, fused, request)
        if combined.count:
            outcome.rasters.insert(0, combined.write(request))
    finally:
        writer.close()  # what was answered stays on disk, stopped or not
    outcome.summary = summary
    outcome.cancelled = should_stop()
    return outcome


def raster_folder(request: RunRequest) -> Path:
    folder = Path(request.gpkg).with_suffix("")
    return folder.with_name(folder.name + "_rasters")


def write_rasters(engine, result, request: RunRequest, combined: "_CombinedWorld | None" = None) -> list[str]:
    """Local GeoTIFFs for one answer, and its world GeoTIFF (or its share of the combined one)."""
    from .backend.geotiff import raster_name, write_geotiff

    made = engine.rasters(result, request.area)
    named = [(local, raster_name(result.photo, "local", i)) for i, local in enumerate(made.local)]
    if combined is None:
        named.insert(0, (made.world, raster_name(result.photo, "world")))
    else:
        combined.add(made.world)
    return [str(write_geotiff(raster, raster_folder(request) / name)) for raster, name in named]


class _CombinedWorld:
    """One world raster for a run: the mean of its photos' world rasters, i.e. the probability that a
    photo drawn at random from the run was taken in each cell (it still sums to 1)."""

    def __init__(self):
        self.total = None
        self.count = 0
        self.template = None

    def add(self, world) -> None:
        self.total = world.values.astype("float64") if self.total is None else self.total + world.values
        self.count += 1
        self.template = world

    def write(self, request: RunRequest) -> str:
        from dataclasses import replace

        from .backend.geotiff import write_geotiff

        mean = (self.total / self.count).astype("float32")
        metadata = {**self.template.metadata, "GEOCLIP_QUERY": f"mean of {self.count} photos",
                    "GEOCLIP_VALUES": "probability per cell, mean over the run's photos; sums to 1"}
        raster = replace(self.template, values=mean, metadata=metadata)
        return str(write_geotiff(raster, raster_folder(request) / "run_world_combined.tif"))
