#!/usr/bin/env python3
"""The plugin in newer QGIS releases: QGIS 3.40 LTR (Debian 13 trixie) and QGIS 3.44 (Debian sid), each
in a Debian root of its own, built once with mmdebstrap and cached under ~/.cache/geoclip-qgis/qgis-roots/
(or $GEOCLIP_QGIS_ROOTS), where every clone on the machine finds them.

    /usr/bin/python3 tools/qgis_versions.py                 # build what is missing, test, print the table
    /usr/bin/python3 tools/qgis_versions.py --versions 3.40 # one release
    /usr/bin/python3 tools/qgis_versions.py --suite all     # every test instead of the QGIS ones
    /usr/bin/python3 tools/qgis_versions.py --source HEAD   # the last commit instead of the working tree
    /usr/bin/python3 tools/qgis_versions.py --rebuild       # build the roots again from nothing
    /usr/bin/python3 tools/qgis_versions.py --build-only    # only make sure the roots exist
    /usr/bin/python3 tools/qgis_versions.py --qt6           # is there a Qt6 build of QGIS in Debian?
    /usr/bin/python3 tools/qgis_versions.py -- -k desktop   # arguments after -- go to pytest

Each root holds Debian's own QGIS, Python, GDAL, NumPy and torch (python3-torch), the Debian packages the
Makefile's APT_PACKAGES names, and a venv made with that root's Python and ``--system-site-packages``
holding what Debian does not ship, from PyPI: pyproject.toml's dependencies and its ``test`` and ``heif``
extras, and the Makefile's ``--no-deps`` wheels (the ``geoclip`` release, scikit-image for its sample
photos). pip is constrained to every Python package Debian installed in the root, so NumPy, torch and the
rest stay the root's own; a pin in pyproject.toml that the root's own version breaks is reported, not
obeyed. A change to the Makefile's packages or to pyproject.toml's requirements tops the cached roots up.

Then, per root, in fresh mount and PID namespaces (``/proc``, ``/sys``, ``/dev`` and a private ``/tmp``
mounted; one snapshot of the checkout, the same for every release, at ``/work/main``): the tests marked
``qgis`` or ``desktop`` (the plugin headless with QGIS's API, Processing, ``qgis_process``, and the plugin
ZIP installed into a fresh profile of the real QGIS desktop under Xvfb). The desktop test's dock screenshot
is kept as ``docs/qgis-<version>-desktop.png``; versions, times and results are printed as a table and
written to ``report.json`` there.

Needs root (or passwordless sudo), the right to make mount namespaces, ``mmdebstrap`` (installed with apt
when missing) and, for a root not yet built, the network to a Debian mirror and to PyPI. Where one of
these is missing it says so in one line and exits 0; otherwise it exits 1 when any release fails.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Outside the checkout, so that every clone on a machine (CI's included) reuses the roots once built.
CACHE = Path(
    os.environ.get("GEOCLIP_QGIS_ROOTS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geoclip-qgis" / "qgis-roots"
)
REPORT = CACHE / "report.json"
DOCS = ROOT / "docs"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian").rstrip("/")

# Paths inside a root.
INSIDE_REPO = "/work/main"
INSIDE_VENV = "/opt/geoclip-qgis/.venv"  # the tests find the venv's site-packages by ".venv" in its path


@dataclass(frozen=True)
class Release:
    version: str  # QGIS major.minor
    suite: str  # Debian suite
    debian: str  # its name in the report

    @property
    def directory(self) -> Path:
        return CACHE / self.suite


RELEASES = (
    Release("3.40", "trixie", "Debian 13 trixie"),
    Release("3.44", "sid", "Debian sid"),
)

# Debian packages besides the Makefile's APT_PACKAGES: Debian's torch, OpenBLAS, pandas (a test
# dependency Debian has), pytest, setuptools (for the editable install of the checkout) and the CA
# certificates pip needs. Recommends are not installed, so the BLAS is named: without OpenBLAS (libtorch's
# first Recommends) torch and NumPy fall back to the reference BLAS, about 100 times slower in fp32, and
# the location encoder needs 20 minutes for the 100K gallery instead of seconds.
BASE_APT = (
    "qgis",
    "python3-qgis",
    "qgis-providers",
    "python3-gdal",
    "python3-torch",
    "libopenblas0",
    "python3-pandas",
    "python3-pip",
    "python3-venv",
    "python3-setuptools",
    "python3-pytest",
    "ca-certificates",
)
PYPROJECT_EXTRAS = ("heif", "test")  # "ray" is left out: optional, and its pyarrow<18 pin needs NumPy 1
ALWAYS_FROM_DEBIAN = ("torch", "numpy")  # never from PyPI, even where Debian's version breaks a pin

MMDEBSTRAP_OPTIONS = (
    "--mode=root",  # plain chroot as root: needs no subordinate uid ranges, works in a root container
    "--variant=apt",  # Essential packages and apt; everything else is named
    '--aptopt=Acquire::Languages "none"',
    # A mirror that serves a frozen copy of sid keeps its signatures but lets its Valid-Until pass.
    '--aptopt=Acquire::Check-Valid-Until "false"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)

# --suite plugin: every test marked qgis or desktop (tests/test_plugin.py with its Processing and
# qgis_process tests, tests/test_desktop.py, and any other test of the QGIS API).
PLUGIN_MARKERS = "qgis or desktop"
NOT_IN_ROOTS = ("tests/test_stock_qgis.py",)  # about QGIS 3.22's /usr/bin/python3 and its torch wheels

VERSIONS_SCRIPT = r"""
import importlib.metadata, json, platform
found = {"python": platform.python_version()}
for name in ("numpy", "torch", "transformers", "huggingface-hub", "pillow", "safetensors", "gdal"):
    try:
        found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        found[name] = None
try:
    from qgis.core import Qgis
    from qgis.PyQt.QtCore import PYQT_VERSION_STR, QT_VERSION_STR
    found["qgis"] = Qgis.QGIS_VERSION
    found["qt"] = QT_VERSION_STR
    found["pyqt"] = PYQT_VERSION_STR
except Exception as exc:
    found["qgis"] = "not importable: %s" % exc
print("VERSIONS " + json.dumps(found))
"""

# Run with the root's own Python (python3 -I): the constraints (every Python package Debian installed)
# and the requirement lists without the packages Debian has, so their versions stay; a pin that Debian's
# version breaks is reported.
REQUIREMENTS_SCRIPT = r"""
import importlib.metadata, json, re, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
wanted = json.load(open("/tmp/wanted.json"))
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
system = {}
for dist in importlib.metadata.distributions():
    if dist.metadata["Name"]:
        system[norm(dist.metadata["Name"])] = dist.version
with open("/opt/geoclip-qgis-constraints.txt", "w") as handle:
    handle.write("".join("%s==%s\n" % item for item in sorted(system.items())))
conflicts = []
for group in ("core", "extras"):
    lines = []
    for text in wanted[group]:
        requirement = Requirement(text)
        name = norm(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if name in system:  # the root's own stays, and pip is not asked (it would re-resolve Debian's metadata)
            if requirement.specifier and not requirement.specifier.contains(system[name], prereleases=True):
                conflicts.append({"requirement": text, "debian": system[name]})
        elif name in wanted["always_from_debian"]:
            conflicts.append({"requirement": text, "debian": None})
        else:
            lines.append(text)
    with open("/tmp/%s.txt" % group, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
print("PINS " + json.dumps(conflicts))
"""

_children: set = set()  # every long-running child, killed (with its namespaces) if this tool is stopped


def start(argv: list[str], **options) -> subprocess.Popen:
    process = subprocess.Popen(argv, start_new_session=True, **options)
    _children.add(process)
    return process


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # unshare ignores SIGTERM; its namespaces die with it
    except ProcessLookupError:
        pass


def kill_children() -> None:
    for process in list(_children):
        if process.poll() is None:
            kill_group(process)
            process.wait()
        _children.discard(process)


def log(message: str) -> None:
    print(f"[qgis-versions] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# What the project asks for


def makefile_variables() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    found = {m.group(1): m.group(2).strip() for m in re.finditer(r"(?m)^([A-Z_]+)\s*[:?]?=\s*(.*)$", text)}
    # The release pin lives in the plugin's installer (the Makefile reads it from there with $(shell ...)).
    release = re.search(r'(?m)^HEADS_RELEASE = "([^"]+)"', (ROOT / "geoclip_qgis" / "core" / "deps.py").read_text())
    if release and found.get("GEOCLIP_RELEASE", "").startswith("$(shell"):
        found["GEOCLIP_RELEASE"] = release.group(1)
    return found


def wanted_apt() -> list[str]:
    """BASE_APT and the Makefile's APT_PACKAGES."""
    names = makefile_variables().get("APT_PACKAGES", "").split()
    return sorted(set(BASE_APT) | {n for n in names if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", n)})


def wanted_pip() -> dict[str, list[str]]:
    """pyproject.toml's dependencies (core), its test and heif extras, and the Makefile's --no-deps wheels."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = []
    for name in PYPROJECT_EXTRAS:
        extras += [r for r in project.get("optional-dependencies", {}).get(name, []) if r not in extras]
    variables = makefile_variables()
    no_deps = []
    for found in re.findall(r'--no-deps\s+"([^"]+)"', (ROOT / "Makefile").read_text()):
        no_deps.append(re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), ""), found))
    return {
        "core": list(project.get("dependencies", [])),
        "extras": extras,
        "no_deps": no_deps,
        "always_from_debian": list(ALWAYS_FROM_DEBIAN),
    }


def spec_hash() -> str:
    """What the Debian part of a root is built from, beyond the package lists; a change rebuilds it."""
    text = json.dumps([BASE_APT, MMDEBSTRAP_OPTIONS, INSIDE_VENV, 2])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Can this machine do it?


def _run_quiet(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def reachable(url: str, timeout: float = 15) -> bool:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # nosec B310 - fixed http(s) URLs
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def pypi_index() -> str:
    value = os.environ.get("PIP_INDEX_URL", "")
    return value.rstrip("/") if value.startswith(("http://", "https://")) else "https://pypi.org/simple"


def machine_problem() -> str | None:
    """Why this machine cannot build or enter the roots, in one line; None when it can."""
    if platform.system() != "Linux":
        return f"Debian roots need Linux, this is {platform.system()}"
    if platform.machine() not in ("x86_64", "amd64"):
        return f"the roots are built for amd64, this machine is {platform.machine()}"
    for program in ("unshare", "chroot", "mount"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    probe = _run_quiet(
        ["unshare", "--mount", "--pid", "--fork", "sh", "-c", "mount -t proc proc /proc && mount -t tmpfs none /mnt"]
    )
    if probe.returncode != 0:
        return (
            "cannot make mount namespaces here (a container without CAP_SYS_ADMIN?): "
            + (probe.stdout.strip().splitlines() or ["unshare failed"])[-1]
        )
    return None


def ensure_mmdebstrap() -> str | None:
    if shutil.which("mmdebstrap"):
        return None
    if shutil.which("apt-get") is None:
        return "mmdebstrap is not installed and there is no apt-get to install it"
    log("installing mmdebstrap with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mmdebstrap"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return None if shutil.which("mmdebstrap") else "mmdebstrap is not installed and apt-get could not install it"


def network_problem(suites: list[str]) -> str | None:
    for suite in suites:
        url = f"{MIRROR}/dists/{suite}/InRelease"
        if not reachable(url):
            return f"no network to the Debian mirror ({url})"
    index = pypi_index()
    if not reachable(f"{index}/geoclip/"):
        return f"no network to the Python package index ({index})"
    return None


def become_root(argv: list[str]) -> None:
    """Run again through passwordless sudo when not root; exit 0 with the reason when that cannot be."""
    if os.geteuid() == 0:
        return
    if shutil.which("sudo") and _run_quiet(["sudo", "-n", "true"], timeout=30).returncode == 0:
        os.execvp("sudo", ["sudo", "-n", "--preserve-env", sys.executable, str(Path(__file__).resolve()), *argv])
    print(
        "SKIPPED: building and entering Debian roots needs root or passwordless sudo "
        "(mmdebstrap root mode, chroot, mounts)"
    )
    sys.exit(0)


# ---------------------------------------------------------------------------------------------------------
# Entering a root


def in_root(
    root: Path,
    command: str,
    *,
    tmp: Path,
    binds: list[tuple[Path, str, bool]] = (),
    env: dict | None = None,
    log_file: Path | None = None,
    timeout: float | None = None,
    echo: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``command`` (bash) inside ``root``, in new mount and PID namespaces, so every mount and every
    process left behind (Xvfb, QGIS) goes away with it: ``/proc``, ``/sys``, ``/dev`` and ``/tmp`` (the
    host folder ``tmp``, so big test files do not fill memory) mounted; ``binds`` are (host folder, path
    inside, read-only)."""
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o1777)
    lines = [
        "set -e",
        f"R={shlex.quote(str(root))}",
        'mount -t proc proc "$R/proc"',
        'mount -t sysfs sysfs "$R/sys" 2>/dev/null || mount --rbind /sys "$R/sys"',
        'mount --rbind /dev "$R/dev"',
        f'mount --bind {shlex.quote(str(tmp))} "$R/tmp"',
    ]
    for source, inside, read_only in binds:
        target = f'"$R"{shlex.quote(inside)}'
        lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {shlex.quote(str(source))} {target}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    variables = {
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PATH": f"{INSIDE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        **(env or {}),
    }
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    lines.append(f'exec chroot "$R" /usr/bin/env -i {assignments} /bin/bash -c {shlex.quote(command)}')
    argv = [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "sh",
        "-c",
        "\n".join(lines),
    ]
    handle = open(log_file, "a") if log_file else None
    if handle:
        handle.write(f"\n$ {command}\n")
        handle.flush()
    process = start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, kill_group, [process]) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if handle:
                handle.write(line)
                handle.flush()
            if echo:
                print("    " + line, end="", flush=True)
        process.wait()
    finally:
        if timer:
            timer.cancel()
        if handle:
            handle.close()
        _children.discard(process)
    if timer and process.returncode == -signal.SIGKILL:
        output.append(f"\n(stopped after {timeout:.0f} s)\n")
    return subprocess.CompletedProcess(argv, process.returncode, "".join(output), None)


def network_env(ca_inside: str | None) -> dict:
    """What pip inside a root needs to reach the package index the way the host does."""
    env = {
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": os.environ.get("PIP_DEFAULT_TIMEOUT", "120"),
        "DEBIAN_FRONTEND": "noninteractive",
    }
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = [u for u in os.environ.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            env[key] = " ".join(urls)
    if ca_inside:
        env.update(PIP_CERT=ca_inside, SSL_CERT_FILE=ca_inside, REQUESTS_CA_BUNDLE=ca_inside)
    return env


def host_ca_bundle() -> Path | None:
    """The host's CA bundle (it may hold a proxy's certificate that the root's own bundle lacks)."""
    for key in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(key) and Path(os.environ[key]).is_file():
            return Path(os.environ[key])
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def networked(
    root: Path,
    script: str,
    name: str,
    log_file: Path,
    timeout: float = 3600,
    binds: list[tuple[Path, str, bool]] = (),
    echo: bool = False,
) -> subprocess.CompletedProcess:
    """``script`` in ``root`` with the network as the host has it (DNS, proxies, CA bundle, pip cache);
    ``binds`` as :func:`in_root` takes them."""
    resolv = Path("/etc/resolv.conf")
    if resolv.is_file():
        shutil.copy(resolv, root / "etc" / "resolv.conf")
    pip_cache = CACHE / "pip-cache"
    pip_cache.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "tmp" / name
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    ca = host_ca_bundle()
    if ca:
        shutil.copy(ca, tmp / "host-ca-bundle.crt")
    (tmp / "wanted.json").write_text(json.dumps(wanted_pip()))
    try:
        return in_root(
            root,
            script,
            tmp=tmp,
            binds=[(pip_cache, "/root/.cache/pip", False), *binds],
            log_file=log_file,
            timeout=timeout,
            env=network_env("/tmp/host-ca-bundle.crt" if ca else None),
            echo=echo,
        )
    finally:
        remove_tree(tmp)


# ---------------------------------------------------------------------------------------------------------
# Building a root


def stamp_path(release: Release) -> Path:
    return CACHE / f"{release.suite}.json"


def read_stamp(release: Release) -> dict | None:
    try:
        stamp = json.loads(stamp_path(release).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("spec") != spec_hash() or not (release.directory / "usr" / "bin" / "qgis").exists():
        return None
    return stamp


def needs_top_up(stamp: dict) -> bool:
    return bool(set(wanted_apt()) - set(stamp.get("apt", []))) or stamp.get("pip") != wanted_pip()


def mounted_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as handle:
        return [line.split()[1] for line in handle if (line.split()[1] + "/").startswith(prefix)]


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    busy = mounted_under(path)
    if busy:
        raise RuntimeError(f"refusing to delete {path}: still mounted there: {', '.join(busy)}")
    shutil.rmtree(path)


def python_script(apt: list[str]) -> str:
    """Inside a root: Debian packages not there yet, then the venv and what it needs from PyPI."""
    pip = f"{INSIDE_VENV}/bin/python -m pip install --progress-bar off"
    constrained = f"{pip} --prefer-binary -c /opt/geoclip-qgis-constraints.txt"
    no_deps = " ".join(shlex.quote(r) for r in wanted_pip()["no_deps"])
    return "\n".join(
        [
            "set -euo pipefail",
            f"missing=$(for p in {' '.join(apt)}; do dpkg -s $p >/dev/null 2>&1 || echo $p; done)",
            'if [ -n "$missing" ]; then',
            '  echo "apt: installing $missing"',
            "  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing",
            "  apt-get clean && rm -rf /var/lib/apt/lists/*",
            "fi",
            f"python3 -I -c {shlex.quote(REQUIREMENTS_SCRIPT)}",
            f"[ -x {INSIDE_VENV}/bin/python ] || python3 -m venv --system-site-packages {INSIDE_VENV}",
            f"if [ -s /tmp/core.txt ]; then {constrained} -r /tmp/core.txt; fi",
            # extras one by one, wheels only: one without a wheel for this Python is reported, not fatal
            "while read -r requirement; do",
            f'  {constrained} --only-binary=:all: "$requirement" || echo "OPTIONAL-FAILED $requirement"',
            "done < /tmp/extras.txt",
            f"{pip} --no-deps {no_deps}" if no_deps else "true",
            f"{INSIDE_VENV}/bin/python -c {shlex.quote(VERSIONS_SCRIPT)}",
        ]
    )


def provision(release: Release, root: Path, log_file: Path) -> dict:
    """Debian top-up and venv; returns what the stamp records of it."""
    apt = wanted_apt()
    result = networked(root, python_script(apt), f"{release.suite}-python", log_file)
    if result.returncode != 0:
        raise RuntimeError(f"installing into the {release.suite} root failed (see {log_file})")
    pins = [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("PINS ")]
    return {
        "apt": apt,
        "pip": wanted_pip(),
        "versions": parse_versions(result.stdout),
        "pin_conflicts": pins[-1] if pins else [],
        "optional_failed": [
            line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("OPTIONAL-FAILED ")
        ],
    }


def build_root(release: Release, log_file: Path, timings: dict) -> dict:
    """mmdebstrap the Debian part, then the venv; the root appears at its place only when complete."""
    partial = CACHE / f"{release.suite}.partial"
    remove_tree(partial)
    remove_tree(release.directory)
    stamp_path(release).unlink(missing_ok=True)
    started = time.monotonic()
    command = [
        "mmdebstrap",
        *MMDEBSTRAP_OPTIONS,
        "--include=" + ",".join(wanted_apt()),
        release.suite,
        str(partial),
        MIRROR,
    ]
    with open(log_file, "w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        # In mount and PID namespaces of its own, so a killed build leaves no mounts or processes behind.
        process = start(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", *command],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = process.wait(timeout=3600)
        except subprocess.TimeoutExpired:
            kill_children()
            returncode = -1
    if returncode != 0:
        raise RuntimeError(f"mmdebstrap {release.suite} failed (see {log_file})")
    timings["debian_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    provided = provision(release, partial, log_file)
    timings["python_s"] = round(time.monotonic() - started, 1)
    partial.rename(release.directory)
    stamp = {
        "spec": spec_hash(),
        "suite": release.suite,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_s": round(timings["debian_s"] + timings["python_s"], 1),
        **timings,
        **provided,
    }
    stamp_path(release).write_text(json.dumps(stamp, indent=2))
    return stamp


def top_up_root(release: Release, stamp: dict, log_file: Path) -> dict:
    started = time.monotonic()
    with open(log_file, "w") as handle:
        handle.write("top-up: the Makefile's packages or pyproject.toml's requirements changed\n")
    stamp.update(provision(release, release.directory, log_file))
    stamp["top_up_s"] = round(time.monotonic() - started, 1)
    stamp["topped_up_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp_path(release).write_text(json.dumps(stamp, indent=2))
    return stamp


def parse_versions(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("VERSIONS ")]
    return json.loads(lines[-1][len("VERSIONS ") :]) if lines else {}


def prepare_roots(releases: list[Release], rebuild: bool, parallel: bool) -> dict[str, dict]:
    """Build missing roots (side by side when ``parallel``: one's downloads overlap the other's unpacking)
    and top up stale ones; per suite: {"built": stamp} or {"topped_up": stamp} or {"error": ...}."""
    results: dict[str, dict] = {}

    def one(release: Release) -> None:
        log_file = CACHE / "logs" / f"{release.suite}-build.log"
        stamp = None if rebuild else read_stamp(release)
        started = time.monotonic()
        timings: dict = {}
        try:
            if stamp is None:
                log(f"building the {release.suite} root for QGIS {release.version} (log: {log_file})")
                stamp = build_root(release, log_file, timings)
                log(
                    f"{release.suite} root built in {time.monotonic() - started:.0f} s "
                    f"(Debian {timings['debian_s']:.0f} s, venv {timings['python_s']:.0f} s)"
                )
                results[release.suite] = {"built": stamp}
            else:
                log(f"topping up the {release.suite} root (log: {log_file})")
                stamp = top_up_root(release, stamp, log_file)
                log(f"{release.suite} root topped up in {stamp['top_up_s']:.0f} s")
                results[release.suite] = {"topped_up": stamp}
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log(f"{release.suite} root: {exc}")
            results[release.suite] = {"error": str(exc), **timings}

    (CACHE / "logs").mkdir(parents=True, exist_ok=True)
    if parallel and len(releases) > 1:
        threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in releases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for release in releases:
            one(release)
    return results


# ---------------------------------------------------------------------------------------------------------
# Running the tests in a root

SKIP_IN_COPY = {".git", ".venv", ".cache", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", "wheelhouse"}


def checkout_files(folder: Path) -> list[str]:
    """The files a clone would have: tracked and untracked, not ignored (without git: all but caches)."""
    result = subprocess.run(
        ["git", "-C", str(folder), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    )
    if result.returncode == 0:
        return [name for name in result.stdout.decode().split("\0") if name and (folder / name).is_file()]
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and not SKIP_IN_COPY.intersection(p.relative_to(folder).parts)
        and not any(part.endswith(".egg-info") for part in p.relative_to(folder).parts)
    ]


def snapshot_checkout(target: Path, source: str) -> None:
    """One copy of the checkout for every release of a run, so all test the same files, and the tests'
    screenshots (docs/) and caches (.cache/) never touch the checkout. ``source``: ``worktree`` (the
    checkout as it is), a commit (``HEAD``), or another folder."""
    if Path(source).is_dir() and Path(source).resolve() == target.resolve():
        return  # the last run's snapshot, tested again as it is
    remove_tree(target)
    target.mkdir(parents=True)
    if source == "worktree" or Path(source).is_dir():
        folder = ROOT if source == "worktree" else Path(source).resolve()
        for name in checkout_files(folder):
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, destination, follow_symlinks=False)
    else:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", source], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)


def junit_summary(path: Path) -> dict:
    summary = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": []}
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError):
        return summary
    for case in tree.iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                summary["failures"].append(
                    {
                        "test": name,
                        "kind": child.tag,
                        "message": (child.get("message") or "")[:500],
                        "traceback": (child.text or "")[-6000:],
                    }
                )
            elif child.tag == "skipped":
                outcome = "skipped"
                summary["skips"].append({"test": name, "reason": (child.get("message") or "")[:300]})
        summary[outcome] += 1
    return summary


def run_tests(release: Release, checkout: Path, suite: str, pytest_args: list[str], timeout: float, echo: bool) -> dict:
    work = CACHE / "work" / release.suite
    for png in (checkout / "docs").glob("qgis-*.png"):  # only this run's screenshots come back
        png.unlink()
    test_cache = work / "cache"  # the tests' derived caches (gallery and world-grid features), kept
    test_cache.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    remove_tree(results)
    results.mkdir(parents=True)
    binds = [(checkout, INSIDE_REPO, False), (test_cache, f"{INSIDE_REPO}/.cache", False), (results, "/results", False)]
    selection = ["-m", PLUGIN_MARKERS] if suite == "plugin" else []
    pytest = [
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-v",
        "-rfEs",
        "--durations=15",
        "--continue-on-collection-errors",
        "--junitxml=/results/junit.xml",
        *selection,
        *[f"--ignore={name}" for name in NOT_IN_ROOTS],
        *pytest_args,
        "tests",
    ]
    script = "\n".join(
        [
            "set -uo pipefail",
            f"cd {INSIDE_REPO}",
            # the checkout, importable as geoclip_qgis and geoclip_qgis.backend (pyproject's package-dir)
            "python -m pip install -q --no-deps --no-build-isolation --no-index -e . > /results/install.log 2>&1"
            " || { cat /results/install.log; exit 3; }",
            f"python -c {shlex.quote(VERSIONS_SCRIPT)}",
            shlex.join(pytest),
        ]
    )
    log_file = CACHE / "logs" / f"{release.suite}-tests.log"
    log_file.write_text("")
    tmp = CACHE / "tmp" / f"{release.suite}-tests"
    remove_tree(tmp)
    what = f"the tests marked {PLUGIN_MARKERS}" if suite == "plugin" else "every test"
    log(f"QGIS {release.version} ({release.suite}): {what} (log: {log_file})")
    started = time.monotonic()
    result = in_root(release.directory, script, tmp=tmp, binds=binds, log_file=log_file, timeout=timeout, echo=echo)
    seconds = round(time.monotonic() - started, 1)
    remove_tree(tmp)
    summary = junit_summary(results / "junit.xml")
    outcome = {
        "tests_s": seconds,
        "returncode": result.returncode,
        "versions": parse_versions(result.stdout),
        "tests": " ".join([*selection, "tests"]),
        **summary,
    }
    if result.returncode != 0 and not summary["failures"]:
        outcome["failures"] = [
            {
                "test": "(run)",
                "kind": "error",
                "message": f"exit {result.returncode}",
                "traceback": result.stdout[-6000:],
            }
        ]
    screenshots = {}
    for name, target in (
        ("qgis-dock-run.png", DOCS / f"qgis-{release.version}-desktop.png"),
        ("qgis-photo-raster.png", CACHE / "screenshots" / f"qgis-{release.version}-photo-raster.png"),
    ):
        produced = checkout / "docs" / name
        if produced.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(produced, target)
            screenshots[name] = str(target)
    outcome["screenshots"] = screenshots
    outcome["passed_all"] = result.returncode == 0
    return outcome


# ---------------------------------------------------------------------------------------------------------
# Is there a Qt6 QGIS in Debian?

QT6_SCRIPT = r"""
set -eu
q=/tmp/qt6
mkdir -p $q/lists/partial $q/cache/archives/partial
touch $q/status
for suite in trixie trixie-backports sid experimental; do echo "deb MIRROR $suite main"; done > $q/sources.list
O="-o Dir::Etc::SourceList=$q/sources.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$q/lists
   -o Dir::State::Status=$q/status -o Dir::Cache=$q/cache -o Acquire::Languages=none"
apt-get $O update -qq
apt-cache $O policy qgis python3-qgis
echo "--- QGIS packages (every version in every suite) that depend on Qt6 or PyQt6:"
apt-cache $O show qgis python3-qgis qgis-providers 2>/dev/null \
  | awk '/^Package:/{p=$2} /^Version:/{v=$2} /^Depends:/{if ($0 ~ /qt6|pyqt6/) print p, v}' | sort -u
echo "--- package names with both qgis and qt6:"
apt-cache $O pkgnames | grep -i qgis | grep -i qt6 || true
echo "--- Qt6 Python bindings available:"
apt-cache $O policy python3-pyqt6 | head -3
"""


# The dependency installer as a user of this QGIS meets it: QGIS's own Python (no venv) lacks transformers;
# the plugin's installer puts the packages into the folder the plugin owns, held to QGIS's NumPy by a
# constraints file, with GeoCLIP's heads; afterwards QGIS's GDAL and NumPy still import as before, and a fresh
# process answers a photo with those heads. Then the same offline: a folder of wheels, installed with no network at all.
INSTALLER_SCRIPT = r"""
set -e
PY=/usr/bin/python3
P=/tmp/plugins; T=/tmp/profile/geoclip_qgis/python; W=/tmp/wheels
mkdir -p $P && cp -r /work/main/geoclip_qgis $P/ && cp -r /work/main/backend $P/geoclip_qgis/backend
HEADS=$T/geoclip/model  # GeoCLIP's heads as the installer brings them (the release wheel, hash-checked)
if $PY -c "import transformers" 2>/dev/null; then echo "INSTALLER: transformers is already in QGIS's Python"; exit 3; fi
BEFORE=$($PY -c "import numpy, osgeo.gdal; print(numpy.__version__, numpy.__file__, osgeo.gdal.__version__)")
echo "QGIS's Python $($PY -c 'import sys; print(sys.version.split()[0])'): NumPy and GDAL: $BEFORE"
check() {  # QGIS restarted: a fresh process with the plugin's folder first on the path, as the plugin sets it
  $1 $PY - "$T" "$P" "$BEFORE" "$HEADS" <<'PYEOF'
import subprocess, sys
target, plugins, before, heads = sys.argv[1:]
sys.path[:0] = [target, plugins]
import numpy, osgeo.gdal
now = f"{numpy.__version__} {numpy.__file__} {osgeo.gdal.__version__}"
assert now == before, f"QGIS's NumPy/GDAL changed: {now} (was {before})"
import torch, transformers
sys.path.insert(0, "/work/main/tests")
from clip_factory import make_clip_checkpoint
clip = make_clip_checkpoint("/tmp/clip", with_text=False)
env = {"PYTHONPATH": f"{target}:{plugins}", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HUB_OFFLINE": "1"}
photo = "/work/main/tests/data/gps/DSCN0010.jpg"
command = [sys.executable, "-m", "geoclip_qgis.backend", "predict", photo, "--clip", str(clip), "--heads", heads,
           "--device", "cpu", "--top-k", "3"]
out = subprocess.run(command, capture_output=True, text=True, env=env)
assert out.returncode == 0, out.stderr[-2000:]
rows = [line for line in out.stdout.splitlines() if "DSCN0010" in line]
assert len(rows) == 3, out.stdout
print(f"RUN OK: NumPy {numpy.__version__} and GDAL {osgeo.gdal.__version__} as before; torch {torch.__version__} "
      f"from {torch.__file__.rsplit('/', 2)[0]}, transformers {transformers.__version__} from "
      f"{transformers.__file__.rsplit('/', 2)[0]}; 3 candidates for DSCN0010.jpg")
PYEOF
}
cd $P
$PY -m geoclip_qgis.install.installer install $T --build cpu
check ""
echo "INSTALLER ONLINE: PASS"
$PY -m geoclip_qgis.install.installer wheelhouse $W --build cpu --python $PY
echo "constraints: $(tr '\n' ' ' < $W/qgis-constraints.txt)"
rm -rf $T /tmp/clip
unshare --net $PY -m geoclip_qgis.install.installer install $T --wheels $W --build cpu
check "unshare --net"
echo "INSTALLER OFFLINE: PASS"
"""


def installer_trial(release: Release, checkout: Path, echo: bool) -> dict:
    """:data:`INSTALLER_SCRIPT` in the release's root, with the host's network for the online half."""
    log_file = CACHE / "logs" / f"{release.suite}-installer.log"
    log_file.unlink(missing_ok=True)
    log(f"QGIS {release.version}: the dependency installer, online then offline (log: {log_file})")
    started = time.monotonic()
    result = networked(
        release.directory,
        INSTALLER_SCRIPT,
        f"{release.suite}-installer",
        log_file,
        timeout=1200,  # a hung pip or download must not eat CI's time
        binds=[(checkout, INSIDE_REPO, True)],
        echo=echo,
    )
    lines = result.stdout.splitlines()
    found = {
        "online": "INSTALLER ONLINE: PASS" in lines,
        "offline": "INSTALLER OFFLINE: PASS" in lines,
        "runs": [line[len("RUN OK: ") :] for line in lines if line.startswith("RUN OK: ")],
        "constraints": [line for line in lines if line.startswith("constraints: ")],
        "seconds": round(time.monotonic() - started, 1),
        "returncode": result.returncode,
    }
    found["result"] = "PASS" if result.returncode == 0 and found["online"] and found["offline"] else "FAIL"
    if found["result"] == "FAIL":
        found["tail"] = result.stdout[-3000:]
    return found


def qt6_check(release: Release) -> int:
    if read_stamp(release) is None:
        print(f"SKIPPED: the {release.suite} root is not built yet (run without --qt6 first)")
        return 0
    if network_problem([release.suite]):
        print(f"SKIPPED: {network_problem([release.suite])}")
        return 0
    log_file = CACHE / "logs" / "qt6.log"
    result = networked(release.directory, QT6_SCRIPT.replace("MIRROR", MIRROR), "qt6", log_file, timeout=600)
    print(result.stdout)
    return 0 if result.returncode == 0 else 1


# ---------------------------------------------------------------------------------------------------------
# Report


def previous_report() -> dict:
    try:
        return json.loads(REPORT.read_text())
    except (OSError, ValueError):
        return {}


def minutes(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def table(rows: list[dict]) -> str:
    columns = [
        ("QGIS", "qgis"),
        ("Debian", "debian"),
        ("Python", "python"),
        ("NumPy", "numpy"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("cold: root", "cold"),
        ("cold: tests", "cold_tests"),
        ("warm: tests", "warm_tests"),
        ("result", "result"),
        ("installer", "installer"),
    ]
    cells = [[str(row.get(key) or "-") for _, key in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join(
        [line([t for t, _ in columns]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(c) for c in cells)]
    )


def row_for(release: Release, entry: dict) -> dict:
    versions = entry.get("versions") or {}
    cold, warm = entry.get("cold") or {}, entry.get("warm") or {}
    return {
        "qgis": versions.get("qgis") or release.version,
        "debian": release.debian,
        "python": versions.get("python"),
        "numpy": versions.get("numpy"),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "cold": minutes(cold.get("build_s")),
        "cold_tests": minutes(cold.get("tests_s")),
        "warm_tests": minutes(warm.get("tests_s")),
        "result": entry.get("result", "-"),
        "installer": (entry.get("installer") or {}).get("result", "-"),
    }


# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        kill_children()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--versions",
        default=",".join(r.version for r in RELEASES),
        help="QGIS releases to test, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--suite",
        choices=["plugin", "all"],
        default="plugin",
        help="plugin: the tests marked qgis or desktop (default); all: every test",
    )
    parser.add_argument(
        "--source",
        default="worktree",
        help="what to test: 'worktree' (the checkout as it is, default), a commit (e.g. HEAD) or a folder",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the roots again even when cached")
    parser.add_argument("--build-only", action="store_true", help="build or top up the roots, run no tests")
    parser.add_argument("--serial", action="store_true", help="build one root after the other")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds for one release's tests")
    parser.add_argument("--echo", action="store_true", help="show the tests' output as it comes")
    parser.add_argument(
        "--installer",
        default="3.40",
        help="releases whose root also tries the dependency installer, online and offline, comma-separated "
        "('' for none; default: %(default)s)",
    )
    parser.add_argument(
        "--qt6",
        action="store_true",
        help="ask Debian (trixie, trixie-backports, sid, experimental) for a Qt6 build of QGIS",
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --), e.g. -- -k processing")
    args = parser.parse_args(argv)
    args.installer = {v.strip() for v in args.installer.split(",") if v.strip()}
    known = {r.version: r for r in RELEASES}
    wanted = [v.strip() for v in args.versions.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in known]
    if unknown:
        parser.error(f"unknown QGIS release {', '.join(unknown)}; known: {', '.join(known)}")
    releases = [known[v] for v in wanted]

    become_root(argv)
    problem = machine_problem()
    if problem:
        print(f"SKIPPED: {problem}")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.qt6:
        return qt6_check(known["3.44"])
    stale = [r for r in releases if args.rebuild or read_stamp(r) is None or needs_top_up(read_stamp(r))]
    if stale:
        problem = (
            ensure_mmdebstrap() if any(args.rebuild or read_stamp(r) is None for r in stale) else None
        ) or network_problem([r.suite for r in stale])
        if problem:
            print(f"SKIPPED: {problem}")
            return 0
    report = previous_report()
    entries = report.setdefault("releases", {})
    prepared = prepare_roots(stale, args.rebuild, parallel=not args.serial) if stale else {}

    failed = False
    checkout = None
    for release in releases:
        entry = entries.setdefault(release.version, {})
        entry.update(version=release.version, suite=release.suite, debian=release.debian)
        state = prepared.get(release.suite, {})
        if "error" in state:
            entry.update(result="build failed", error=state["error"])
            failed = True
            continue
        entry.pop("error", None)
        stamp = read_stamp(release) or {}
        built_now = "built" in state
        entry["root"] = {
            k: stamp.get(k)
            for k in (
                "built_at",
                "build_s",
                "debian_s",
                "python_s",
                "topped_up_at",
                "top_up_s",
                "pin_conflicts",
                "optional_failed",
            )
        }
        entry["versions"] = stamp.get("versions", {})
        if built_now:
            entry["cold"] = {
                "build_s": stamp.get("build_s"),
                "debian_s": stamp.get("debian_s"),
                "python_s": stamp.get("python_s"),
                "parallel": not args.serial and len(stale) > 1,
                "at": stamp.get("built_at"),
            }
        for conflict in stamp.get("pin_conflicts", []):
            log(
                f"QGIS {release.version}: pyproject.toml asks for {conflict['requirement']}, "
                f"{release.debian} has {conflict['debian'] or 'none'}; the root's own is kept"
            )
        for requirement in stamp.get("optional_failed", []):
            log(f"QGIS {release.version}: {requirement} has no wheel for this Python; left out")
        if args.build_only:
            entry["result"] = "built" if built_now else "ready"
            continue
        if checkout is None:
            checkout = CACHE / "work" / "checkout"
            snapshot_checkout(checkout, args.source)
        outcome = run_tests(release, checkout, args.suite, args.pytest_args, args.timeout, args.echo)
        entry["versions"] = outcome["versions"] or entry["versions"]
        entry.update(
            {
                k: outcome[k]
                for k in (
                    "tests_s",
                    "tests",
                    "passed",
                    "failed",
                    "errors",
                    "skipped",
                    "failures",
                    "skips",
                    "screenshots",
                    "returncode",
                )
            }
        )
        entry.update(source=args.source, suite_run=args.suite, tested_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        ok = outcome["passed_all"]
        counts = f"{outcome['passed']} passed"
        if outcome["failed"] or outcome["errors"]:
            counts += f", {outcome['failed'] + outcome['errors']} failed"
        if outcome["skipped"]:
            counts += f", {outcome['skipped']} skipped"
        entry["result"] = ("PASS" if ok else "FAIL") + f" ({counts})"
        phase = "cold" if built_now else "warm"
        entry[phase] = {
            **(entry.get(phase, {}) if built_now else {}),
            "tests_s": outcome["tests_s"],
            "total_s": round((stamp.get("build_s") or 0) * built_now + outcome["tests_s"], 1),
            "suite": args.suite,
            "source": args.source,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        failed |= not ok
        log(f"QGIS {release.version}: {entry['result']} in {minutes(outcome['tests_s'])}")
        if release.version in args.installer:
            trial = installer_trial(release, checkout, args.echo)
            entry["installer"] = {**trial, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            failed |= trial["result"] != "PASS"
            log(f"QGIS {release.version}: dependency installer {trial['result']} in {minutes(trial['seconds'])}")
            for line in trial["runs"] + trial["constraints"]:
                print(f"  {line}")
            if trial["result"] != "PASS":
                print(trial["tail"])
        for failure in outcome["failures"]:
            first = (failure["message"].strip().splitlines() or [""])[0]
            print(f"  {failure['kind'].upper()}: {failure['test']}: {first[:200]}")
        for skip in outcome["skips"]:
            print(f"  SKIPPED: {skip['test']}: {skip['reason'][:200]}")

    report["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["host"] = {"cpus": os.cpu_count(), "kernel": platform.release()}
    REPORT.write_text(json.dumps(report, indent=2))
    print()
    print(table([row_for(r, entries[r.version]) for r in releases]))
    print(f"\nreport: {REPORT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
