"""What "How likely here?" finds, for the results panel: one spot judged for one answer in a background
task (the answer's rasters made again from its query vector), and what it found in words."""

from __future__ import annotations

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.tasks import show_progress


class LikelyTask(QgsTask):
    """ "How likely here?" in the background: the answer's rasters are made again from its query vector."""

    stage = pyqtSignal(object)  # a backend Progress: the first use's stages (the gallery, the world grid)

    def __init__(self, settings, result, lat: float, lon: float, area=None):
        super().__init__("GeoCLIP: how likely here?", QgsTask.Flag.CanCancel)
        self.settings, self.result, self.lat, self.lon, self.area = settings, result, lat, lon, area
        self.found = None
        self.error = ""

    def _progress(self, event) -> None:
        show_progress(self, event, self.stage)

    def run(self) -> bool:
        from ..backend.earth.likelihood import for_answer
        from ..backend.errors import Cancelled
        from ..core.session import get_engine

        try:
            spot = [("here", self.lat, self.lon)]
            engine = get_engine(self.settings)
            self.found = for_answer(engine, self.result, spot, self.area, self._progress, self.isCanceled)[0]
            return True
        except Cancelled:  # said as "cancelled" by the panel
            return False
        except Exception as exc:  # shown in the panel, never raised into QGIS
            self.error = f"{type(exc).__name__}: {exc}"
            return False


def likely_text(found) -> str:
    """What the map tool found, as a person reads it."""
    masses = ", ".join(f"{100 * mass:.2f} % within {radius:g} km" for radius, mass in found.masses.items())
    lines = [f"At {found.lat:.5f}, {found.lon:.5f}: {masses}."]
    if found.rank is None:
        lines.append("Outside the run's area of interest.")
    else:
        lines.append(
            f"Density {found.density_ratio:.3g}× that of the most probable place; this spot's cell ranks "
            f"{found.rank:,} of {found.cells:,} world cells."
        )
        if found.credible_level == found.credible_level:  # not NaN
            lines.append(f"It lies inside the {100 * found.credible_level:.0f} % confidence area.")
    return "\n".join(lines)
