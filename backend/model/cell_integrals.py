"""Probability per cell as the integral of the model's density over the cell, not one sample at its centre.

GeoCLIP's location encoder has Fourier features with wavelengths down to about 25 km, so its density
can rise and fall several times inside a 0.25° cell: one sample at the centre can over- or under-state
the cell's probability many times over. Each cell is integrated on a grid of ``n × n`` sub-cells
(the density at each sub-cell's centre times the sub-cell's area), ``n`` growing by 3 (1, 3, 9, 27) so
every finer grid holds the coarser grid's points. Work goes where probability is: the cell whose
probability is least certain (its share of the total times how much its value moved at its last
refinement; a cell with fewer than 9 x 9 samples counts as wholly uncertain) is refined first, in rounds, until the
uncertain probability is negligible or the point budget is spent. The budget is a number of points,
not a time, so the same query gives the same raster on every run.

Areas are the sphere's: one formula, :func:`..geo.cell_areas_km2`, for cells and sub-cells, so the
values are probability per cell in the units everything else reads (probability per km² × km²).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..geo import cell_areas_km2

SUBDIVISIONS = (1, 3, 9, 27)  # sub-cells per side at each level; odd factors of 3 nest the grids
TRUSTED_LEVEL = 2  # from 9 x 9 sub-cells on, how far a cell's value moved says how far off it may still be
NEGLIGIBLE = 1e-5  # refinement stops when no cell's uncertain probability exceeds this share
ROUND_POINTS = 16384  # points evaluated per round (the budget is spent in such rounds)


@dataclass(frozen=True)
class CellBlock:
    """Cells of one north-up grid: each cell's north-west corner and the common size in degrees."""

    north: np.ndarray  # (M,) degrees
    west: np.ndarray  # (M,)
    size: float

    def __len__(self) -> int:
        return int(self.north.shape[0])

    def centres(self) -> np.ndarray:
        return np.stack([self.north - self.size / 2, self.west + self.size / 2], axis=1)

    def log_areas(self) -> np.ndarray:
        """log km² of each cell."""
        return np.log(_areas(self.north, self.size, 1)[:, 0])

    def sub_points(self, cells: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(len(cells) * n * n, 2) centres of the n × n sub-cells of the given cells (row-major per cell)
        and (len(cells), n) log km² of a sub-cell in each of their n sub-rows."""
        step = self.size / n
        offsets = (np.arange(n) + 0.5) * step
        lat = self.north[cells, None] - offsets[None, :]  # (C, n)
        lon = self.west[cells, None] + offsets[None, :]
        points = np.empty((len(cells), n, n, 2), dtype=np.float64)
        points[..., 0] = lat[:, :, None]
        points[..., 1] = lon[:, None, :]
        return points.reshape(-1, 2), np.log(_areas(self.north[cells], step, n))


def _areas(north: np.ndarray, step: float, n: int) -> np.ndarray:
    """(M, n) km² of a sub-cell ``step`` degrees wide in each of n rows below each north edge."""
    north = np.asarray(north, dtype=np.float64)[:, None]
    return np.maximum(cell_areas_km2(north, step, n), 0.0)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True)) + top, axis=axis)


@dataclass
class Integrals:
    """Each cell's log-probability mass (log of density × km², unnormalised) and how finely it was found."""

    log_mass: np.ndarray  # (M,)
    level: np.ndarray  # (M,) index into SUBDIVISIONS
    points: int  # model evaluations spent (beyond the centres given)


def integrate(
    block: CellBlock,
    centre_logits: np.ndarray,
    logits_at: Callable[[np.ndarray], np.ndarray],
    budget: int,
    log_total_hint: float | None = None,
) -> Integrals:
    """Integrate the density over every cell of ``block``.

    ``centre_logits``: the log-density at each cell's centre (-inf where a cell is excluded; it stays
    excluded). ``logits_at``: (P, 2) lat, lon -> (P,) log-density. ``budget``: model evaluations to spend
    at most. ``log_total_hint``: the log of the total the shares are taken of, when the cells are part of
    a larger whole (a local window within the world); by default their own sum.
    """
    log_mass = centre_logits.astype(np.float64) + block.log_areas()
    live = np.isfinite(log_mass)
    level = np.zeros(len(block), dtype=np.int64)
    change = np.ones(len(block))  # how far each cell's value moved at its last refinement (1: never refined)
    cost_of = np.array([n * n for n in SUBDIVISIONS[1:]] + [0])  # points to take a cell to its next level
    spent = 0
    while spent < budget:
        log_total = _logsumexp(log_mass[live], 0) if live.any() else -np.inf
        if log_total_hint is not None:
            log_total = max(log_total, log_total_hint)
        if not np.isfinite(log_total):
            break
        # only cells whose probability could matter are looked at (a few thousand of a million)
        open_ = np.flatnonzero(live & (level < len(SUBDIVISIONS) - 1) & (log_mass - log_total > np.log(NEGLIGIBLE)))
        doubt = np.exp(log_mass[open_] - log_total) * change[open_]
        keep = doubt > NEGLIGIBLE
        order = open_[keep][np.argsort(-doubt[keep], kind="stable")]
        if order.size == 0:
            break
        # the most doubtful cells whose next level fits this round and the budget
        cost = cost_of[level[order]]
        room = min(ROUND_POINTS, budget - spent)
        take = order[np.cumsum(cost) <= room]
        if take.size == 0:
            break
        for next_level in np.unique(level[take] + 1):
            cells = take[level[take] + 1 == next_level]
            n = SUBDIVISIONS[next_level]
            points, log_sub_area = block.sub_points(cells, n)
            values = logits_at(points).reshape(len(cells), n, n) + log_sub_area[:, :, None]
            fresh = _logsumexp(values.reshape(len(cells), -1), 1)
            # how far the value moved estimates the coarser level's error, the cell's doubt. A 3 x 3 grid
            # can agree with the centre by chance and both be far off, so it is never trusted as settled.
            moved = np.minimum(np.abs(np.expm1(fresh - log_mass[cells])), 1.0)
            change[cells] = moved if next_level >= TRUSTED_LEVEL else 1.0
            log_mass[cells] = fresh
            level[cells] = next_level
            spent += len(cells) * n * n
    return Integrals(log_mass, level, spent)
