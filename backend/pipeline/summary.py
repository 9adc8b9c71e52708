"""What a run did, counted as it goes: answered, skipped and failed photos with reasons, errors against
known positions (the paper's accuracy table), and where the time went."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..earth.evaluation import accuracy_table, format_table
from ..errors import GeoCLIPError
from ..results import PhotoResult


@dataclass
class RunSummary:
    answered: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> photos
    failed: Counter = field(default_factory=Counter)  # reason -> photos
    failures: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason), in input order
    errors_km: list[float] = field(default_factory=list)  # top-1 against the known position
    pairs: list[tuple[float, float, float, float]] = field(default_factory=list)  # truth lat, lon; top-1 lat, lon
    without_truth: int = 0  # answered photos with no known position
    truth_source: str = "the photos' own EXIF GPS"
    notes: list[str] = field(default_factory=list)  # things the run did or did not do, for people
    started: float = field(default_factory=time.perf_counter)
    load_seconds: float = 0.0  # model and caches, before the first answer
    finished: float | None = None
    stopped: bool = False  # cancelled before the end

    def add(self, result: PhotoResult) -> None:
        """Count one result, scored against its known position (a truth CSV's, else its EXIF GPS)."""
        if result.skipped:
            self.skipped[result.skipped] += 1
        elif result.ok:
            self.answered += 1
            truth = result.known_position
            if truth is None or not result.candidates:
                self.without_truth += 1
            else:
                top = result.candidates[0]
                # the very number written in the answer's error_km, so its file gives back this table
                self.errors_km.append(result.error_km(top))
                self.pairs.append((truth[0], truth[1], top.lat, top.lon))
        else:
            self.failed[result.error] += 1
            self.failures.append((result.photo, result.error))

    @property
    def failed_count(self) -> int:
        return sum(self.failed.values())

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def seconds_per_answer(self) -> float | None:
        done = self.answered + self.failed_count
        return (self.seconds - self.load_seconds) / done if done else None

    def accuracy(self) -> dict | None:
        """The paper's table (share within 1..2500 km, median) plus the share of top-1 answers in the
        right country (by nearest populated place, when the gazetteer is installed)."""
        if not self.errors_km:
            return None
        table = accuracy_table(self.errors_km)
        try:
            from ..earth.regions import country_top1_accuracy

            pairs = np.asarray(self.pairs, dtype=np.float64)
            table["acc_country"] = 100.0 * country_top1_accuracy(pairs[:, :2], pairs[:, 2:])
        except GeoCLIPError:
            pass
        return table

    def first_line(self) -> str:
        return f"answered {self.answered}, skipped {self.skipped_count}, failed {self.failed_count}" + (
            " (stopped early)" if self.stopped else ""
        )

    def text(self) -> str:
        lines = [self.first_line()]
        for reason, count in self.skipped.most_common():
            lines.append(f"  skipped {count}: {reason}")
        for reason, count in self.failed.most_common():
            lines.append(f"  failed {count}: {reason}")
        lines += [f"  {note}" for note in self.notes]
        per_answer = self.seconds_per_answer
        if per_answer:
            lines.append(
                f"  {self.seconds:.1f} s in all: {self.load_seconds:.1f} s loading the model and caches, "
                f"{per_answer:.3f} s per answer"
            )
        if self.accuracy():
            lines.append(f"top-1 error against {self.truth_source}:")
            lines.append(format_table(self.accuracy()))
        return "\n".join(lines)
