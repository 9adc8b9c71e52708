"""Installing the engine's packages for this QGIS, into a folder the plugin owns.

pip runs with QGIS's own Python and ``--target`` the plugin's folder, so nothing else on the system
changes. torch comes as a CPU or a CUDA build (the user picks; the default follows ``nvidia-smi``), or
everything comes from a local folder of wheels (``make wheelhouse`` prepares one on a connected
machine) for air-gapped installs. NumPy, and every package of QGIS's that is built against it, is held at
QGIS's own version through a pip constraints file (:func:`qgis_constraints`).
No Qt here: the dialog runs :func:`install` in a QgsTask.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
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


# Run with QGIS's Python: every package it has, and whether it needs NumPy (outside an "extra").
_PACKAGES_SCRIPT = r"""
import importlib.metadata as m, json, re
found = []
for d in m.distributions():
    needs = [r.split(";")[0] for r in (d.requires or []) if "extra ==" not in r]
    found.append([d.metadata["Name"] or "", d.version, any(re.match(r"numpy\b", n.strip(), re.I) for n in needs)])
print(json.dumps(found))
"""
_PLAIN_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?$")


def qgis_packages(python: str | None = None) -> list[tuple[str, str, bool]]:
    """(name, version, needs NumPy) for every package QGIS's Python has, read from a fresh interpreter so
    the plugin's own folder is not counted; empty when that Python cannot be asked."""
    try:
        out = subprocess.run(  # nosec B603 - a fixed script, QGIS's own Python
            [python or qgis_python(), "-I", "-c", _PACKAGES_SCRIPT], capture_output=True, text=True, timeout=60
        )
        return [tuple(p) for p in json.loads(out.stdout)] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def qgis_constraints(packages: list[tuple[str, str, bool]]) -> list[str]:
    """``name==version`` for QGIS's own NumPy and every package of QGIS's that needs NumPy (SciPy,
    pandas, Matplotlib, Shapely...): their compiled code is tied to that NumPy, so what the plugin
    installs may add packages but never replace these (its folder goes first on QGIS's path). Debian's
    local version suffixes (``+dfsg``) are dropped; a version pip cannot read is left out, not guessed."""
    pins = {}
    for name, version, needs_numpy in packages:
        version = str(version).split("+")[0]
        if (name.lower() == "numpy" or needs_numpy) and name and _PLAIN_VERSION.match(version):
            pins[name.lower()] = f"{name}=={version}"
    return sorted(pins.values())


def usable_torch(packages: list[tuple[str, str, bool]]) -> str | None:
    """The torch QGIS's Python already has (a distribution's python3-torch, say), if new enough: then
    none is installed over it."""
    for name, version, _ in packages:
        if name.lower() == "torch" and _release(version)[:2] >= MIN_TORCH:
            return version
    return None


def pip_steps(
    target: Path,
    build: str = "cpu",
    wheels: str | None = None,
    python: str | None = None,
    torch: str | None = None,
    constraints: Path | None = None,
    with_torch: bool = True,
) -> list[list[str]]:
    """The pip commands, in order: torch first (from the CPU index for a CPU build; left out when
    ``with_torch`` is False), then the rest; ``constraints``: a file of :func:`qgis_constraints` lines,
    obeyed by both."""
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
    if constraints:
        base += ["--constraint", str(constraints)]
    rest = [requirement for name, requirement in REQUIRED.items() if name != "torch"] + list(OPTIONAL.values())
    if not with_torch:
        return [base + rest]
    torch_step = base + [torch or REQUIRED["torch"]]
    if build == "cpu" and not wheels and cpu_index_reachable():
        torch_step += ["--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
    return [torch_step, base + rest]


def _plan(python: str | None, torch: str | None, log: Callable[[str], None]) -> tuple[list[str], bool]:
    """The constraints and whether to install torch, from what QGIS's Python has."""
    packages = qgis_packages(python)
    kept = None if torch else usable_torch(packages)
    if kept:
        log(f"QGIS's Python already has torch {kept}: it is kept, not installed again")
    constraints = qgis_constraints(packages)
    numpy = qgis_numpy_version()
    if not constraints and numpy:  # QGIS's Python could not be asked: at least this one's NumPy holds
        constraints = [f"numpy=={numpy.split('+')[0]}"]
    return constraints, kept is None


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines, with_torch = _plan(python, torch, log)
    constraints = write_constraints(folder / "qgis-constraints.txt", lines)
    steps = pip_steps(folder, build, None, python, torch, constraints, with_torch)
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
    constraints = Path(f"{staging}.constraints.txt")
    try:
        lines, with_torch = _plan(python, torch, log)
        write_constraints(constraints, lines)
        for command in pip_steps(staging, build, wheels, python, torch, constraints, with_torch):
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
        drop_what_qgis_has(staging, lines, log)
        problems = conflicts(staging, with_torch)
        if problems:
            raise InstallError("; ".join(problems))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log(f"installed into {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        constraints.unlink(missing_ok=True)


def drop_what_qgis_has(folder: Path, constraints: list[str], log: Callable[[str], None] = print) -> None:
    """pip --target puts every dependency into ``folder``, NumPy included; a copy of a package QGIS has
    at the same version would only shadow QGIS's own, so it is removed (file by file, from pip's record)."""
    for line in constraints:
        name, version = line.split("==")
        for dist in importlib.metadata.distributions(name=name, path=[str(folder)]):
            if dist.version.split("+")[0] != version:
                continue
            root = folder.resolve()
            paths = [(folder / file).resolve() for file in dist.files or []]
            paths = [p for p in paths if p.is_relative_to(root) and p != root]  # never outside the folder
            for path in paths:
                if path.is_file():
                    path.unlink()
            for directory in sorted(
                {d for p in paths for d in p.parents if d.is_relative_to(root) and d != root},
                key=lambda d: -len(d.parts),
            ):  # deepest first: emptied folders go
                shutil.rmtree(directory / "__pycache__", ignore_errors=True)
                if directory.is_dir() and not any(directory.iterdir()):
                    directory.rmdir()
            log(f"{name} {version}: QGIS's own is used (the copy pip added is removed)")


def write_constraints(path: Path, lines: list[str]) -> Path:
    """QGIS's packages that must stay as they are (:func:`qgis_constraints`), as a pip constraints file."""
    try:
        path.write_text("".join(f"{line}\n" for line in lines))
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc}") from exc
    return path


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


def conflicts(folder: Path, with_torch: bool = True) -> list[str]:
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
    for name in ("torch", "transformers") if with_torch else ("transformers",):
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
