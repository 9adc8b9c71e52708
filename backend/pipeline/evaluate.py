"""Evaluation as one action: answer photos whose position is known and build the paper's accuracy table.

The command line's ``evaluate`` and the Processing algorithm both call :func:`evaluate` and only show
what it returns; which photos count and how the table is assembled is decided here once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..earth.evaluation import accuracy_table, is_truth_csv, read_truth_csv
from ..geo import haversine_km
from ..model.place_options import GALLERY_POINTS
from ..progress import ProgressCallback
from ..results import PhotoResult
from .run import RunOutcome, RunRequest, execute

if TYPE_CHECKING:  # torch loads with the model
    from ..model.engine import Engine


def truth_inputs(data: str | os.PathLike, images: str | os.PathLike | None = None) -> dict:
    """A run request's inputs for photos of known position: a CSV of photo,lat,lon (read now, so a table
    that cannot be read is named before any model loads) or a folder of photos with EXIF GPS; answered as
    the paper's protocol does, with the gallery's points (a caller may ask for places instead)."""
    data = str(data)
    inputs = {"images": str(images) if images else None, "places": GALLERY_POINTS}
    if is_truth_csv(data):
        read_truth_csv(data, images)
        return {**inputs, "photos": [], "truth_csv": data}
    return {**inputs, "photos": [data], "truth_csv": None}


@dataclass(frozen=True)
class Evaluation:
    outcome: RunOutcome
    table: dict  # evaluation.accuracy_table plus acc_country, model, failed, without_truth

    @property
    def not_counted(self) -> str:
        """Why some photos are not in the table, or "" when every photo is."""
        summary = self.outcome.summary
        if not (summary.failed_count or summary.without_truth):
            return ""
        return f"not counted: {summary.failed_count} failed to decode, {summary.without_truth} without a known position"


def evaluate(
    request: RunRequest,
    engine: Engine,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_result: Callable[[PhotoResult], None] | None = None,
) -> Evaluation:
    """Answer ``request`` (made with :func:`truth_inputs`) and measure its top-1 answers against the truth.

    Refined places are measured twice, side by side: at their refined coordinates (the table) and at the
    gallery points they were found at (``table["gallery_point"]``), so what refinement adds is read off
    one run."""
    found_at: list[float] = []

    def measured(result: PhotoResult) -> None:
        top = result.candidates[0] if result.ok and result.candidates else None
        known = result.known_position
        if top is not None and known is not None and top.gallery_lat is not None and not result.skipped:
            found_at.append(float(haversine_km(known[0], known[1], top.gallery_lat, top.gallery_lon)))
        if on_result is not None:
            on_result(result)

    outcome = execute(request, engine, progress, should_stop, measured)
    summary = outcome.summary
    table = summary.accuracy() or accuracy_table([])
    table.update(
        model=outcome.model,
        failed=summary.failed_count,
        without_truth=summary.without_truth,
        candidates=request.places.shown,
    )
    if request.places.distinct and request.places.refine and found_at:
        table["gallery_point"] = accuracy_table(found_at)
    return Evaluation(outcome, table)
