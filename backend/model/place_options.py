"""How an answer's candidates are made: distinct places (refined or not) or the gallery's raw points.

Apart from :mod:`.distinct_places` so that the run pipeline and the plugin name these choices without
loading torch (which comes with the model, not with the pipeline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GeoCLIPError
from ..results import MAX_PLACES

MERGE_KM = 25.0  # gallery points this close are one place (10-100 km alike in bench/bench_places.py)


@dataclass(frozen=True)
class PlaceOptions:
    """How an answer's candidates are made: distinct places (refined on the continuous model), or the
    gallery's raw top-k points as GeoCLIP's release answers (the paper's evaluation protocol)."""

    distinct: bool = True
    merge_km: float = MERGE_KM
    refine: bool = True  # each place's coordinates refined on the location encoder (see .refinement)

    def check(self, top_k: int) -> None:
        merge = self.merge_km
        if not (isinstance(merge, (int, float)) and math.isfinite(merge) and 1 <= merge <= 2000):
            raise GeoCLIPError(f"the merge distance must be 1 to 2000 km, got {self.merge_km}")
        if self.distinct and int(top_k) > MAX_PLACES:
            raise GeoCLIPError(f"an answer lists at most {MAX_PLACES} distinct places, got top-k {top_k}")

    @property
    def shown(self) -> str:
        """For the runs table and reports: what kind of candidates the answers list."""
        if not self.distinct:
            return "gallery points"
        return f"distinct places ({self.merge_km:g} km apart)" + (", refined" if self.refine else "")


GALLERY_POINTS = PlaceOptions(distinct=False, refine=False)
