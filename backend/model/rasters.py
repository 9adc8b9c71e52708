"""Confidence rasters: where on the Earth the model believes, from the continuous location encoder.

For a query vector ``q`` (a photo's or text's GeoCLIP feature, or a fused sum of them) the model's
log-density at a point x is ``logit(x) = exp(logit_scale) * q . f(x)``, with f the unit-length location
feature, the same score the gallery softmax uses, taken per unit of the Earth's area.

Values: **probability per cell**: the density integrated over each cell (cell area ~ cos(latitude)) and
normalised so the cells of the world raster sum to 1. Local rasters use the same units, so a local
raster's cells sum to the world probability of the area it covers.

How it is evaluated:
  - World raster (default 0.25 deg): the location features of every cell centre are computed once per
    heads file and cached (fp32 when the engine runs in fp32, else bf16: about 2 GB or 1 GB for
    0.25 deg), so the centres cost one matrix product per photo.
  - Every world cell's value is an integral (:mod:`.cell_integrals`): the model's density varies within
    a 0.25 deg cell, so the cells that hold the probability are sub-sampled, adaptively, where their
    value is least certain, within a budget of model evaluations (larger on a GPU).
  - Local rasters (default 0.01 deg): windows of 2 x 2 world cells around the most probable world cells
    (by their integrals, so no over-stated centre sample chooses them) and around the top-1 answer.
    Every local cell is sampled and integrated the same way. The world cells under a window take the
    sum of its cells, so the world raster's peak agrees with the local one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GeoCLIPError
from ..photos.area import Area
from .cell_integrals import CellBlock, integrate
from .gallery import encode_locations

# Model evaluations spent integrating the world cells of one raster set (each local window adds its own
# cells once, plus a quarter of this for integrating them). A count, not a time: rasters repeat exactly.
CPU_POINT_BUDGET = 65_536
GPU_POINT_BUDGET = 2_097_152
WINDOW_SHARE = 4  # a window's own integration budget is the world's divided by this
CANDIDATE_CELLS = 64  # the most probable world cells a window may be centred on


@dataclass
class Raster:
    """A north-up grid in EPSG:4326: ``values[0, 0]`` is the north-west cell."""

    values: np.ndarray  # (rows, cols) float32; NaN outside an area of interest
    west: float
    north: float
    cell: float
    kind: str  # "world" or "local"

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def cols(self) -> int:
        return self.values.shape[1]

    @property
    def east(self) -> float:
        return self.west + self.cols * self.cell

    @property
    def south(self) -> float:
        return self.north - self.rows * self.cell

    def centre(self, row: int, col: int) -> tuple[float, float]:
        return self.north - (row + 0.5) * self.cell, self.west + (col + 0.5) * self.cell

    def peak(self) -> tuple[float, float, float]:
        """(lat, lon, value) of the most probable cell."""
        row, col = np.unravel_index(np.nanargmax(self.values), self.values.shape)
        lat, lon = self.centre(row, col)
        return lat, lon, float(self.values[row, col])


@dataclass
class RasterSet:
    world: Raster
    local: list[Raster]
    points: int = 0  # model evaluations spent integrating the cells
    log_total: float = 0.0  # log of the unnormalised total: density per km² = exp(logit - log_total)


def grid_centres(west: float, north: float, cell: float, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, 2) lat, lon of cell centres, row-major from the north-west corner."""
    lat = north - (np.arange(rows) + 0.5) * cell
    lon = west + (np.arange(cols) + 0.5) * cell
    grid = np.empty((rows, cols, 2), dtype=np.float32)
    grid[..., 0] = lat[:, None]
    grid[..., 1] = lon[None, :]
    return grid.reshape(-1, 2)


def world_shape(cell: float) -> tuple[int, int]:
    rows, cols = round(180 / cell), round(360 / cell)
    if not math.isclose(rows * cell, 180, abs_tol=1e-9) or not math.isclose(cols * cell, 360, abs_tol=1e-9):
        raise ValueError(f"world cell {cell} deg must divide 180 and 360 evenly")
    return rows, cols


def world_block(cell: float) -> CellBlock:
    """Every cell of the world grid of ``cell`` degrees, row-major from the north-west corner."""
    rows, cols = world_shape(cell)
    north = np.repeat(90.0 - np.arange(rows) * cell, cols)
    west = np.tile(-180.0 + np.arange(cols) * cell, rows)
    return CellBlock(north, west, cell)


def _logsumexp(values: np.ndarray, axis=None) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis) if axis is not None else out.item()


POINTS_VARIABLE = "GEOCLIP_RASTER_POINTS"
MIN_POINTS = 4096


def point_budget(device: torch.device) -> int:
    """Model evaluations per raster set: a count, so rasters repeat exactly. $GEOCLIP_RASTER_POINTS sets
    another (fewer: faster rasters whose cells are integrated more coarsely); read at each raster set."""
    raw = os.environ.get(POINTS_VARIABLE, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < MIN_POINTS:
            raise GeoCLIPError(f"{POINTS_VARIABLE} must be a whole number of at least {MIN_POINTS}, got {raw!r}")
        return int(raw)
    return GPU_POINT_BUDGET if device.type in ("cuda", "mps") else CPU_POINT_BUDGET


class SurfaceEvaluator:
    """Evaluates the model's probability per cell for query vectors on the world grid and in local windows."""

    def __init__(
        self,
        heads,
        world,
        world_cell: float,
        local_cell: float = 0.01,
        window_cells: int = 2,
        dtype: torch.dtype = torch.float32,
        budget: int | None = None,
    ):
        self.heads = heads
        self.world = world  # Gallery-like: coordinates and features of the world cell centres
        self.world_cell = world_cell
        self.rows, self.cols = world_shape(world_cell)
        ratio = world_cell / local_cell
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"local cell {local_cell} must divide the world cell {world_cell}")
        self.local_cell = local_cell
        self.sub = round(ratio)  # local cells per world cell, per side
        self.window_cells = window_cells  # world cells per window side
        self.dtype = dtype
        self._budget = None if budget is None else int(budget)
        self.scale = float(heads.logit_scale.exp())
        self.block = world_block(world_cell)

    @property
    def budget(self) -> int:
        return point_budget(self.heads.logit_scale.device) if self._budget is None else self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = int(value)

    # -- evaluation --------------------------------------------------------------------------------

    @torch.inference_mode()
    def _logits(self, features: torch.Tensor, query: torch.Tensor) -> np.ndarray:
        q = query.to(features.device, features.dtype)
        return (self.scale * (features @ q).float()).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def logits_at(self, lat_lon: np.ndarray, query: torch.Tensor) -> np.ndarray:
        """Log-density (unnormalised) at (P, 2) lat, lon for one query vector."""
        device = self.heads.logit_scale.device
        points = torch.from_numpy(np.ascontiguousarray(lat_lon, dtype=np.float32)).to(device)
        if points.shape[0] == 0:
            return np.empty(0)
        features = encode_locations(self.heads, points, dtype=self.dtype)
        return self._logits(features.float(), query.float())

    # -- windows -----------------------------------------------------------------------------------

    def _origin_around(
        self, row: int, col: int, world_mass: np.ndarray, others: list[tuple[int, int]] = ()
    ) -> tuple[int, int]:
        """Of the windows holding world cell (row, col), the one holding the most probability (kept inside
        -180..180 and -90..90: no wrap), among those overlapping none of ``others`` when there is one (a
        world cell under two windows would be two different sums)."""
        size = self.window_cells
        found = []
        for r in range(row - size + 1, row + 1):
            for c in range(col - size + 1, col + 1):
                r0, c0 = min(max(r, 0), self.rows - size), min(max(c, 0), self.cols - size)
                found.append((_logsumexp(world_mass[r0 : r0 + size, c0 : c0 + size]), (r0, c0)))
        apart = [f for f in found if all(not self._overlap(f[1], other) for other in others)]
        return max(apart or found, key=lambda f: f[0])[1]

    def _overlap(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        return abs(a[0] - b[0]) < self.window_cells and abs(a[1] - b[1]) < self.window_cells

    def _containing(self, origins: list[tuple[int, int]], lat: float, lon: float) -> int | None:
        row = (90 - lat) / self.world_cell
        col = (lon + 180) / self.world_cell
        for index, (r, c) in enumerate(origins):
            if r <= row < r + self.window_cells and c <= col < c + self.window_cells:
                return index
        return None

    def _pick_windows(self, world_mass: np.ndarray, regions: int) -> list[tuple[int, int]]:
        """Windows around the most probable world cells (by their integrals), none overlapping."""
        flat = world_mass.reshape(-1)
        windows: list[tuple[int, int]] = []
        for index in np.argsort(-flat, kind="stable")[:CANDIDATE_CELLS]:
            if not np.isfinite(flat[index]) or len(windows) == regions:
                break
            origin = self._origin_around(*divmod(int(index), self.cols), world_mass)
            if not any(self._overlap(origin, other) for other in windows):
                windows.append(origin)
        return windows

    def _window(self, origin: tuple[int, int], query: torch.Tensor, area: Area | None, log_total: float) -> _Window:
        """One window's local cells, each integrated (log mass, -inf outside the area)."""
        row0, col0 = origin
        n = self.window_cells * self.sub
        north, west = 90 - row0 * self.world_cell, -180 + col0 * self.world_cell
        rows = np.arange(n)
        block = CellBlock(
            np.repeat(north - rows * self.local_cell, n), np.tile(west + rows * self.local_cell, n), self.local_cell
        )
        centres = block.centres()
        logits = self.logits_at(centres, query)
        if area is not None:
            logits[~area.contains(centres[:, 0], centres[:, 1])] = -np.inf
        made = integrate(block, logits, lambda p: self.logits_at(p, query), self.budget // WINDOW_SHARE, log_total)
        return _Window(row0, col0, west, north, made.log_mass.reshape(n, n), made.points + n * n)

    # -- the surface -------------------------------------------------------------------------------

    def surface(
        self,
        query: torch.Tensor,
        seeds: list[tuple[float, float, float]] = (),
        area: Area | None = None,
        regions: int = 1,
    ) -> RasterSet:
        """World and local rasters of probability per cell for one query vector. ``seeds``: the answer's
        candidates, best first; the best one's window is always made, so its point lies on a local raster."""
        centre_logit = self._logits(self.world.features, query)
        if area is not None:
            lat_lon = self.world.coordinates.float().cpu().numpy()
            centre_logit[~area.contains(lat_lon[:, 0], lat_lon[:, 1])] = -np.inf
            seeds = [s for s in seeds if area.contains(s[0], s[1]).item()]
        integrals = integrate(self.block, centre_logit, lambda p: self.logits_at(p, query), self.budget)
        world_log_mass = integrals.log_mass.reshape(self.rows, self.cols)
        log_total = _logsumexp(world_log_mass[np.isfinite(world_log_mass)])

        origins = self._pick_windows(world_log_mass, regions)
        if seeds and self._containing(origins, *seeds[0][:2]) is None:
            row = min(int((90 - seeds[0][0]) // self.world_cell), self.rows - 1)
            col = min(int((seeds[0][1] + 180) // self.world_cell), self.cols - 1)
            origins.append(self._origin_around(row, col, world_log_mass, origins))
        windows = [self._window(origin, query, area, log_total) for origin in origins]
        size = self.window_cells
        for window in windows:  # world cells under a window: the sum of its (finer) cells
            blocks = window.log_mass.reshape(size, self.sub, size, self.sub)
            world_log_mass[window.row0 : window.row0 + size, window.col0 : window.col0 + size] = _logsumexp(
                blocks, axis=(1, 3)
            )

        log_total = _logsumexp(world_log_mass[np.isfinite(world_log_mass)])
        world = np.exp(world_log_mass - log_total).astype(np.float32)
        if area is not None:  # outside the area: no data, not zero
            world[~np.isfinite(world_log_mass)] = np.nan
        locals_ = []
        for window in sorted(windows, key=lambda w: -np.max(w.log_mass)):  # the most probable local raster first
            values = np.exp(window.log_mass - log_total).astype(np.float32)
            if area is not None:
                values[~np.isfinite(window.log_mass)] = np.nan
            locals_.append(Raster(values, window.west, window.north, self.local_cell, "local"))
        points = integrals.points + sum(window.points for window in windows)
        return RasterSet(Raster(world, -180.0, 90.0, self.world_cell, "world"), locals_, points, log_total)

    def density(self, query: torch.Tensor, log_total: float, area: Area | None = None):
        """The answer's probability per km² at points, as a function of (P, 2) lat, lon: the same model
        and normalisation as its rasters (0 outside the area)."""

        def per_km2(lat_lon: np.ndarray) -> np.ndarray:
            values = np.exp(self.logits_at(lat_lon, query) - log_total)
            if area is not None:
                values[~area.contains(lat_lon[:, 0], lat_lon[:, 1])] = 0.0
            return values

        return per_km2


@dataclass
class _Window:
    row0: int  # top-left world cell
    col0: int
    west: float
    north: float
    log_mass: np.ndarray  # (n, n) integrated log mass per local cell, -inf outside the area
    points: int  # model evaluations spent on it
