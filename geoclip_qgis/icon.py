"""The plugin's icon, for its menu entry and its Processing provider."""

from __future__ import annotations

from pathlib import Path


def icon_path() -> str:
    """The icon beside the plugin (in the ZIP) or in the repository's resources/ (development)."""
    here = Path(__file__).parent
    for candidate in (here / "resources" / "icon.svg", here.parent / "resources" / "icon.svg"):
        if candidate.is_file():
            return str(candidate)
    return ""
