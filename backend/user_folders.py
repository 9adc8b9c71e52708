"""Where the product keeps its files for this user: platformdirs' folders, the same for the command
line and every QGIS.

platformdirs is imported only when asked, and a QGIS that does not have it yet (a stock QGIS before the
plugin installed its packages) gets the same folders from the rules platformdirs follows, so the plugin
can say where runs go before anything is installed and nothing moves once it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "geoclip-qgis"


def _fallback(kind: str) -> Path:
    """platformdirs' answer for ``user_data_path``/``user_cache_path`` of an app with no author."""
    home = Path.home()
    if sys.platform == "win32":
        local = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        folder = local / APP_NAME / APP_NAME
        return folder / "Cache" if kind == "cache" else folder
    if sys.platform == "darwin":
        base = home / "Library" / ("Caches" if kind == "cache" else "Application Support")
        return base / APP_NAME
    variable, default = ("XDG_CACHE_HOME", ".cache") if kind == "cache" else ("XDG_DATA_HOME", ".local/share")
    base = os.environ.get(variable, "").strip()
    return Path(base if base else home / default) / APP_NAME


def user_data_folder() -> Path:
    try:
        import platformdirs
    except ImportError:
        return _fallback("data")
    return platformdirs.user_data_path(APP_NAME)


def user_cache_folder() -> Path:
    try:
        import platformdirs
    except ImportError:
        return _fallback("cache")
    return platformdirs.user_cache_path(APP_NAME)
