"""Build the plugin ZIP and check it the way the QGIS plugin repository does.

    .venv/bin/python tools/package_plugin.py [--out dist]

The ZIP has one top folder, ``geoclip_qgis/``, holding the plugin, the engine at
``geoclip_qgis/backend/``, ``resources/``, ``metadata.txt`` (its version filled in from
backend/version.py, the one place the version lives) and ``LICENSE``; nothing else. Then it checks
what the repository checks (mandatory metadata, icon, licence, size, no compiled or hidden files) and
runs the repository's scanners, bandit and detect-secrets, failing on any blocking finding.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "geoclip_qgis"
MAX_BYTES = 25 * 1024 * 1024
MANDATORY = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
)
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}
COMPILED = (".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe")


def version() -> str:
    text = (ROOT / "backend" / "version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def plugin_files() -> list[tuple[Path, str]]:
    """(source, name in the ZIP) for everything the plugin needs at run time."""
    pairs = []
    for source_dir, target in (
        (ROOT / PLUGIN, PLUGIN),
        (ROOT / "backend", f"{PLUGIN}/backend"),
        (ROOT / "resources", f"{PLUGIN}/resources"),
    ):
        for path in sorted(source_dir.rglob("*")):
            parts = path.relative_to(source_dir).parts
            if path.is_dir() or any(p in SKIP_NAMES or p.startswith(".") for p in parts):
                continue
            if path.suffix in COMPILED:
                continue
            pairs.append((path, f"{target}/{'/'.join(parts)}"))
    pairs.append((ROOT / "LICENSE", f"{PLUGIN}/LICENSE"))
    return pairs


def metadata_text() -> str:
    text = (ROOT / "metadata.txt").read_text(encoding="utf-8")
    return re.sub(r"(?m)^version=.*$", f"version={version()}", text)


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{version()}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, name in plugin_files():
            archive.write(source, name)
        archive.writestr(f"{PLUGIN}/metadata.txt", metadata_text())
    return target


def check(zip_path: Path) -> list[str]:
    """Problems the plugin repository would reject the ZIP for (an empty list when there are none)."""
    problems = []
    if zip_path.stat().st_size > MAX_BYTES:
        problems.append(f"ZIP is {zip_path.stat().st_size / 2**20:.1f} MB, over the 25 MB limit")
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        tops = {n.split("/")[0] for n in names}
        if tops != {PLUGIN}:
            problems.append(f"ZIP must hold one top folder {PLUGIN}/, holds {sorted(tops)}")
        for name in names:
            parts = name.split("/")
            if any(p.startswith(".") or p in SKIP_NAMES or p == "__MACOSX" for p in parts):
                problems.append(f"hidden or cache file in the ZIP: {name}")
            if name.endswith(COMPILED):
                problems.append(f"compiled file in the ZIP: {name}")
        if f"{PLUGIN}/LICENSE" not in names:
            problems.append("no LICENSE file")
        if (
            f"{PLUGIN}/__init__.py" not in names
            or "def classFactory" not in archive.read(f"{PLUGIN}/__init__.py").decode()
        ):
            problems.append("no classFactory in __init__.py")
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(archive.read(f"{PLUGIN}/metadata.txt").decode("utf-8"))
        general = parser["general"] if parser.has_section("general") else {}
        for key in MANDATORY:
            if not general.get(key, "").strip():
                problems.append(f"metadata.txt lacks {key}")
        icon = general.get("icon", "").strip()
        if not icon or f"{PLUGIN}/{icon}" not in names:
            problems.append(f"icon {icon!r} named in metadata.txt is not in the ZIP")
        if general.get("version") != version():
            problems.append(f"metadata version {general.get('version')} differs from {version()}")
    return problems


def scan(zip_path: Path) -> list[str]:
    """bandit and detect-secrets over the unpacked plugin, as the repository runs them."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp)
        bandit = subprocess.run(
            [sys.executable, "-m", "bandit", "-r", "-f", "json", "-q", tmp], capture_output=True, text=True
        )
        report = json.loads(bandit.stdout or "{}")
        for issue in report.get("results", []):
            if issue["issue_severity"] in ("MEDIUM", "HIGH"):
                where = Path(issue["filename"]).relative_to(tmp)
                problems.append(
                    f"bandit {issue['test_id']} {issue['issue_severity']}: {where}:"
                    f"{issue['line_number']}: {issue['issue_text']}"
                )
        secrets = subprocess.run(
            [sys.executable, "-m", "detect_secrets", "scan", "--all-files", "."],
            capture_output=True,
            text=True,
            cwd=tmp,
        )  # it scans relative to the cwd
        for name, findings in json.loads(secrets.stdout or "{}").get("results", {}).items():
            for finding in findings:
                problems.append(f"detect-secrets {finding['type']}: {Path(name).name}:{finding['line_number']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    target = build(args.out)
    problems = check(target) + scan(target)
    print(f"{target} ({target.stat().st_size / 2**20:.2f} MB)")
    for problem in problems:
        print(f"  BLOCKING: {problem}", file=sys.stderr)
    if not problems:
        print(
            "  repository checks passed: metadata, icon, licence, size, no compiled or hidden files; "
            "bandit and detect-secrets clean"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
