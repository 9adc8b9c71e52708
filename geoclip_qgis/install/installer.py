"""Installing the engine's packages for this QGIS, into a folder the plugin owns.

pip runs with QGIS's own Python and ``--target`` the plugin's folder, so nothing else on the system
changes. torch comes as a CPU or a CUDA build (the user picks; the default follows ``nvidia-smi``), or
everything comes from a local folder of wheels (``make wheelhouse`` prepares one on a connected
machine) for air-gapped installs. NumPy, and every package of QGIS's that is built against it, is held at
QGIS's own version through a pip constraints file (:func:`qgis_constraints`). The same install brings
GeoCLIP's trained heads and GPS gallery: the official release wheel, pinned by version and sha256, without
its dependencies (:data:`HEADS_RELEASE`). A CPU build is what gets installed when CPU is chosen, or the
install stops before downloading and says why (:func:`check_torch_build`).
No Qt here: the dialog runs :func:`install` in a QgsTask.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess  # nosec B404 - pip is run with a fixed argument list, never through a shell
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..core.deps import HEADS_RELEASE, HEADS_RELEASE_SHA256, OPTIONAL, REQUIRED, qgis_python

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI_INDEX = "https://pypi.org/simple"
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


def _pip_base(target: Path, wheels: str | None, python: str | None, constraints: Path | None) -> list[str]:
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
    return base


def heads_step(target: Path, requirements: Path, wheels: str | None = None, python: str | None = None) -> list[str]:
    """pip for the GeoCLIP release wheel alone: no dependencies (the engine brings its own), hash-checked
    against :data:`HEADS_RELEASE_SHA256` (``requirements`` is a file of :func:`heads_requirement`)."""
    return _pip_base(target, wheels, python, None) + ["--no-deps", "--require-hashes", "-r", str(requirements)]


def heads_requirement() -> str:
    return f"{HEADS_RELEASE} --hash=sha256:{HEADS_RELEASE_SHA256}\n"


def pip_steps(
    target: Path,
    build: str = "cpu",
    wheels: str | None = None,
    python: str | None = None,
    torch: str | None = None,
    constraints: Path | None = None,
    with_torch: bool = True,
    cpu_index: bool = False,
) -> list[list[str]]:
    """The pip commands for the packages, in order: torch first (from PyTorch's CPU index when
    ``cpu_index``; left out when ``with_torch`` is False), then the rest; ``constraints``: a file of
    :func:`qgis_constraints` lines, obeyed by both. The heads come after them (:func:`heads_step`)."""
    base = _pip_base(target, wheels, python, constraints)
    rest = [requirement for name, requirement in REQUIRED.items() if name != "torch"] + list(OPTIONAL.values())
    if not with_torch:
        return [base + rest]
    torch_step = base + [torch or REQUIRED["torch"]]
    if build == "cpu" and not wheels and cpu_index:
        torch_step += ["--index-url", CPU_INDEX, "--extra-index-url", PYPI_INDEX]
    return [torch_step, base + rest]


def pypi_torch_is_cuda() -> bool:
    """PyPI's torch wheels for Linux on x86_64 carry CUDA (several GB of nvidia packages); elsewhere
    (Windows, macOS, Linux on ARM) PyPI's torch is the CPU build."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def resolved_torch(step: list[str]) -> dict | None:
    """What pip would install for the torch step, asked without installing it (``--dry-run --report``:
    metadata only where the index serves it): {"version", "url", "cuda"}; None when pip cannot say."""
    at = step.index("install")
    command = step[: at + 1] + ["--dry-run", "--no-deps", "--ignore-installed", "--quiet", "--report", "-"]
    skip = {"--target", "--upgrade", "--no-warn-script-location"}
    rest, i = step[at + 1 :], 0
    while i < len(rest):
        if rest[i] in skip:
            i += 2 if rest[i] == "--target" else 1
            continue
        command.append(rest[i])
        i += 1
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)  # nosec B603 - fixed pip arguments
        report = json.loads(out.stdout) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    for item in (report or {}).get("install", []):
        metadata = item.get("metadata", {})
        if str(metadata.get("name", "")).lower() != "torch":
            continue
        version = str(metadata.get("version", ""))
        needs = [r for r in metadata.get("requires_dist") or [] if "extra ==" not in r]
        cuda = "+cu" in version or any(r.lower().startswith("nvidia-") for r in needs)
        return {"version": version, "url": item.get("download_info", {}).get("url", ""), "cuda": cuda}
    return None


def check_torch_build(step: list[str], log: Callable[[str], None] = print) -> None:
    """A CPU build was chosen but PyTorch's CPU index cannot be reached: install from PyPI only when
    what PyPI gives here is a CPU build; stop (before any download) and say why otherwise."""
    found = resolved_torch(step)
    if found is None and not pypi_torch_is_cuda():
        log("PyTorch's CPU index cannot be reached; PyPI's torch for this system is a CPU build")
        return
    if found is not None and not found["cuda"]:
        log(f"PyTorch's CPU index cannot be reached; torch {found['version']} found elsewhere is a CPU build")
        return
    what = f"torch {found['version']}" if found else "PyPI's torch for Linux"
    raise InstallError(
        f"the CPU build of torch was chosen, but PyTorch's CPU index ({CPU_INDEX}) cannot be reached and "
        f"{what} is a CUDA build (several GB of NVIDIA libraries). Nothing was downloaded. Allow that address, "
        "choose the CUDA build knowingly, or install from a folder of wheels made on a connected machine."
    )


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


def _package_steps(
    target: Path,
    build: str,
    wheels: str | None,
    python: str | None,
    torch: str | None,
    constraints: Path | None,
    with_torch: bool,
    log: Callable[[str], None],
) -> list[list[str]]:
    """:func:`pip_steps` with torch's source decided: PyTorch's CPU index for a CPU build when it can be
    reached, else only a CPU build found elsewhere (:func:`check_torch_build`)."""
    online_cpu = build == "cpu" and not wheels and with_torch
    cpu_index = online_cpu and cpu_index_reachable()
    steps = pip_steps(target, build, wheels, python, torch, constraints, with_torch, cpu_index=cpu_index)
    if online_cpu and not cpu_index:
        check_torch_build(steps[0], log)
    return steps


def download_wheels(
    folder: Path,
    build: str = "cpu",
    python: str | None = None,
    log: Callable[[str], None] = print,
    torch: str | None = None,
) -> None:
    """A folder of every wheel an offline install needs, the GeoCLIP release included (run on a connected
    machine; same Python version and platform as the QGIS it is for)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines, with_torch = _plan(python, torch, log)
    constraints = write_constraints(folder / "qgis-constraints.txt", lines)
    requirements = folder / "geoclip-release.txt"
    requirements.write_text(heads_requirement())
    steps = _package_steps(folder, build, None, python, torch, constraints, with_torch, log)
    for command in [*steps, heads_step(folder, requirements, None, python)]:
        command = [c for c in command if c not in ("--upgrade", "--no-warn-script-location")]
        at = command.index("install")
        command[at : at + 3] = ["download", "--dest", str(folder), "--only-binary", ":all:"]  # replaces --target X
        log("$ " + " ".join(command))
        if subprocess.run(command).returncode != 0:  # nosec B603
            raise InstallError("pip download failed")


def _run_pip(command: list[str], log: Callable[[str], None], should_stop: Callable[[], bool]) -> None:
    log("$ " + " ".join(command))
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # nosec B603
        text=True,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    ) as process:
        for line in process.stdout:
            log(line.rstrip())
            if should_stop():
                process.terminate()
    if process.returncode != 0:
        raise InstallError("cancelled" if should_stop() else f"pip failed (exit {process.returncode}); see the log")


def install(
    target: Path,
    build: str = "cpu",
    wheels: str | None = None,
    log: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    python: str | None = None,
    torch: str | None = None,
) -> None:
    """Run the pip steps (packages, then the GeoCLIP release's heads and gallery), streaming their output
    to ``log``; raise InstallError on failure.

    Packages land in a staging folder first and replace ``target`` only when every step succeeded, so a
    failed or cancelled install leaves what was there before.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    constraints = Path(f"{staging}.constraints.txt")
    requirements = Path(f"{staging}.release.txt")
    try:
        lines, with_torch = _plan(python, torch, log)
        write_constraints(constraints, lines)
        requirements.write_text(heads_requirement())
        steps = _package_steps(staging, build, wheels, python, torch, constraints, with_torch, log)
        for command in [*steps, heads_step(staging, requirements, wheels, python)]:
            _run_pip(command, log, should_stop)
        drop_what_qgis_has(staging, lines, log)
        problems = conflicts(staging, with_torch, build)
        if problems:
            raise InstallError("; ".join(problems))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log(f"installed into {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        constraints.unlink(missing_ok=True)
        requirements.unlink(missing_ok=True)


def install_heads(
    target: Path,
    wheels: str | None = None,
    log: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    python: str | None = None,
) -> None:
    """The GeoCLIP release alone (heads and gallery, about 40 MB), for a QGIS whose Python already has
    the packages: into a staging folder, checked, then beside what ``target`` holds (an older copy of the
    release there is replaced, nothing else is touched)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    requirements = Path(f"{staging}.release.txt")
    try:
        requirements.write_text(heads_requirement())
        _run_pip(heads_step(staging, requirements, wheels, python), log, should_stop)
        if not _release_installed(staging):
            raise InstallError("the GeoCLIP release's heads are missing after the install")
        for old in target.glob("geoclip-*.dist-info"):
            shutil.rmtree(old)
        for entry in staging.iterdir():
            placed = target / entry.name
            if placed.is_symlink() or placed.is_file():
                placed.unlink()
            elif placed.exists():
                shutil.rmtree(placed)
            entry.rename(placed)
        log(f"installed {HEADS_RELEASE} into {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        requirements.unlink(missing_ok=True)


def _release_installed(folder: Path) -> bool:
    """The GeoCLIP release is in ``folder`` with every file the engine needs (the engine's own rule)."""
    from ..backend.store.weights import heads_problem

    return _version("geoclip", folder) is not None and heads_problem(folder / "geoclip" / "model") is None


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


def conflicts(folder: Path, with_torch: bool = True, build: str = "") -> list[str]:
    """What in ``folder`` would not work with this QGIS: a NumPy of another major version than GDAL's,
    a torch older than the engine needs, a CUDA torch where the CPU build was chosen, a missing package
    or a missing GeoCLIP release."""
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
    nvidia = sorted(
        d.metadata["Name"]
        for d in importlib.metadata.distributions(path=[str(folder)])
        if str(d.metadata["Name"] or "").lower().startswith("nvidia-")
    )
    if build == "cpu" and torch and ("+cu" in torch or nvidia):
        problems.append(
            f"the CPU build was chosen but pip brought torch {torch} with CUDA ({len(nvidia)} NVIDIA packages)"
        )
    for name in ("torch", "transformers") if with_torch else ("transformers",):
        if _version(name, folder) is None:
            problems.append(f"{name} is missing after the install")
    if not _release_installed(folder):
        problems.append("the GeoCLIP release (heads and gallery) is missing after the install")
    return problems


def main(argv=None) -> int:
    """python -m geoclip_qgis.install.installer install TARGET [--wheels DIR] | heads TARGET | wheelhouse DIR: the same
    from a shell."""
    parser = argparse.ArgumentParser(prog="python -m geoclip_qgis.install.installer")
    parser.add_argument("action", choices=["install", "heads", "wheelhouse"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--wheels", help="install from this folder of wheels, offline")
    parser.add_argument("--build", choices=["cpu", "cuda"], default="cuda" if has_nvidia_gpu() else "cpu")
    parser.add_argument("--python", help="the Python to install for (default: this one)")
    parser.add_argument("--torch", help="a torch requirement other than the default, e.g. torch==2.13.0")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            install(args.folder, args.build, args.wheels, python=args.python, torch=args.torch)
        elif args.action == "heads":
            install_heads(args.folder, args.wheels, python=args.python)
        else:
            download_wheels(args.folder, args.build, args.python, torch=args.torch)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
