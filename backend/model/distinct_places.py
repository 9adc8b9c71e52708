"""An answer as distinct places: the gallery's probability grouped around its modes, each place with its
summed probability and a radius holding most of it.

GeoCLIP's own answer is its gallery's top-k points, and neighbouring (even identical) gallery points fill
it: the same town at rank 4 and rank 5. Here the answer's most probable gallery points (the ``HEAD``) are
grouped by mode seeking on the gallery: each point joins the most probable point within ``merge_km`` of
it, and that one its own, until a point is the most probable within ``merge_km`` of itself (a mode). So
two places' points are always more than ``merge_km`` apart, and a place's probability is the sum over the
points that climb to it. Places are ranked by that sum, not by their best single point: a city whose
probability is spread over twenty gallery points beats a lone point that is slightly more probable.

Each place then says how far its probability reaches: the radius around its coordinates holding
``RADIUS_MASS`` of its probability (never under ``MIN_RADIUS_KM``, the detail the location encoder can tell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geo import EARTH_RADIUS_KM, haversine_km
from ..photos.area import Area
from ..results import RADIUS_MASS, Candidate
from .place_options import PlaceOptions
from .refinement import refine

HEAD = 2048  # the most probable gallery points grouped into places (they hold nearly all of a sharp answer)
HEAD_MIN = 256
MIN_RADIUS_KM = 1.0  # below this the location encoder (finest sigma 2^8) tells nothing apart


@dataclass
class Places:
    """One answer's places, most probable first: the gallery point each was found at (its mode), the
    probability summed over its points, and those points (to measure its radius once it has moved)."""

    gallery_index: np.ndarray  # (P,) the mode's index in the gallery
    probability: np.ndarray  # (P,) summed
    members: list[np.ndarray]  # per place: indices into the gallery
    member_probability: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.gallery_index)


def unit_vectors(coordinates: torch.Tensor) -> torch.Tensor:
    """(N, 2) lat, lon degrees -> (N, 3) points on the unit sphere (float64 on the CPU, so chords of a
    few kilometres stay exact)."""
    lat, lon = torch.deg2rad(coordinates.double().cpu()).unbind(dim=1)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=1)


def group(probabilities: torch.Tensor, unit: torch.Tensor, top_k: int, merge_km: float, head: int = HEAD) -> Places:
    """The ``top_k`` most probable places of one answer. ``probabilities``: (N,) over the gallery (0 for
    points outside an area); ``unit``: the gallery's :func:`unit_vectors`."""
    probabilities = probabilities.detach().double().cpu()
    values, order = torch.topk(probabilities, min(head, probabilities.numel()))  # most probable first
    # past the points holding all but 1e-6 of the answer nothing can move a place (at least HEAD_MIN kept,
    # so unlikely places are still listed)
    enough = int(torch.searchsorted(torch.cumsum(values, 0), (1 - 1e-6) * float(probabilities.sum()))) + 1
    keep = (values > 0) & (torch.arange(len(values)) < max(enough, HEAD_MIN))
    values, order = values[keep], order[keep]
    points = unit[order]
    near = points @ points.T >= math.cos(merge_km / EARTH_RADIUS_KM)  # (H, H), the diagonal true
    # each point's step uphill: the most probable point within merge_km (itself at a mode); the points are
    # sorted, so that is the first one in its row
    parent = near.int().argmax(dim=1)
    while True:  # follow the steps to the top (pointer jumping: a few rounds)
        climbed = parent[parent]
        if torch.equal(climbed, parent):
            break
        parent = climbed
    modes, owner = torch.unique(parent, return_inverse=True)
    sums = torch.zeros(len(modes), dtype=torch.float64).index_add_(0, owner, values)
    ranked = torch.argsort(sums, descending=True, stable=True)[:top_k]
    members = [(owner == m).nonzero().flatten() for m in ranked.tolist()]
    return Places(
        gallery_index=order[modes[ranked]].numpy(),
        probability=sums[ranked].numpy(),
        members=[order[m].numpy() for m in members],
        member_probability=[values[m].numpy() for m in members],
    )


def radius_km(lat: float, lon: float, member_coordinates: np.ndarray, member_probability: np.ndarray) -> float:
    """The smallest radius around (lat, lon) holding ``RADIUS_MASS`` of a place's probability, at least
    ``MIN_RADIUS_KM``."""
    distance = haversine_km(lat, lon, member_coordinates[:, 0], member_coordinates[:, 1])
    order = np.argsort(distance, kind="stable")
    held = np.cumsum(member_probability[order])
    reach = distance[order][min(int(np.searchsorted(held, RADIUS_MASS * held[-1] - 1e-12)), len(order) - 1)]
    return float(max(reach, MIN_RADIUS_KM))


def answer_places(
    heads,
    gallery_coordinates: torch.Tensor,
    unit: torch.Tensor,
    probabilities: torch.Tensor,
    query: torch.Tensor,
    top_k: int,
    area: Area | None,
    options: PlaceOptions,
) -> list[Candidate]:
    """One answer's ``top_k`` distinct places as candidates, refined on the location encoder when
    ``options.refine`` (:mod:`.refinement`), each with its radius and the gallery point it was found at."""
    coordinates = gallery_coordinates.cpu().numpy().astype(np.float64)
    found = group(probabilities, unit, top_k, options.merge_km)
    starts = coordinates[found.gallery_index]
    moved = refine(heads, query, starts, options.merge_km, area)[0] if options.refine else starts
    return [
        Candidate(
            rank + 1,
            float(lat),
            float(lon),
            float(p),
            radius_km=radius_km(lat, lon, coordinates[members], mass),
            gallery_lat=float(start[0]),
            gallery_lon=float(start[1]),
        )
        for rank, ((lat, lon), start, p, members, mass) in enumerate(
            zip(moved, starts, found.probability, found.members, found.member_probability)
        )
    ]
