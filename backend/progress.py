"""One progress protocol for everything long: model loading, cache building, downloads, runs,
location features, fine-tuning; and one way to ask such work to stop.

Work reports :class:`Progress` events to a callback; the command line turns them into a bar, the
plugin into its progress bar and status line. Each stage has its own label, count and time estimate.
Work that can be stopped takes a :data:`ShouldStop` and raises :class:`.errors.Cancelled` when it says
yes (:func:`stop_check`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Cancelled

BYTES = "bytes"  # the unit of downloads: shown in MB


@dataclass(frozen=True)
class Progress:
    stage: str  # what is happening, for people: "Answering photos", "Encoding the GPS gallery (first use only)"
    done: int = 0
    total: int = 0  # 0 when the amount of work is not known
    eta_s: float | None = None  # seconds left, once a rate is known
    unit: str = ""  # what is counted, plural ("photos", "epochs", BYTES); empty for steps without a count
    detail: str = ""  # a line worth keeping in a log ("epoch 3: loss 2.1, 40 % within 25 km")

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total > 0 else None

    def counted(self) -> str:
        """'4 of 40 photos'; bytes in MB: '1.2 MB of 4.2 MB'."""
        if self.unit == BYTES:
            return f"{self.done / 1e6:,.1f} MB of {self.total / 1e6:,.1f} MB"
        return f"{self.done} of {self.total}" + (f" {self.unit}" if self.unit else "")

    def text(self) -> str:
        """'Answering photos: 4 of 40 (10 %), about 1 min left'."""
        if self.total <= 0:
            return self.stage
        line = f"{self.stage}: {self.counted()} ({100 * self.fraction:.0f} %)"
        if self.eta_s is not None and self.done < self.total:
            line += f", {format_duration(self.eta_s)} left"
        return line


ProgressCallback = Callable[[Progress], None]
ShouldStop = Callable[[], bool]  # asked between pieces of work: True stops it with errors.Cancelled


def stop_check(should_stop: ShouldStop | None, message: str = "cancelled") -> None:
    """Raise :class:`.errors.Cancelled` (``message``: what was kept, what resumes) when asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled(message)


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1 h 20 min'."""
    if seconds < 60:
        return f"about {max(1, round(seconds / 5) * 5 if seconds > 10 else round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


class Stage:
    """One stage of work with a count: reports each update with a time estimate from the rate so far.

    Updates closer together than ``interval`` seconds are not reported (except the last), so a fast
    loop does not flood a user interface. ``done``: the count already there when the stage starts (a
    resumed download's bytes); the time estimate counts only the rate of what this stage does.
    """

    def __init__(
        self,
        report: ProgressCallback | None,
        stage: str,
        total: int = 0,
        unit: str = "",
        interval: float = 0.1,
        done: int = 0,
    ):
        self.report, self.stage, self.total, self.unit, self.interval = report, stage, total, unit, interval
        self.started = time.perf_counter()
        self._last = 0.0
        self.done = self._first = done
        self._send(done, force=True)

    def _send(self, done: int, force: bool = False, detail: str = "") -> None:
        if self.report is None:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval and done < self.total:
            return
        self._last = now
        elapsed = now - self.started
        eta = None
        if done > self._first and self.total > 0 and elapsed > 1.0:
            eta = elapsed / (done - self._first) * (self.total - done)
        self.report(Progress(self.stage, done, self.total, eta, self.unit, detail))

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        if total is not None:
            self.total = total
        self.done = done
        self._send(done, force=bool(detail), detail=detail)

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def flush(self) -> None:
        """Report the count now, whatever the interval: where work stopped is worth showing."""
        self._send(self.done, force=True)


def report_step(report: ProgressCallback | None, stage: str) -> None:
    """A step without a count ("Loading the CLIP vision tower")."""
    if report is not None:
        report(Progress(stage))
