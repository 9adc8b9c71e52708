"""Refined coordinates: each place moved from its gallery point to where the continuous model is most
sure, near it.

GeoCLIP's location encoder is continuous: it scores any coordinates, not only the gallery's 100,000
points. An answer's score at x is ``exp(logit_scale) * q . f(x)`` (the same score the gallery softmax
ranks). Around each place the score is searched coarse to fine: a 7 x 7 grid spanning the place
(``merge_km`` wide) finds its best part, then the best point's 8 neighbours at half the step, again and
again, until the step is under ``FINEST_STEP_KM`` (about 100 model evaluations per place). Verifying
candidates on the image-GPS model itself is what G3 (NeurIPS 2024) does after its retrieval.

What it can and cannot do: the encoder's finest Fourier scale (sigma = 2^8 on the Equal Earth plane) lets
it tell places apart down to roughly a kilometre, so a refined point moves an answer off the gallery's
grid (mostly a few to ten kilometres, where the gallery is sparse) but cannot place a photo on a street.
A place's refined point never leaves the search window around its gallery point (the merge distance
across), nor an area of interest.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..geo import EARTH_RADIUS_KM
from ..photos.area import Area

FIRST_GRID = 7  # points per side of the first grid, across the whole place
GRID = 3  # points per side of each finer grid: the best point and its 8 neighbours
FINEST_STEP_KM = 0.25  # the search stops when its grid's step is finer than this
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


def _offsets(side: int) -> torch.Tensor:
    """(side*side, 2) offsets in steps, centred: -h..h on each axis."""
    half = (side - 1) / 2
    steps = torch.arange(side, dtype=torch.float64) - half
    return torch.cartesian_prod(steps, steps)


def _around(centres: torch.Tensor, offsets_km: torch.Tensor) -> torch.Tensor:
    """(P, 2) lat, lon and (G, 2) north, east offsets in km -> (P, G, 2) points, longitudes wrapped and
    latitudes kept on the globe."""
    lat = centres[:, None, 0] + offsets_km[None, :, 0] / KM_PER_DEGREE
    lat = lat.clamp(-89.999, 89.999)
    cos = torch.cos(torch.deg2rad(centres[:, None, 0])).clamp(min=1e-3)
    lon = centres[:, None, 1] + offsets_km[None, :, 1] / (KM_PER_DEGREE * cos)
    lon = torch.remainder(lon + 180.0, 360.0) - 180.0
    return torch.stack([lat, lon], dim=-1)


@torch.inference_mode()
def refine(
    heads, query: torch.Tensor, starts: np.ndarray, span_km: float, area: Area | None = None
) -> tuple[np.ndarray, int]:
    """The best-scored point near each of ``starts`` (P, 2) for one query vector, and the model
    evaluations spent. The search stays in the square window ``span_km`` across centred on its start
    (within its half-diagonal, great circle) and inside ``area``."""
    device = query.device
    best = torch.as_tensor(np.asarray(starts, dtype=np.float64).reshape(-1, 2))
    if not len(best):
        return np.empty((0, 2)), 0
    half = span_km / 2
    step = half / ((FIRST_GRID - 1) / 2)
    offsets, spent = _offsets(FIRST_GRID) * step, 0
    origin = best.clone()
    while True:
        points = torch.cat([best[:, None, :], _around(best, offsets)], dim=1)  # the current best stays a choice
        flat = points.reshape(-1, 2)
        features = heads.location_features(flat.float().to(device))
        scores = (features @ query.float()).double().cpu().reshape(points.shape[:2])
        spent += flat.shape[0]
        # the window around the start, and the area, bound the search
        allowed = _within(origin, points, half)
        if area is not None:
            allowed &= torch.from_numpy(area.contains(flat[:, 0].numpy(), flat[:, 1].numpy()).reshape(points.shape[:2]))
        allowed[:, 0] = True  # where it stands already
        scores = scores.masked_fill(~allowed, -math.inf)
        best = points[torch.arange(len(points)), scores.argmax(dim=1)]
        if step <= FINEST_STEP_KM:
            return best.numpy(), spent
        step /= 2
        offsets = _offsets(GRID) * step


def _within(origin: torch.Tensor, points: torch.Tensor, half_km: float) -> torch.Tensor:
    """(P, G) whether each point lies within ``half_km`` of its place's start (great circle)."""
    lat1, lon1 = torch.deg2rad(origin[:, None, 0]), torch.deg2rad(origin[:, None, 1])
    lat2, lon2 = torch.deg2rad(points[..., 0]), torch.deg2rad(points[..., 1])
    a = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.arcsin(a.clamp(0, 1).sqrt()) <= half_km * math.sqrt(2) + 1e-9
