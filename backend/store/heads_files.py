"""Where GeoCLIP's trained heads live on disk: the release's file names and a set's folder.

Kept apart from :mod:`..model.heads` (torch) so that finding and describing weights (the dock's model state, the
Models dialog) imports no torch: QGIS's start should not wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_MLP_FILE = "image_encoder_mlp_weights.pth"
LOCATION_ENCODER_FILE = "location_encoder_weights.pth"
LOGIT_SCALE_FILE = "logit_scale_weights.pth"
WEIGHT_FILES = (IMAGE_MLP_FILE, LOCATION_ENCODER_FILE, LOGIT_SCALE_FILE)


@dataclass(frozen=True)
class HeadsFiles:
    """Where one set of heads lives: ``folder/weights/*.pth`` and its GPS gallery CSV."""

    folder: Path
    gallery_csv: Path

    @property
    def weights_dir(self) -> Path:
        return self.folder / "weights"

    def weight_path(self, name: str) -> Path:
        return self.weights_dir / name
