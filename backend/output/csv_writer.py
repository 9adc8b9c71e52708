"""Answers as CSV, with the csv module: one row per candidate, a failed photo as a row with its error.

Rows are rendered first and written whole; a failed write cuts the file back to its last whole row. Text
cells a spreadsheet would run as a formula get a leading ``'`` (:mod:`..csv_safety`). One table per file:
regions, areas and query vectors go to GeoPackages only.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TextIO

from ..csv_safety import neutralise_formula  # the one rule for every CSV the product writes
from ..errors import WriteError
from ..filelock import OutputLock
from ..results import COLUMN_TYPES, COLUMNS, OutputFile, OutputKind, PhotoResult
from .answer_writer import AnswerWriter, check_output_path

TEXT_COLUMNS = frozenset(k for k, kind in COLUMN_TYPES.items() if kind is str)


class CsvWriter(AnswerWriter):
    """CSV to a stream (stdout) or to a file. Rows are rendered first and written whole: if a write
    fails, the file is cut back to its last whole row."""

    HEADER = ",".join(COLUMNS)
    HEADER_START = "photo,rank,lat,lon,probability,"  # every version's CSV starts so

    def __init__(self, target: TextIO | str | os.PathLike, model: str = "", run_at: str = "", area: str = ""):
        self.model, self.run_at, self.area = model, run_at, area
        self.path = None if hasattr(target, "write") else Path(target)
        self._stream = target if self.path is None else None
        self._file = None
        self._lock = None
        if self.path is not None:
            check_output_path(self.path)
            if self.path.exists() and not self._ours(self.path):
                raise WriteError(f"{self.path} exists and was not written by GeoCLIP; refusing to overwrite it")
            self._lock = OutputLock(self.path).acquire()
            try:
                self._file = open(self.path, "wb", buffering=0)  # unbuffered: a failed write is seen at once
            except OSError as exc:
                self._lock.release()
                raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._good = 0  # bytes of whole rows in the file
        self._emit(self.HEADER + "\n")

    @classmethod
    def _ours(cls, path: Path) -> bool:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.readline().startswith(cls.HEADER_START) or path.stat().st_size == 0
        except OSError:
            return False

    def _emit(self, text: str) -> None:
        if self._file is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                written = self._file.write(data)
                data = data[written:]
        except OSError as exc:
            try:
                os.ftruncate(self._file.fileno(), self._good)  # no half row
            except OSError:
                pass
            raise WriteError(
                f"cannot write {self.path}: {exc.strerror or exc}; the rows written before are kept"
            ) from None
        self._good = self._file.tell()

    def write(self, result: PhotoResult) -> None:
        if result.skipped:
            return
        text = io.StringIO()
        rows = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        rows.writerows(
            {k: _csv_value(k, v) for k, v in row.items()} for row in result.rows(self.model, self.run_at, self.area)
        )
        self._emit(text.getvalue())

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                raise WriteError(f"cannot finish {self.path}: {exc.strerror or exc}") from None
            finally:
                self._file = None
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def abort(self) -> None:
        try:
            self.close()  # the rows written are whole: keep them
        except WriteError:
            pass

    def write_details(self, result: PhotoResult, regions=(), areas=()) -> None:
        pass  # one table per file: regions, areas and query vectors go to GeoPackages only

    def outputs(self) -> list[OutputFile]:
        return [OutputFile(OutputKind.POINTS, str(self.path))] if self.path is not None else []


def _csv_value(key: str, value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same number
    if key in TEXT_COLUMNS and isinstance(value, str):
        return neutralise_formula(value)
    return value
