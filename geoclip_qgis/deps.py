"""Is the engine's Python stack importable in this QGIS? Checked without importing torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# import name -> pip requirement
REQUIRED = {
    "torch": "torch>=2.2",
    "transformers": "transformers>=4.56,<6",
    "safetensors": "safetensors>=0.4",
    "huggingface_hub": "huggingface-hub>=0.24",
    "PIL": "pillow>=10",
    "platformdirs": "platformdirs>=3",
    "tqdm": "tqdm>=4.60",
}


# Installed with the rest; runs work without them (the feature they serve is left out, with a warning).
OPTIONAL = {
    "reverse_geocode": "reverse-geocode>=1.6,<1.7",  # offline place names (GeoNames), needs scipy
}


def plugin_python_dir() -> Path:
    """A folder the plugin owns for packages installed into this QGIS (pip --target)."""
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "geoclip_qgis" / "python"


def add_plugin_python_dir() -> None:
    folder = plugin_python_dir()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def missing() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def qgis_python() -> str:
    """The Python interpreter QGIS embeds (sys.executable is the QGIS binary itself)."""
    candidates = [
        Path(sys.exec_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
        Path(sys.exec_prefix) / "bin" / "python3",
        Path(sys.exec_prefix) / "python.exe",
        Path(sys.exec_prefix) / "python3.exe",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return "python3"


def explanation(names: list[str]) -> str:
    requirements = " ".join(f'"{REQUIRED[n]}"' for n in names)
    target = plugin_python_dir()
    return (
        f"GeoCLIP needs {', '.join(names)} in QGIS's Python ({sys.version.split()[0]}), and they are missing.\n"
        f"Install them for this QGIS only (nothing else on the system changes):\n"
        f'  "{qgis_python()}" -m pip install --target "{target}" {requirements}\n'
        f"then restart QGIS. Offline: add --no-index --find-links FOLDER_OF_WHEELS."
    )
