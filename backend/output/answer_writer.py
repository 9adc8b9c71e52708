"""What a writer of a run's answers does, and what a resumable store does besides.

A run (:func:`..pipeline.run.execute`) hands its answers to one :class:`AnswerWriter`, one at a time, so output grows
as photos are answered and a stopped run keeps what it wrote:

- ``write(result)``: an answer's candidates, or why its photo failed;
- ``write_details(result, regions, areas)``: what the format keeps beside the candidates (probability by
  region, confidence areas, the query vector); formats of one table keep none of it;
- ``close()`` finishes the output; ``abort()`` is for a run that failed elsewhere: what is whole is kept,
  what is not is removed; ``outputs()`` names, after closing, each file (and layer) written with its kind.

A :class:`ResumableStore` (the GeoPackage) is an answer writer that also remembers: the settings of every
run into it and the content hashes of the photos it answered, so a rerun skips them, and only with like
settings (``previous_settings``, ``answered_hashes``, ``record_run``); it replaces a superseded joint
answer (``remove_answers``) and keeps tables beside the answers (``write_table``). The run asks
``isinstance(writer, ResumableStore)``, never which methods a writer happens to have.

The formats: :class:`.csv_writer.CsvWriter`, :class:`.geojson_writer.GeoJsonWriter`,
:class:`.gpkg_writer.GeoPackageWriter`, and :class:`DiscardWriter` for runs that keep no answers;
:func:`.writers.open_writer` picks one by the output's extension.

What every writer promises:
- every write and commit is checked; a failure raises :class:`..errors.WriteError` (the run stops, exit 2)
  and what was committed before stays valid: a GeoPackage commits once per engine batch and keeps its
  spatial index and feature counts current after every commit, a CSV is cut back to its last whole row,
  a GeoJSON is written beside its target and only renamed into place once it reads back whole;
- one writer per output at a time (:mod:`..filelock`);
- a file, layer or table GeoCLIP did not create is never changed: GeoPackages, their layers and GeoTIFFs
  carry a ``GEOCLIP_*`` metadata mark, a CSV our header, a GeoJSON our columns; anything else in the way
  is refused;
- text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab
  or a carriage return) get a leading ``'`` in CSV.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WriteError
from ..results import AnswerKind, OutputFile, PhotoResult

if TYPE_CHECKING:
    from ..earth.confidence import ConfidenceArea
    from ..earth.regions import RegionRow


def check_output_path(path: Path) -> None:
    """Refuse an output that cannot be a file before anything is computed; make missing folders."""
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the folder {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise WriteError(f"cannot write {path}: permission denied")


class AnswerWriter(ABC):
    """Where a run's answers go, one at a time (see the module's description)."""

    stores_regions = False  # whether write_details keeps an answer's probability by region

    @abstractmethod
    def write(self, result: PhotoResult) -> None:
        """An answer's candidates, or why its photo failed; a skipped photo writes nothing."""

    @abstractmethod
    def write_details(
        self, result: PhotoResult, regions: Sequence[RegionRow] = (), areas: Sequence[ConfidenceArea] = ()
    ) -> None:
        """What the format keeps beside an answer's candidates; formats of one table keep none of it."""

    @abstractmethod
    def close(self) -> None:
        """Finish the output (a second call does nothing)."""

    @abstractmethod
    def abort(self) -> None:
        """The run failed elsewhere: keep what is whole, remove what is not; never raises a second error."""

    @abstractmethod
    def outputs(self) -> list[OutputFile]:
        """After :meth:`close`: each file (and layer) written, with its kind."""


class ResumableStore(AnswerWriter):
    """An answer writer that remembers earlier runs into the same file (see the module's description)."""

    @abstractmethod
    def answered_hashes(self) -> set[str]:
        """Content hashes of the photos this file already holds answers for."""

    @abstractmethod
    def previous_settings(self) -> dict | None:
        """The settings of the last run into this file (None for a new file)."""

    @abstractmethod
    def record_run(self, settings: dict) -> None:
        """Store this run's settings, committed at once (so a killed run's rows are explained too)."""

    @abstractmethod
    def remove_answers(self, kind: AnswerKind) -> None:
        """Delete this file's answers of ``kind`` (a superseded joint answer), with everything kept beside them."""

    @abstractmethod
    def write_table(self, name: str, row: dict) -> None:
        """Append one row to a table of ours beside the answers (the run's accuracy), creating it."""


class DiscardWriter(AnswerWriter):
    """For runs whose per-photo answers are not wanted (an evaluation that only reports its table)."""

    def write(self, result: PhotoResult) -> None:
        pass

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def outputs(self) -> list[OutputFile]:
        return []
