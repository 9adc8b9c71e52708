"""GeoCLIP's location encoder: GPS degrees -> 512-d feature.

Equal Earth projection, then one capsule per random-Fourier-feature scale (sigma 2^0, 2^4, 2^8);
the capsule outputs are summed. The arithmetic follows the published model step by step in float32 so
the released weights give the released features (the sigma 256 capsule turns rounding differences in
its ~1000 rad phase into visible feature differences).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Equal Earth polynomial coefficients (Šavrič, Patterson, Jenny 2018) and GeoCLIP's scale factor.
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
SCALE_FACTOR = 66.50336

SIGMAS = (2.0**0, 2.0**4, 2.0**8)
FOURIER_FEATURES = 256  # per capsule; cos and sin make 512
HIDDEN = 1024
FEATURE_DIM = 512


def equal_earth_projection(lat_lon: torch.Tensor) -> torch.Tensor:
    """(N, 2) latitude, longitude in degrees -> (N, 2) projected x, y scaled by SF/180."""
    lat = torch.deg2rad(lat_lon[:, 0])
    lon = torch.deg2rad(lat_lon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, device=lat_lon.device))
    theta = torch.asin((sqrt3 / 2) * torch.sin(lat))
    denominator = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = (2 * sqrt3 * lon * torch.cos(theta)) / denominator
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return (torch.stack((x, y), dim=1) * SCALE_FACTOR) / 180


class FourierFeatures(nn.Module):
    """gamma(v) = [cos(2 pi B v), sin(2 pi B v)] with a fixed Gaussian matrix B (N(0, sigma^2))."""

    def __init__(self, sigma: float, in_features: int = 2, out_features: int = FOURIER_FEATURES):
        super().__init__()
        self.sigma = sigma
        self.b = nn.Parameter(torch.randn(out_features, in_features) * sigma, requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # Phases reach ~1000 rad at sigma 256: always float32, even under bf16/fp16 autocast.
        with torch.autocast(v.device.type, enabled=False):
            phase = 2 * math.pi * v.float() @ self.b.float().T
            return torch.cat((torch.cos(phase), torch.sin(phase)), dim=-1)


class ScaleCapsule(nn.Module):
    """One scale of the hierarchy: Fourier features -> 3 x (Linear 1024, ReLU) -> Linear 512."""

    def __init__(self, sigma: float):
        super().__init__()
        self.fourier = FourierFeatures(sigma)
        self.layers = nn.Sequential(
            nn.Linear(2 * FOURIER_FEATURES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
        )
        self.head = nn.Linear(HIDDEN, FEATURE_DIM)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.fourier(projected)))


class LocationEncoder(nn.Module):
    """Sum of the scale capsules over the Equal Earth projection of (lat, lon) degrees."""

    def __init__(self, sigmas: tuple[float, ...] = SIGMAS):
        super().__init__()
        self.capsules = nn.ModuleList(ScaleCapsule(s) for s in sigmas)

    def forward(self, lat_lon: torch.Tensor) -> torch.Tensor:
        projected = equal_earth_projection(lat_lon)
        features = self.capsules[0](projected)
        for capsule in self.capsules[1:]:
            features = features + capsule(projected)
        return features
