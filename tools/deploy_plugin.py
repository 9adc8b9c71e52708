"""Put the plugin into a QGIS profile the way the ZIP lays it out, and enable it.

    .venv/bin/python tools/deploy_plugin.py PROFILES_DIR [--profile default] [--copy]

``PROFILES_DIR/<profile>/python/plugins/geoclip_qgis/`` gets the plugin's files, the engine at
``backend/``, ``resources/``, ``metadata.txt`` and ``LICENSE`` — as links to this checkout (so edits
show on the next QGIS start) or, with ``--copy``, as copies. The profile's QGIS3.ini enables it.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "geoclip_qgis"


def deploy(profiles: Path, profile: str = "default", copy: bool = False) -> Path:
    target = profiles / profile / "python" / "plugins" / PLUGIN
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    entries = [(p, target / p.name) for p in sorted((ROOT / PLUGIN).iterdir()) if p.name != "__pycache__"]
    entries += [
        (ROOT / "backend", target / "backend"),
        (ROOT / "resources", target / "resources"),
        (ROOT / "metadata.txt", target / "metadata.txt"),
        (ROOT / "LICENSE", target / "LICENSE"),
    ]
    for source, link in entries:
        if copy:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, link)
        else:
            link.symlink_to(source, target_is_directory=source.is_dir())
    enable(profiles, profile)
    return target


def enable(profiles: Path, profile: str = "default") -> None:
    """Mark the plugin enabled in the profile's QGIS3.ini, as Plugins › Install from ZIP leaves it."""
    ini_path = profiles / profile / "QGIS" / "QGIS3.ini"
    ini_path.parent.mkdir(parents=True, exist_ok=True)
    ini = configparser.RawConfigParser()
    ini.optionxform = str  # QGIS keys are case-sensitive
    if ini_path.exists():
        ini.read(ini_path)
    for section, key, value in (
        ("PythonPlugins", PLUGIN, "true"),
        ("qgis", "checkVersion", "false"),
        ("qgis", "showTips", "false"),
        ("app", "showTips", "false"),
    ):
        if not ini.has_section(section):
            ini.add_section(section)
        ini.set(section, key, value)
    with open(ini_path, "w") as handle:
        ini.write(handle, space_around_delimiters=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", type=Path)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--copy", action="store_true")
    args = parser.parse_args()
    print(deploy(args.profiles, args.profile, args.copy))
