"""Cells of every CSV the product writes (``predict``'s answers, ``likely``, ``zones``): text that a
spreadsheet would run as a formula is kept as text, numbers stay numbers.

The OWASP rule for CSV injection: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'``. Photo names, place ids, polygon names and EXIF text come from
outside, so every text cell goes through :func:`csv_cell`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: str) -> str:
    """A text cell a spreadsheet would run as a formula is kept as text (the OWASP rule)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def csv_cell(value):
    """One cell: None as empty, a float as the shortest text that reads back as the same number, other
    numbers as they are, anything else as text with :func:`neutralise_formula` applied."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return neutralise_formula(value if isinstance(value, str) else str(value))


def csv_row(values: Iterable) -> list:
    """A row of :func:`csv_cell` values, for ``csv.writer.writerow``."""
    return [csv_cell(value) for value in values]
