"""Evaluation as one action: answer photos whose position is known and build the paper's accuracy table.

The command line's ``evaluate`` and the Processing algorithm both call :func:`evaluate` and only show
what it returns; which photos count and how the table is assembled is decided here once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..earth.evaluation import accuracy_table, is_truth_csv, read_truth_csv
from ..progress import ProgressCallback
from ..results import PhotoResult
from .run import RunOutcome, RunRequest, execute

if TYPE_CHECKING:  # torch loads with the model
    from ..model.engine import Engine


def truth_inputs(data: str | os.PathLike, images: str | os.PathLike | None = None) -> dict:
    """A run request's inputs for photos of known position: a CSV of photo,lat,lon (read now, so a table
    that cannot be read is named before any model loads) or a folder of photos with EXIF GPS."""
    data = str(data)
    if is_truth_csv(data):
        read_truth_csv(data, images)
        return {"photos": [], "truth_csv": data, "images": str(images) if images else None}
    return {"photos": [data], "truth_csv": None, "images": str(images) if images else None}


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
    """Answer ``request`` (made with :func:`truth_inputs`) and measure its top-1 answers against the truth."""
    outcome = execute(request, engine, progress, should_stop, on_result)
    summary = outcome.summary
    table = summary.accuracy() or accuracy_table([])
    table.update(model=outcome.model, failed=summary.failed_count, without_truth=summary.without_truth)
    return Evaluation(outcome, table)
