"""A plain-text report for bug reports (Models… → Diagnostics…): QGIS, Qt and Python, the libraries and
where each was imported from, CUDA devices, the weights found, folders and caches, the last errors.

Importing this module imports nothing heavy. The libraries are imported when the report is built (the
user asked for it, and a library that installs but will not load, a torch DLL say, only shows then),
each in its own try: one broken library reads "not importable: <reason>" and the report goes on.
No Qt here: the Models dialog shows the text.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

LOGGER_NAME = "geoclip_qgis"
LOG_TAG = "GeoCLIP"  # the plugin's tab in QGIS's message log
ECHO_SECONDS = 5.0

# import name, distribution (for the version when the module cannot say), name in the report
LIBRARIES = (
    ("numpy", "numpy", "NumPy"),
    ("osgeo", "GDAL", "GDAL (osgeo)"),
    ("torch", "torch", "torch"),
    ("transformers", "transformers", "transformers"),
    ("PIL", "Pillow", "Pillow (PIL)"),
    ("safetensors", "safetensors", "safetensors"),
)


class RecentErrors(logging.Handler):
    """The last warnings and errors, in memory: from the plugin's Python logger and from its tab in QGIS's
    message log (the dock and tasks write there directly)."""

    def __init__(self, size: int = 20):
        super().__init__(logging.WARNING)
        self.entries: deque[list[str]] = deque(maxlen=size)  # [time, level, message, traceback]
        # The plugin forwards its logger to the message log, so one warning arrives by both ways (in
        # either order: the message log's signal may be queued across threads); the second is an echo.
        self._seen: dict[str, deque] = {"logger": deque(maxlen=size), "qgis": deque(maxlen=size)}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            detail = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
            self.add(record.levelname, record.getMessage(), "logger", detail)
        except Exception:
            self.handleError(record)

    def message_received(self, message: str, tag: str, level) -> None:
        """Slot for QgsMessageLog.messageReceived."""
        from qgis.core import Qgis

        name = {Qgis.MessageLevel.Warning: "WARNING", Qgis.MessageLevel.Critical: "CRITICAL"}.get(level)
        if tag == LOG_TAG and name:
            self.add(name, message, "qgis")

    def add(self, level: str, message: str, way: str = "logger", detail: str = "") -> None:
        now = time.monotonic()
        with self._guard:
            other = self._seen["qgis" if way == "logger" else "logger"]
            echo = next((item for item in other if item[0] == message and now - item[1] < ECHO_SECONDS), None)
            if echo is not None:
                other.remove(echo)
                if way == "logger":  # the logger's record knows the real level and the traceback
                    echo[2][1], echo[2][3] = level, detail
                return
            entry = [time.strftime("%Y-%m-%d %H:%M:%S"), level, message, detail]
            self._seen[way].append((message, now, entry))
            self.entries.append(entry)

    def lines(self) -> list[str]:
        with self._guard:
            return [
                f"{when} {level}: {message}" + (f"\n{detail}" if detail else "")
                for when, level, message, detail in self.entries
            ]


RECENT = RecentErrors()


def watch() -> RecentErrors:
    """Keep the last errors from now on (the plugin calls this when QGIS loads it; calling again is harmless)."""
    logger = logging.getLogger(LOGGER_NAME)
    if RECENT not in logger.handlers:
        logger.addHandler(RECENT)
        with contextlib.suppress(Exception):  # no QGIS (the engine's command line): the logger alone
            from qgis.core import QgsApplication

            QgsApplication.messageLog().messageReceived.connect(RECENT.message_received)
    return RECENT


def unwatch() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if RECENT in logger.handlers:
        logger.removeHandler(RECENT)
        with contextlib.suppress(Exception):
            from qgis.core import QgsApplication

            QgsApplication.messageLog().messageReceived.disconnect(RECENT.message_received)


# --------------------------------------------------------------------------------------------- probes


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def _probe(function: Callable[[], str]) -> str:
    try:
        return function()
    except Exception as exc:
        return f"unknown ({reason(exc)})"


def _size(size: int) -> str:
    try:
        from ..backend.store.weights import human_size  # imports torch: a broken torch must not hide the sizes
    except Exception:
        return f"{size} bytes"
    return human_size(size)


def _qgis_version() -> str:
    from qgis.core import Qgis

    return getattr(Qgis, "QGIS_VERSION", "") or Qgis.version()


def _qt_version() -> str:
    from qgis.PyQt.QtCore import PYQT_VERSION_STR, QT_VERSION_STR, qVersion

    return f"Qt {qVersion()} (built with {QT_VERSION_STR}), PyQt {PYQT_VERSION_STR}"


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except Exception:
        return ""


def library(name: str, distribution: str) -> dict:
    """One library as this QGIS imports it: ``version``, ``path`` (the file it was imported from) and
    ``problem`` ("not installed", or "not importable: <reason>")."""
    try:
        spec = importlib.util.find_spec(name)
    except Exception as exc:  # a half-removed package: find_spec itself can raise
        return {"version": "", "path": "", "problem": f"not importable: {reason(exc)}"}
    if spec is None:
        return {"version": "", "path": "", "problem": "not installed"}
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return {
            "version": _installed_version(distribution),
            "path": spec.origin or "",
            "problem": f"not importable: {reason(exc)}",
        }
    version = getattr(module, "__version__", None) or _installed_version(distribution)
    return {"version": str(version), "path": getattr(module, "__file__", None) or spec.origin or "", "problem": ""}


# ------------------------------------------------------------------------------------------- sections


def system_lines() -> Iterator[str]:
    from ..backend.version import __version__
    from ..core import deps

    yield f"GeoCLIP for QGIS: {__version__}"
    yield f"QGIS: {_probe(_qgis_version)}"
    yield f"Qt: {_probe(_qt_version)}"
    yield f"Python: {sys.version.split()[0]} ({platform.python_implementation()}, {platform.architecture()[0]})"
    yield f"Python executable: {sys.executable}"
    yield f"Python for pip: {_probe(deps.qgis_python)}"  # inside QGIS, sys.executable is QGIS itself
    yield f"Platform: {platform.platform()} ({platform.machine()})"
    yield f"Plugin folder: {Path(__file__).resolve().parent.parent}"


def library_lines() -> Iterator[str]:
    from ..install.install_failures import match

    for name, distribution, label in LIBRARIES:
        found = library(name, distribution)
        version = f" {found['version']}" if found["version"] else ""
        if not found["problem"]:
            yield f"{label}{version}: {found['path']}"
            continue
        where = f" ({found['path']})" if found["path"] else ""
        yield f"{label}{version}: {found['problem']}{where}"
        cause = match(found["problem"])
        if cause is not None:
            yield f"    likely cause: {cause.title}"


def cuda_lines() -> Iterator[str]:
    try:
        import torch
    except Exception as exc:
        yield f"unknown: torch is not importable ({reason(exc)})"
        return
    if not torch.cuda.is_available():
        yield f"none (torch's CUDA: {torch.version.cuda or 'a CPU-only build'})"
        return
    yield f"CUDA {torch.version.cuda}"
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        yield f"cuda:{index}: {props.name}, {_size(props.total_memory)}"


def weights_lines(settings=None) -> Iterator[str]:
    from ..backend.model.model_state import Capability, source_words
    from ..core.session import current_state

    state = current_state(settings)
    for capability in Capability:
        yield f"{capability.label}: {'ready' if state.can(capability) else 'not yet'}"
    for part in state.parts:
        if part.found:
            what = f" ({part.architecture.description})" if part.architecture else ""
            yield f"{part.title}: found in {source_words(part.source)}: {part.path}{what}"
        else:
            tried = "; ".join(
                f"{source_words(place.source)}: "
                + (f"{place.path} ({place.reason})" if place.has_folder else place.path.strip("()"))
                for place in part.tried
            )
            yield f"{part.title}: not found; looked in {tried}"
    for problem in state.problems:
        yield f"Problem: {problem.text}"


def folder_lines() -> Iterator[str]:
    from ..backend.store.cache import cache_report
    from ..core import deps

    cache = cache_report()
    yield f"Cache folder: {cache['folder']}"
    for name, size in cache["parts"].items():
        yield f"    {name}: {_size(size)}"
    packages = deps.plugin_python_dir()
    yield f"Packages installed by the plugin: {packages}{'' if packages.is_dir() else ' (no such folder)'}"
    from ..backend.store.weights import models_dir

    yield f"Models folder: {models_dir()}"


def error_lines() -> Iterator[str]:
    lines = RECENT.lines()
    if not lines:
        yield "none since the plugin was loaded"
    for line in lines:
        first, *rest = line.splitlines()
        yield first
        yield from (f"    {more}" for more in rest[-12:])  # a traceback's last lines say the most


def _section(lines: Callable[[], Iterable[str]]) -> list[str]:
    gathered = []
    try:
        for line in lines():
            gathered.append(line if line.startswith("    ") else f"- {line}")
    except Exception as exc:  # keep what was gathered; the next sections still run
        gathered.append(f"- (could not be gathered: {reason(exc)})")
    return gathered


def report(settings=None) -> str:
    """The report as Markdown-ish plain text. ``settings``: the Models dialog's current choices
    (an EngineSettings), else the saved ones."""
    parts = [f"## GeoCLIP for QGIS diagnostics ({time.strftime('%Y-%m-%d %H:%M')})"]
    for title, lines in (
        ("QGIS and Python", system_lines),
        ("Libraries", library_lines),
        ("CUDA devices", cuda_lines),
        ("Weights", lambda: weights_lines(settings)),
        ("Folders and caches", folder_lines),
        ("Last errors (oldest first)", error_lines),
    ):
        parts += ["", f"### {title}", *_section(lines)]
    return "\n".join(parts) + "\n"
