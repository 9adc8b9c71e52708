"""Installing the engine's packages for this QGIS, into a folder the plugin owns.

pip runs with QGIS's own Python and ``--target`` the plugin's folder, so nothing else on the system
changes. torch comes as a CPU or a CUDA build (the user picks; the default follows ``nvidia-smi``), or
everything comes from a local folder of wheels (``make wheelhouse`` prepares one on a connected
machine) for air-gapped installs. NumPy is pinned to the version QGIS's GDAL was built against.
No Qt here: the dialog runs :func:`install` in a QgsTask.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess  # nosec B404 - pip is run with a fixed argument list, never through a shell
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .deps import OPTIONAL, REQUIRED, qgis_python

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_TORCH = (2, 2)


class InstallError(Exception):
    pass


def has_nvidia_gpu() -> bool:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        return subprocess.run([tool, "-L"], capture_output=True, timeout=20).returncode == 0  # nosec B603
    except (OSError, subprocess.SubprocessError):
        return False


def qgis_numpy_version() -> str | None:
    """The NumPy QGIS's Python already has (GDAL's bindings are built against its major version)."""
    try:
        return importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_steps(
    target: Path, build: str = "cpu", wheels: str | None = None, python: str | None = None, torch: str | None = None
) -> list[list[str]]:
    """The pip commands, in order: torch first (from the CPU index for a CPU build), then the rest."""
    base = [
        python or qgis_python(),
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--upgrade",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
    ]
    if wheels:
        base += ["--no-index", "--find-links", str(wheels)]
    numpy = qgis_numpy_version()
    pinned = [f"numpy=={numpy}"] if numpy else []
    torch_step = base + [torch or REQUIRED["torch"]] + pinned
    if build == "cpu" and not wheels and cpu_index_reachable():
        torch_step += ["--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
    rest = [requirement for name, requirement in REQUIRED.items() if name != "torch"] + list(OPTIONAL.values())
    return [torch_step, base + rest + pinned]


def cpu_index_reachable() -> bool:
    """PyTorch's CPU-only index, where torch is ~200 MB instead of several GB of CUDA libraries."""
    try:
        with urllib.request.urlopen(CPU_INDEX + "/torch/", timeout=5):  # nosec B310 - a fixed https URL
            return True
    except OSError:
        return False


def download_wheels(
    folder: Path,
    build: str = "cpu",
    python: str | None = None,
    log: Callable[[str], None] = print,
    torch: str | None = None,
) -> None:
    """A folder of every wheel an offline install needs (run on a connected machine; same Python version
    and platform as the QGIS it is for)."""
    steps = pip_steps(Path(folder), build, None, python, torch)
    for command in steps:
        command = [c for c in command if c not in ("--upgrade", "--no-warn-script-location")]
        at = command.index("install")
        command[at : at + 3] = ["download", "--dest", str(folder), "--only-binary", ":all:"]  # replaces --target X
        log("$ " + " ".join(command))
        if subprocess.run(command).returncode != 0:  # nosec B603
            raise InstallError("pip download failed")


def install(
    target: Path,
    build: str = "cpu",
    wheels: str | None = None,
    log: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    python: str | None = None,
    torch: str | None = None,
) -> None:
    """Run the pip steps, streaming their output to ``log``; raise InstallError on failure.

    Packages land in a staging folder first and replace ``target`` only when every step succeeded, so a
    failed or cancelled install leaves what was there before.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for command in pip_steps(staging, build, wheels, python, torch):
            log("$ " + " ".join(command))
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # nosec B603
                text=True,
                env={**os.environ, "PYTHONNOUSERSITE": "1"},
            )
            for line in process.stdout:
                log(line.rstrip())
                if should_stop():
                    process.terminate()
            if process.wait() != 0:
                raise InstallError(
                    "cancelled" if should_stop() else f"pip failed (exit {process.returncode}); see the log"
                )
        problems = conflicts(staging)
        if problems:
            raise InstallError("; ".join(problems))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log(f"installed into {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _version(name: str, folder: Path) -> str | None:
    found = list(importlib.metadata.distributions(name=name, path=[str(folder)]))
    return found[0].version if found else None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def conflicts(folder: Path) -> list[str]:
    """What in ``folder`` would not work with this QGIS: a NumPy of another major version than GDAL's,
    a torch older than the engine needs, a missing package."""
    problems = []
    system_numpy = qgis_numpy_version()
    numpy = _version("numpy", folder)
    if numpy and system_numpy and _release(numpy)[:1] != _release(system_numpy)[:1]:
        problems.append(
            f"NumPy {numpy} would shadow QGIS's NumPy {system_numpy}; GDAL's bindings need NumPy "
            f"{_release(system_numpy)[0]}.x"
        )
    torch = _version("torch", folder)
    if torch and _release(torch)[:2] < MIN_TORCH:
        problems.append(f"torch {torch} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}")
    for name in ("torch", "transformers"):
        if _version(name, folder) is None:
            problems.append(f"{name} is missing after the install")
    return problems


def main(argv=None) -> int:
    """python -m geoclip_qgis.installer install TARGET [--wheels DIR] | wheelhouse DIR: the same from a shell."""
    parser = argparse.ArgumentParser(prog="python -m geoclip_qgis.installer")
    parser.add_argument("action", choices=["install", "wheelhouse"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--wheels", help="install from this folder of wheels, offline")
    parser.add_argument("--build", choices=["cpu", "cuda"], default="cuda" if has_nvidia_gpu() else "cpu")
    parser.add_argument("--python", help="the Python to install for (default: this one)")
    parser.add_argument("--torch", help="a torch requirement other than the default, e.g. torch==2.13.0")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            install(args.folder, args.build, args.wheels, python=args.python, torch=args.torch)
        else:
            download_wheels(args.folder, args.build, args.python, torch=args.torch)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
