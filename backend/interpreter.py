"""The Python interpreter of this installation, for child processes and pip commands.

Inside QGIS ``sys.executable`` is the QGIS binary itself (running it would start another QGIS), so the
interpreter is looked up beside the Python that QGIS embeds, in ``sys.exec_prefix``. No Qt, no QGIS.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# python, python3, python3.11, python.exe, python3.exe (pythonw: no console on Windows, same interpreter)
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?w?(\.exe)?", re.IGNORECASE)


def python_interpreter() -> str:
    """The path of a Python interpreter of this process's own installation and version.

    ``sys.executable`` when it is Python (the command line, a venv); otherwise (QGIS) the interpreter in
    ``sys.exec_prefix``: ``bin/pythonX.Y`` or ``bin/python3`` (Linux, macOS), ``python.exe`` (Windows,
    OSGeo4W); ``python3`` from PATH as a last resort.
    """
    executable = Path(sys.executable) if sys.executable else None
    if executable and _PYTHON_NAME.fullmatch(executable.name) and executable.is_file():
        return str(executable)
    prefix = Path(sys.exec_prefix)
    candidates = [
        prefix / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
        prefix / "bin" / "python3",
        prefix / "python.exe",
        prefix / "python3.exe",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return "python3"
