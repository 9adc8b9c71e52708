"""GeoCLIP's trained heads: the image MLP, the location encoder and the logit scale.

They are read from (and written to) the release's file layout:
``weights/image_encoder_mlp_weights.pth``, ``weights/location_encoder_weights.pth``,
``weights/logit_scale_weights.pth``. Files are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers, and every key and shape is checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..store.heads_files import IMAGE_MLP_FILE, LOCATION_ENCODER_FILE, LOGIT_SCALE_FILE, HeadsFiles
from .location_encoder import LocationEncoder

CLIP_PROJECTION_DIM = 768
IMAGE_FEATURE_DIM = 512


class GeoCLIPHeads(nn.Module):
    """Everything GeoCLIP trains on top of the frozen CLIP: image MLP, location encoder, logit scale."""

    def __init__(self):
        super().__init__()
        self.image_mlp = nn.Sequential(
            nn.Linear(CLIP_PROJECTION_DIM, CLIP_PROJECTION_DIM),
            nn.ReLU(),
            nn.Linear(CLIP_PROJECTION_DIM, IMAGE_FEATURE_DIM),
        )
        self.location_encoder = LocationEncoder()
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def image_features(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP projected embeddings (N, 768) -> unit-length GeoCLIP image features (N, 512)."""
        return nn.functional.normalize(self.image_mlp(clip_embeds), dim=-1)

    def location_features(self, lat_lon: torch.Tensor) -> torch.Tensor:
        """(N, 2) degrees -> unit-length location features (N, 512)."""
        return nn.functional.normalize(self.location_encoder(lat_lon), dim=-1)

    def logits(self, image_features: torch.Tensor, location_features: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) * cosine similarity, (N images, M locations)."""
        return self.logit_scale.exp() * (image_features @ location_features.T)


# The release names the location encoder's modules LocEnc{i}.capsule.{0,1,3,5} and LocEnc{i}.head.0;
# this project names them by what they are. These two maps translate between the layouts.
_RELEASE_TO_ENGINE = [
    (re.compile(r"^LocEnc(\d+)\.capsule\.0\.b$"), r"capsules.\1.fourier.b"),
    (re.compile(r"^LocEnc(\d+)\.capsule\.([135])\.(weight|bias)$"), None),  # index shift, below
    (re.compile(r"^LocEnc(\d+)\.head\.0\.(weight|bias)$"), r"capsules.\1.head.\2"),
]


def release_to_engine_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in _RELEASE_TO_ENGINE:
            match = pattern.match(key)
            if not match:
                continue
            if replacement is None:
                capsule, layer, kind = match.groups()
                out[f"capsules.{capsule}.layers.{int(layer) - 1}.{kind}"] = value
            else:
                out[pattern.sub(replacement, key)] = value
            break
        else:
            out[key] = value  # left as is so the key check names it as unexpected
    return out


def engine_to_release_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        capsule = parts[1]
        if parts[2] == "fourier":
            out[f"LocEnc{capsule}.capsule.0.b"] = value
        elif parts[2] == "layers":
            out[f"LocEnc{capsule}.capsule.{int(parts[3]) + 1}.{parts[4]}"] = value
        else:
            out[f"LocEnc{capsule}.head.0.{parts[3]}"] = value
    return out


def _read_tensors(path: Path) -> object:
    if not path.is_file():
        raise WeightsError(f"GeoCLIP heads file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals and corrupt files alike
        raise WeightsError(f"cannot read GeoCLIP heads file {path}: {exc}") from exc


def _load_checked(module: nn.Module, state: object, path: Path) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match GeoCLIP's layout: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise WeightsError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
    module.load_state_dict(state, strict=True)


def load_heads(files: HeadsFiles) -> GeoCLIPHeads:
    heads = GeoCLIPHeads()
    path = files.weight_path(IMAGE_MLP_FILE)
    _load_checked(heads.image_mlp, _read_tensors(path), path)
    path = files.weight_path(LOCATION_ENCODER_FILE)
    state = _read_tensors(path)
    if isinstance(state, dict):
        state = release_to_engine_keys(state)
    _load_checked(heads.location_encoder, state, path)
    path = files.weight_path(LOGIT_SCALE_FILE)
    scale = _read_tensors(path)
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise WeightsError(f"{path} must hold a single number (the logit scale)")
    with torch.no_grad():
        heads.logit_scale.copy_(scale.reshape(()))
    return heads.eval().requires_grad_(False)  # inference; fine-tuning turns gradients back on


def save_heads(heads: GeoCLIPHeads, folder: Path) -> None:
    """Write heads in the release's layout so every loader of the release reads them too."""
    weights_dir = Path(folder) / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    to_cpu = {k: v.detach().cpu().contiguous() for k, v in heads.image_mlp.state_dict().items()}
    torch.save(to_cpu, weights_dir / IMAGE_MLP_FILE)
    location = {k: v.detach().cpu().contiguous() for k, v in heads.location_encoder.state_dict().items()}
    torch.save(engine_to_release_keys(location), weights_dir / LOCATION_ENCODER_FILE)
    torch.save(heads.logit_scale.detach().cpu().clone(), weights_dir / LOGIT_SCALE_FILE)
