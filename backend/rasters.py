"""Confidence rasters: where on the Earth the model believes, from the continuous location encoder.

For a query vector ``q`` (a photo's or text's GeoCLIP feature, or a fused sum of them) the model's
log-density at a point x is ``logit(x) = exp(logit_scale) * q . f(x)``, with f the unit-length location
feature, the same score the gallery softmax uses, taken per unit of the Earth's area.

Values: **probability per cell**: the density integrated over each cell (cell area ~ cos(latitude)) and
normalised so the cells of the world raster sum to 1. Local rasters use the same units, so a local
raster's cells sum to the world probability of the area it covers.

How it is evaluated:
  - World raster (default 0.25 deg): the location features of every cell centre are computed once per
    heads file and cached (bf16, about 1 GB for 0.25 deg), so a photo costs one matrix product.
  - Refinement: the model is sharp near places it knows well (similarity can halve within 5 km), so a
    centre sample can miss a peak. Around the best candidates (gallery points and world cells), a
    window is evaluated at 5x the local cell size, the most probable of those coarse cells again at the
    local cell size (default 0.01 deg); this is the local raster. The world cells under a window take
    their value from these finer samples, so the world raster's peak agrees with the local one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .area import Area

COARSE_FACTOR = 5  # a local window is first sampled at 5x the local cell size
REFINED_COARSE_CELLS = 16  # the best coarse cells per window are sampled again at full resolution
CANDIDATE_WINDOWS = 8  # windows sampled coarsely before the best are sharpened


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


def _log_area(lat: np.ndarray, cell: float) -> np.ndarray:
    """log of a cell's area in square degrees of longitude-at-the-equator (~ cos(latitude))."""
    return np.log(np.maximum(np.cos(np.radians(lat)), 1e-12) * cell * cell)


def _logsumexp(values: np.ndarray, axis=None) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis) if axis is not None else out.item()


class SurfaceEvaluator:
    """Evaluates the model's log-density for query vectors on the world grid and in local windows."""

    def __init__(
        self,
        heads,
        world,
        world_cell: float,
        local_cell: float = 0.01,
        window_cells: int = 2,
        dtype: torch.dtype = torch.float32,
    ):
        self.heads = heads
        self.world = world  # Gallery-like: coordinates and features of the world cell centres
        self.world_cell = world_cell
        self.rows, self.cols = world_shape(world_cell)
        ratio = world_cell / local_cell
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) % COARSE_FACTOR:
            raise ValueError(
                f"local cell {local_cell} must divide the world cell {world_cell} into a multiple of {COARSE_FACTOR}"
            )
        self.local_cell = local_cell
        self.sub = round(ratio)  # local cells per world cell, per side
        self.window_cells = window_cells  # world cells per window side
        self.dtype = dtype
        self.scale = float(heads.logit_scale.exp())
        lat = self.world.coordinates[:, 0].float().cpu().numpy()
        self.world_log_area = _log_area(lat, world_cell)

    # -- evaluation --------------------------------------------------------------------------------

    @torch.inference_mode()
    def _logits(self, features: torch.Tensor, query: torch.Tensor) -> np.ndarray:
        q = query.to(features.device, features.dtype)
        return (self.scale * (features @ q).float()).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def _logits_at(self, lat_lon: np.ndarray, query: torch.Tensor) -> np.ndarray:
        device = self.heads.logit_scale.device
        points = torch.from_numpy(np.ascontiguousarray(lat_lon, dtype=np.float32)).to(device)
        autocast = self.dtype != torch.float32
        with torch.autocast(device.type, dtype=self.dtype, enabled=autocast):
            features = self.heads.location_features(points)
        return self._logits(features.float(), query.float())

    # -- windows -----------------------------------------------------------------------------------

    def _window_origin(self, lat: float, lon: float) -> tuple[int, int]:
        """Top-left world cell (row, col) of the window centred as near (lat, lon) as the grid allows,
        kept inside -180..180 and -90..90 (no wrap)."""
        size = self.window_cells
        row = math.floor((90 - lat) / self.world_cell - size / 2 + 0.5)
        col = math.floor((lon + 180) / self.world_cell - size / 2 + 0.5)
        return min(max(row, 0), self.rows - size), min(max(col, 0), self.cols - size)

    def _window(self, row0: int, col0: int, query: torch.Tensor) -> _Window:
        """One window sampled at the coarse step (5 local cells): cheap, and enough to rank windows."""
        m = self.window_cells * self.sub // COARSE_FACTOR
        step = self.local_cell * COARSE_FACTOR
        north, west = 90 - row0 * self.world_cell, -180 + col0 * self.world_cell
        coarse = self._logits_at(grid_centres(west, north, step, m, m), query).reshape(m, m)
        fine = np.repeat(np.repeat(coarse, COARSE_FACTOR, 0), COARSE_FACTOR, 1)
        return _Window(row0, col0, west, north, coarse, fine)

    def _sharpen(self, window: _Window, query: torch.Tensor) -> None:
        """Evaluate the most probable coarse cells again at the local cell size."""
        step = self.local_cell * COARSE_FACTOR
        best = np.argsort(window.coarse, axis=None)[::-1][:REFINED_COARSE_CELLS]
        blocks = [np.unravel_index(i, window.coarse.shape) for i in best]
        points = np.concatenate(
            [
                grid_centres(
                    window.west + c * step, window.north - r * step, self.local_cell, COARSE_FACTOR, COARSE_FACTOR
                )
                for r, c in blocks
            ]
        )
        exact = self._logits_at(points, query).reshape(len(blocks), COARSE_FACTOR, COARSE_FACTOR)
        for (r, c), block in zip(blocks, exact):
            window.fine[r * COARSE_FACTOR : (r + 1) * COARSE_FACTOR, c * COARSE_FACTOR : (c + 1) * COARSE_FACTOR] = (
                block
            )

    def _log_mass(self, window: _Window, area: Area | None) -> np.ndarray:
        """Per local cell: log-density + log-area, -inf outside the area."""
        n = window.fine.shape[0]
        centres = grid_centres(window.west, window.north, self.local_cell, n, n)
        log_mass = window.fine.reshape(-1) + _log_area(centres[:, 0], self.local_cell)
        if area is not None:
            log_mass[~area.contains(centres[:, 0], centres[:, 1])] = -np.inf
        return log_mass.reshape(n, n)

    def _containing(self, origins: list[tuple[int, int]], lat: float, lon: float) -> int | None:
        row = (90 - lat) / self.world_cell
        col = (lon + 180) / self.world_cell
        for index, (r, c) in enumerate(origins):
            if r <= row < r + self.window_cells and c <= col < c + self.window_cells:
                return index
        return None

    def _pick_windows(
        self, seeds: list[tuple[float, float, float]], world_logit: np.ndarray, regions: int
    ) -> list[tuple[int, int]]:
        """Windows around the best seeds (gallery candidates and world cells), none overlapping."""
        top_cells = np.argsort(world_logit)[::-1][:32]
        lat_lon = self.world.coordinates.float().cpu().numpy()
        candidates = list(seeds) + [
            (float(lat_lon[i, 0]), float(lat_lon[i, 1]), float(world_logit[i]))
            for i in top_cells
            if np.isfinite(world_logit[i])
        ]
        candidates.sort(key=lambda s: -s[2])
        windows: list[tuple[int, int]] = []
        for lat, lon, _ in candidates:
            origin = self._window_origin(lat, lon)
            if all(
                abs(origin[0] - r) >= self.window_cells or abs(origin[1] - c) >= self.window_cells for r, c in windows
            ):
                windows.append(origin)
            if len(windows) == regions:
                break
        return windows

    # -- the surface -------------------------------------------------------------------------------

    def surface(
        self,
        query: torch.Tensor,
        seeds: list[tuple[float, float, float]] = (),
        area: Area | None = None,
        regions: int = 1,
    ) -> RasterSet:
        """World and local rasters of probability per cell for one query vector."""
        world_logit = self._logits(self.world.features, query)
        if area is not None:
            lat_lon = self.world.coordinates.float().cpu().numpy()
            world_logit[~area.contains(lat_lon[:, 0], lat_lon[:, 1])] = -np.inf
            seeds = [s for s in seeds if area.contains(s[0], s[1]).item()]
        world_log_mass = (world_logit + self.world_log_area).reshape(self.rows, self.cols)

        # A centre sample can sit just beside a sharp peak and lose to a broad plateau elsewhere, so
        # several candidate windows are sampled coarsely and the best of them sharpened.
        origins = self._pick_windows(list(seeds), world_logit, max(regions, CANDIDATE_WINDOWS))
        windows = [self._window(r, c, query) for r, c in origins]
        masses = [self._log_mass(window, area) for window in windows]
        order = list(np.argsort([-np.max(m) for m in masses])[:regions])
        if seeds:  # the top-1 answer's own window is always sharpened, so its point sits on a local raster
            anchor = self._containing(origins, *seeds[0][:2])
            if anchor is None:
                windows.append(self._window(*self._window_origin(*seeds[0][:2]), query))
                masses.append(self._log_mass(windows[-1], area))
                anchor = len(windows) - 1
            if anchor not in order:
                order.append(anchor)
        for index in order:
            self._sharpen(windows[index], query)
            masses[index] = self._log_mass(windows[index], area)
        order.sort(key=lambda i: -np.max(masses[i]))  # the most probable local raster first
        size = self.window_cells
        for window, mass in zip(windows, masses):  # world cells under a window: the sum of its cells
            blocks = mass.reshape(size, self.sub, size, self.sub)
            world_log_mass[window.row0 : window.row0 + size, window.col0 : window.col0 + size] = _logsumexp(
                blocks, axis=(1, 3)
            )

        log_total = _logsumexp(world_log_mass[np.isfinite(world_log_mass)])
        world = np.exp(world_log_mass - log_total).astype(np.float32)
        if area is not None:  # outside the area: no data, not zero
            world[~np.isfinite(world_log_mass)] = np.nan
        locals_ = []
        for index in order:
            values = np.exp(masses[index] - log_total).astype(np.float32)
            if area is not None:
                values[~np.isfinite(masses[index])] = np.nan
            locals_.append(Raster(values, windows[index].west, windows[index].north, self.local_cell, "local"))
        return RasterSet(Raster(world, -180.0, 90.0, self.world_cell, "world"), locals_)


@dataclass
class _Window:
    row0: int  # top-left world cell
    col0: int
    west: float
    north: float
    coarse: np.ndarray  # logits at the coarse step
    fine: np.ndarray  # logits per local cell (coarse values repeated until sharpened)
