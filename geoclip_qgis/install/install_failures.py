"""Why a dependency install failed, in plain words with the fix, read from pip's output.

pip's own words ("NewConnectionError", "ResolutionImpossible") mean little to most QGIS users; the
install dialog shows :func:`explain` above the raw output, which stays in its log. No Qt here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

COMMAND_PREFIX = "$ "  # the installer echoes each pip command: they name numpy and the index themselves


@dataclass(frozen=True)
class Cause:
    code: str
    title: str
    fix: str

    def words(self) -> str:
        return f"{self.title}\n{self.fix}"


def _has(*needles: str) -> Callable[[str], bool]:
    return lambda output: any(needle in output for needle in needles)


_numpy_breaks = _has(
    "numpy.dtype size changed",
    "compiled using numpy 1.x cannot be run in",
    "would shadow qgis's numpy",
    "_array_api not found",
    "module compiled against api version",
)


def _numpy_conflict(output: str) -> bool:
    if _numpy_breaks(output):
        return True
    # "Collecting numpy" comes before any conflict: numpy must be named in what pip says about the conflict
    found = [output.find(word) for word in ("conflicting dependencies", "resolutionimpossible") if word in output]
    return bool(found) and "numpy" in output[output.rfind("\n", 0, min(found)) + 1 :]


def _wrong_python(output: str) -> bool:
    # "Requires-Python" alone is pip's routine note on older releases skipped; it matters when nothing was left
    return _has("is not a supported wheel on this platform", "requires a different python")(output) or (
        "requires-python" in output and "could not find a version that satisfies" in output
    )


def _python() -> str:
    bits = "64-bit" if sys.maxsize > 2**32 else "32-bit"
    return f"Python {sys.version_info[0]}.{sys.version_info[1]} ({bits})"


# Checked in this order: a proxy's refusal also reads "Failed to establish a new connection", and an
# offline pip also says "Could not find a version that satisfies".
RULES: tuple[tuple[str, Callable[[str], bool], str, str], ...] = (
    (
        "disk_full",
        _has("no space left on device", "[errno 28]", "[winerror 112]", "not enough space on the disk"),
        "The disk is full.",
        "torch needs about 1 GB of free space for a CPU build and several GB for a CUDA build (more while "
        "it installs). Free some space on the disk that holds your QGIS profile, then install again.",
    ),
    (
        "proxy",
        _has(
            "proxyerror",
            "407 proxy authentication required",
            "cannot connect to proxy",
            "tunnel connection failed",
            "certificate_verify_failed",
        ),
        "A proxy or firewall stopped the download.",
        # pip runs as a separate program: it reads HTTPS_PROXY, not QGIS's own network settings
        "Ask your IT department for the proxy's address (and the name and password it asks for, if any), set "
        "it as the HTTPS_PROXY environment variable in Settings → Options → System → Environment, restart "
        "QGIS and install again; or install offline: build a folder of wheels on a connected machine (make "
        "wheelhouse) and choose it under From a folder of wheels.",
    ),
    (
        "offline",
        _has(
            "failed to establish a new connection",
            "temporary failure in name resolution",
            "name or service not known",
            "getaddrinfo failed",
            "nodename nor servname provided",
            "network is unreachable",
            "read timed out",
            "connection timed out",
        ),
        "This computer could not reach the Python package index (no network, or it is blocked).",
        "Connect to the internet and install again, or install offline: build a folder of wheels on a "
        "connected machine with the same Python and system (make wheelhouse) and choose it under From a "
        "folder of wheels.",
    ),
    (
        "permission",
        _has("permission denied", "[errno 13]", "access is denied", "[winerror 5]", "[winerror 32]"),
        "pip was not allowed to write the packages.",
        "The plugin installs into your QGIS profile folder: make sure your account can write there. On "
        "Windows this also happens when QGIS has the packages loaded: restart QGIS and install again before "
        "running GeoCLIP, and let the antivirus finish scanning.",
    ),
    (
        "numpy_conflict",
        _numpy_conflict,
        "The packages need another NumPy than the one QGIS's GDAL was built with.",
        "GeoCLIP keeps QGIS's own NumPy. Delete the plugin's packages folder (named in this dialog and in "
        "Models… → Diagnostics…) and install again; with a folder of wheels, make it again with QGIS's Python "
        "(make wheelhouse).",
    ),
    (
        "glibc_too_old",
        _has("glibc_2.", "glibcxx_3."),
        "This system's C or C++ runtime (glibc, libstdc++) is older than the one torch was built for.",
        "Install an older torch from a shell (python -m geoclip_qgis.install.installer install <the plugin's packages "
        'folder> --torch "torch==2.2.*"), or use a newer Linux release.',
    ),
    (
        "windows_dll",
        _has("winerror 126", "winerror 1114", "dll load failed", "c10.dll", '.dll" or one of its dependencies'),
        "torch's libraries (DLLs) could not be loaded.",
        "Install the Microsoft Visual C++ Redistributable (x64) and restart Windows; if it persists, install "
        "the CPU build of torch instead of the CUDA one.",
    ),
    (
        "wrong_python",
        _wrong_python,
        f"The packages were built for another Python or system than QGIS's ({_python()}).",
        "Make the folder of wheels again on a machine with the same Python version and system as this QGIS "
        "(make wheelhouse, or python -m geoclip_qgis.install.installer wheelhouse DIR --python <QGIS's python>).",
    ),
    (
        "no_match",
        _has("could not find a version that satisfies", "no matching distribution found"),
        f"pip found no build of a required package for QGIS's {_python()}.",
        "torch is published for 64-bit Python only, and a very new Python can be ahead of it. With a folder of "
        "wheels, the folder lacks one made for this Python: make it again with QGIS's Python (make wheelhouse).",
    ),
)


def match(output: str) -> Cause | None:
    """The known cause of a failed install in pip's output (and the installer's error), or None."""
    said = "\n".join(line for line in output.splitlines() if not line.startswith(COMMAND_PREFIX)).lower()
    for code, test, title, fix in RULES:
        if test(said):
            return Cause(code, title, fix)
    return None


def explain(output: str) -> str:
    """The plain-words cause and its fix; for an unknown cause, pip's own last words."""
    cause = match(output)
    if cause is not None:
        return cause.words()
    said = [line for line in output.splitlines() if line.strip() and not line.startswith(COMMAND_PREFIX)]
    errors = [line for line in said if re.match(r"\s*(error|[a-z]*error\b)", line, re.IGNORECASE)]
    return "\n".join((errors or said)[-8:]) or output.strip()
