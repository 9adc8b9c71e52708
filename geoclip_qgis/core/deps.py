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
    "pillow_heif": "pillow-heif>=0.16",  # HEIC/HEIF photos (decoded in a child process, never in QGIS's)
}

# GeoCLIP's trained heads and 100K GPS gallery: the official release wheel (MIT), installed without its
# dependencies and checked against this sha256 (pip --require-hashes).
HEADS_RELEASE = "geoclip==1.3.0"
HEADS_RELEASE_SHA256 = "08a93791166a279d52b95c466a952c75f17f654cc61bdf6ab20355325b564dec"  # pragma: allowlist secret


def plugin_python_dir() -> Path:
    """A folder the plugin owns for packages installed into this QGIS (pip --target)."""
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "geoclip_qgis" / "python"


def add_plugin_python_dir() -> None:
    """Put the plugin's package folder first on QGIS's path; also right after an install, so what was just
    installed imports without a restart."""
    folder = plugin_python_dir()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    importlib.invalidate_caches()  # finders cache folder listings: see what an install just added


def loaded_packages() -> list[str]:
    """Required packages this QGIS has already imported: an install that replaces them takes effect only
    after a restart (Python keeps the copy it loaded)."""
    return [name for name in REQUIRED if name in sys.modules]


def missing() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def qgis_python() -> str:
    """The Python interpreter QGIS embeds (sys.executable is the QGIS binary itself): the engine's one
    lookup, also used for its HEIC decoder's child process."""
    from ..backend.interpreter import python_interpreter

    return python_interpreter()


def explanation(names: list[str]) -> str:
    """What to do about missing packages, the action first (the dock shows the first lines)."""
    requirements = " ".join(f'"{REQUIRED[n]}"' for n in names)
    target = plugin_python_dir()
    return (
        "Press Install dependencies… above: it installs what GeoCLIP needs, and GeoCLIP's heads, for this QGIS "
        "only (nothing else on the system changes), online or from a folder of wheels.\n"
        f"Missing in QGIS's Python ({sys.version.split()[0]}): {', '.join(names)}.\n"
        f'From a shell instead: "{qgis_python()}" -m pip install --target "{target}" {requirements}, then the '
        f'same with --no-deps "{HEADS_RELEASE}", and restart QGIS.'
    )
