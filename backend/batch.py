"""A run over many photos, shared by the CLI, the Processing algorithms and the dock.

Results go to the writer as they arrive (a GeoPackage commits once per engine batch), photos already
answered in the same GeoPackage are skipped by content hash, failures are recorded with their
reason, and a summary (with the paper's accuracy table where EXIF truth exists) comes back.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .evaluation import accuracy_table, format_table
from .results import PhotoResult


@dataclass
class RunSummary:
    answered: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # reason -> photos
    errors_km: list[float] = field(default_factory=list)  # top-1 vs EXIF truth
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    stopped: bool = False  # cancelled before the end

    def add(self, result: PhotoResult) -> None:
        if result.skipped:
            self.skipped[result.skipped] += 1
        elif result.ok:
            self.answered += 1
            if result.error_km() is not None:
                self.errors_km.append(result.error_km())
        else:
            self.failed[result.error] += 1

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def seconds_per_photo(self) -> float | None:
        done = self.answered + sum(self.failed.values())
        return self.seconds / done if done else None

    def accuracy(self) -> dict | None:
        return accuracy_table(self.errors_km) if self.errors_km else None

    def text(self) -> str:
        lines = [f"answered {self.answered}, skipped {sum(self.skipped.values())}, "
                 f"failed {sum(self.failed.values())}" + (" (stopped early)" if self.stopped else "")]
        for reason, count in self.skipped.most_common():
            lines.append(f"  skipped {count}: {reason}")
        for reason, count in self.failed.most_common():
            lines.append(f"  failed {count}: {reason}")
        if self.seconds_per_photo:
            lines.append(f"  {self.seconds:.1f} s in all, {self.seconds_per_photo:.3f} s per photo")
        if self.accuracy():
            lines.append("top-1 error against the photos' own EXIF GPS:")
            lines.append(format_table(self.accuracy()))
        return "\n".join(lines)


def run_photos(engine, photos: Iterable, writer, top_k: int = 5, area=None, resume: bool = True,
               skip_geotagged: bool = False, on_result: Callable[[PhotoResult], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> RunSummary:
    """Answer ``photos`` into ``writer``; returns the summary. ``should_stop`` is checked after every
    photo: the run then ends within the current batch, and what was written stays."""
    skip = writer.answered_hashes() if resume and hasattr(writer, "answered_hashes") else frozenset()
    summary = RunSummary()
    stream = engine.predict_iter(photos, top_k, area, skip=skip, skip_geotagged=skip_geotagged)
    try:
        for result in stream:
            writer.write(result)
            summary.add(result)
            if on_result:
                on_result(result)
            if should_stop and should_stop():
                summary.stopped = True
                break
    finally:
        stream.close()
    return finish(summary, writer)


def finish(summary: RunSummary, writer) -> RunSummary:
    """Stop the clock; where photos had EXIF truth, add the run's accuracy table beside the layer."""
    summary.finished = time.perf_counter()
    if summary.accuracy() and hasattr(writer, "write_table"):
        writer.write_table("accuracy", {"run_at": writer.run_at, "model": writer.model, **summary.accuracy()})
    return summary
