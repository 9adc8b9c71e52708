"""Rasters of the location encoder's features over a grid: embedding maps, and the grid and tile streaming
that :mod:`.similar_places` shares.

A :class:`Grid` is a north-up grid of cells over a W,S,E,N extent (EPSG:4326); features are those of
the cell centres (from :mod:`.location_features`, **unit-normalised, as in the model**), reused from the
rasters' cached world grid where that grid is the one asked for, else encoded on the fly. Maps are
encoded, converted and written by row tiles, so memory stays bounded whatever their size.

- :func:`embedding_map`: a GeoTIFF of the features (RGB of the first three principal components, the
  principal components, or all 512 values).

Outputs go through GDAL/OGR: GeoTIFF rasters (EPSG:4326, north-up, DEFLATE, ``GEOCLIP_*`` metadata
saying what the values are) and GeoPackage layers (EPSG:4326). Nothing here imports Qt or QGIS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.gallery import cached_location_features, encode_locations, features_key
from ..model.rasters import grid_centres, world_shape
from ..output.geotiff_files import GeoTiffFile, refuse_foreign_raster
from ..progress import ProgressCallback, ShouldStop, Stage, stop_check
from .location_features import (
    FEATURE_DIM,
    PCA_SAMPLE,
    PCA_SEED,
    LocationError,
    LocationModel,
    PrincipalComponents,
    canonical_lat_lon,
    fit_pca,
    grid_dtype,
)

WORLD = (-180.0, -90.0, 180.0, 90.0)  # west, south, east, north
DEFAULT_CELL = 0.25
TILE_CELLS = 65_536  # cells encoded per row tile: ~130 MB of float32 features
ENCODE_BATCH = 1024  # cells per pass through the location encoder, always this many (tile-size-independent)
BYTE_PERCENTILES = (1.0, 99.0)  # of the PCA sample, mapped to bytes 0 and 255
MAP_BANDS = ("rgb", "pca", "all")
# A tile's features are (rows x cols x 512) float32 in memory at once: 16 default tiles (~2 GB) at most,
# and one row of the grid must fit in a tile. A grid may hold at most 2^32 cells (a world map at
# 0.0042 degrees; encoding it takes days on a GPU): a finer cell is a slip of the keyboard.
MAX_TILE_CELLS = 16 * TILE_CELLS
MAX_GRID_CELLS = 1 << 32


# ------------------------------------------------------------------------------------------- grids


def parse_extent(text_or_tuple) -> tuple[float, float, float, float]:
    """W,S,E,N degrees (text or numbers), west < east, south < north, inside -180..180 / -90..90."""
    try:
        values = [float(v) for v in (text_or_tuple.split(",") if isinstance(text_or_tuple, str) else text_or_tuple)]
    except (TypeError, ValueError):
        raise LocationError(f"extent must be WEST,SOUTH,EAST,NORTH in degrees, got {text_or_tuple!r}") from None
    if len(values) != 4:
        raise LocationError(f"extent must have 4 numbers WEST,SOUTH,EAST,NORTH, got {len(values)}")
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise LocationError(
            f"extent {values} is not a box inside -180..180, -90..90 with west < east and south < north"
        )
    return west, south, east, north


@dataclass(frozen=True)
class Grid:
    """A north-up grid of ``cell`` degrees from (west, north); cell centres are where features are taken.

    When ``cell`` does not divide the extent, the last column/row reaches past east/south.
    """

    west: float
    north: float
    cell: float
    rows: int
    cols: int

    @classmethod
    def over(cls, extent=WORLD, cell: float = DEFAULT_CELL) -> Grid:
        west, south, east, north = parse_extent(extent)
        try:
            cell = float(cell)
        except (TypeError, ValueError):
            raise LocationError(f"cell size must be a number of degrees, got {cell!r}") from None
        if not (cell > 0 and math.isfinite(cell)):
            raise LocationError(f"cell size must be a positive number of degrees, got {cell}")
        cols = max(1, math.ceil((east - west) / cell - 1e-9))
        rows = max(1, math.ceil((north - south) / cell - 1e-9))
        if cols > MAX_TILE_CELLS or rows * cols > MAX_GRID_CELLS:
            raise LocationError(
                f"a cell of {cell:g} degrees makes a grid of {cols:,} x {rows:,} cells; at most {MAX_TILE_CELLS:,} "
                f"columns and {MAX_GRID_CELLS:,} cells in all: choose a larger cell or a smaller extent"
            )
        return cls(west, north, cell, rows, cols)

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        return (self.west, self.cell, 0.0, self.north, 0.0, -self.cell)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (self.west, self.north - self.rows * self.cell, self.west + self.cols * self.cell, self.north)

    def is_world(self) -> bool:
        try:
            shape = world_shape(self.cell)
        except ValueError:
            return False
        return (
            shape == (self.rows, self.cols)
            and math.isclose(self.west, -180.0, abs_tol=1e-9)
            and math.isclose(self.north, 90.0, abs_tol=1e-9)
        )

    def centres(self, row0: int = 0, row1: int | None = None) -> np.ndarray:
        """(n, 2) float32 lat, lon of the cell centres of rows row0..row1, row-major; latitudes past a
        pole are clamped to it."""
        row1 = self.rows if row1 is None else row1
        points = grid_centres(self.west, self.north - row0 * self.cell, self.cell, row1 - row0, self.cols)
        np.clip(points[:, 0], -90.0, 90.0, out=points[:, 0])
        return points

    def cell_centres(self, indices: np.ndarray) -> np.ndarray:
        rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), self.cols)
        lat = np.clip(self.north - (rows + 0.5) * self.cell, -90.0, 90.0)
        return np.stack([lat, self.west + (cols + 0.5) * self.cell], axis=1).astype(np.float32)

    def cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        row = min(max(math.floor((self.north - lat) / self.cell), 0), self.rows - 1)
        col = min(max(math.floor((lon - self.west) / self.cell), 0), self.cols - 1)
        return row, col


class _NotCachedError(Exception):
    pass


def _cached_world(model: LocationModel, grid: Grid):
    """The rasters' cached world-grid features (bf16) for this grid, if they are in memory or on disk;
    never computed here (a fine world grid would not fit in memory)."""
    if not grid.is_world():
        return None

    def refuse():
        raise _NotCachedError

    key = features_key(model.files, f"world-{float(grid.cell)}", "bf16")
    try:
        return cached_location_features(model.heads, key, refuse, model.device, dtype=torch.bfloat16)
    except _NotCachedError:
        return None


class GridFeatures:
    """Location features of a grid's cells, row tile by row tile: from the cached world grid where it
    exists, else encoded on the fly (cancellable every :data:`..model.gallery.CHUNK` cells)."""

    def __init__(self, model: LocationModel, grid: Grid, dtype: torch.dtype, reuse_cache: bool):
        self.model, self.grid, self.dtype = model, grid, dtype
        self.cached = _cached_world(model, grid) if reuse_cache else None
        self._last_block: tuple[int, torch.Tensor] | None = None

    @property
    def source(self) -> str:
        return "cached world grid (bf16)" if self.cached is not None else f"encoded ({str(self.dtype)[6:]})"

    @torch.inference_mode()
    def at(self, indices: np.ndarray, should_stop: ShouldStop | None = None) -> torch.Tensor:
        if self.cached is not None:
            return self.cached.features[torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.model.device)]
        return self._encode(self.grid.cell_centres(indices), should_stop)

    @torch.inference_mode()
    def rows(self, row0: int, row1: int, should_stop: ShouldStop | None = None) -> torch.Tensor:
        first, stop = row0 * self.grid.cols, row1 * self.grid.cols
        if self.cached is not None:
            return self.cached.features[first:stop]
        # Cells go through the encoder in fixed blocks of ENCODE_BATCH counted from the grid's first cell,
        # so each cell always shares its pass with the same cells at the same place: how tiles cut the
        # grid cannot change a byte of the map (a matrix product's rounding can depend on the whole batch).
        parts = []
        for block in range(first // ENCODE_BATCH, (stop - 1) // ENCODE_BATCH + 1):
            features = self._block(block, should_stop)
            start = block * ENCODE_BATCH
            parts.append(features[max(first - start, 0) : min(stop - start, ENCODE_BATCH)])
        return torch.cat(parts)

    def _block(self, block: int, should_stop: ShouldStop | None) -> torch.Tensor:
        if self._last_block is None or self._last_block[0] != block:  # a tile's end and the next's start
            cells = self.grid.rows * self.grid.cols
            indices = np.arange(block * ENCODE_BATCH, min((block + 1) * ENCODE_BATCH, cells))
            self._last_block = (block, self._encode(self.grid.cell_centres(indices), should_stop))
        return self._last_block[1]

    def _encode(self, centres: np.ndarray, should_stop: ShouldStop | None) -> torch.Tensor:
        coordinates = torch.from_numpy(canonical_lat_lon(centres).astype(np.float32))
        return encode_locations(
            self.model.heads, coordinates, None, self.dtype, fixed_batch=ENCODE_BATCH, should_stop=should_stop
        )


# ------------------------------------------------------------------------------------ GeoTIFF streaming


class TileWriter:
    """A GeoTIFF (:class:`..output.geotiff_files.GeoTiffFile`) written row tile by row tile (GDAL WriteArray at a
    row offset). Strips are one tile high, so every strip is written once and compressed once. Per-band
    statistics are gathered as tiles pass."""

    def __init__(
        self,
        path: Path,
        grid: Grid,
        bands: int,
        gdal_type: int,
        tile_rows: int,
        metadata: dict,
        descriptions: Sequence[str] = (),
        rgb: bool = False,
    ):
        from osgeo import gdal

        options = [
            "COMPRESS=DEFLATE",
            f"PREDICTOR={2 if gdal_type == gdal.GDT_Byte else 3}",
            "TILED=NO",
            f"BLOCKYSIZE={tile_rows}",
            "BIGTIFF=IF_SAFER",
            "INTERLEAVE=PIXEL" if rgb else "INTERLEAVE=BAND",
        ]
        if rgb:
            options.append("PHOTOMETRIC=RGB")
        self.file = GeoTiffFile(path, grid.cols, grid.rows, bands, gdal_type, options, grid.geotransform, metadata)
        colours = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
        for index in range(bands):
            band = self.file.band(index + 1)
            if index < len(descriptions):
                band.SetDescription(descriptions[index])
            if rgb:
                band.SetColorInterpretation(colours[index])
        self.bands = bands
        self.count = 0
        self.total = np.zeros(bands)
        self.squares = np.zeros(bands)
        self.low = np.full(bands, np.inf)
        self.high = np.full(bands, -np.inf)

    def write(self, row0: int, values: np.ndarray) -> None:
        """``values``: (bands, rows, cols) for the rows from ``row0``."""
        for index in range(self.bands):
            self.file.write(index + 1, values[index], row0)
        flat = values.reshape(self.bands, -1).astype(np.float64)
        self.count += flat.shape[1]
        self.total += flat.sum(axis=1)
        self.squares += (flat**2).sum(axis=1)
        self.low = np.minimum(self.low, flat.min(axis=1))
        self.high = np.maximum(self.high, flat.max(axis=1))

    def finish(self, overviews: bool) -> Path:
        """Statistics, overviews (for a few bands), close, and rename into place."""
        mean = self.total / max(self.count, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.count, 1) - mean**2, 0.0))
        for index in range(self.bands):
            band = self.file.band(index + 1)
            band.SetStatistics(float(self.low[index]), float(self.high[index]), float(mean[index]), float(std[index]))
        if overviews:
            smaller = min(self.file.dataset.RasterXSize, self.file.dataset.RasterYSize)
            factors = [f for f in (2, 4, 8, 16, 32, 64) if smaller // f >= 64]
            if factors:
                self.file.dataset.BuildOverviews("AVERAGE", factors)
        return self.file.finish()

    def abandon(self) -> None:
        self.file.abandon()


def check_grid(extent, cell: float, tile_rows: int | None = None) -> Grid:
    """The grid asked for, refused (LocationError) when it or its tiles could not be made."""
    grid = Grid.over(extent, cell)
    tile_rows_of(grid, tile_rows)
    return grid


def tile_rows_of(grid: Grid, tile_rows: int | None) -> int:
    if tile_rows is not None and tile_rows < 1:
        raise LocationError(f"tile rows must be at least 1, got {tile_rows}")
    rows = min(grid.rows, tile_rows or max(1, TILE_CELLS // grid.cols))
    if rows * grid.cols > MAX_TILE_CELLS:
        most = MAX_TILE_CELLS // grid.cols
        gigabytes = rows * grid.cols * FEATURE_DIM * 4 / 1e9
        raise LocationError(
            f"{rows:,} tile rows of {grid.cols:,} cells would hold {gigabytes:.1f} GB of features in memory at "
            f"once; at most {most:,} rows for this grid (or leave --tile-rows out)"
        )
    return rows


def stream_tiles(
    writer: TileWriter,
    grid: Grid,
    rows_per_tile: int,
    features: GridFeatures,
    to_values: Callable[[torch.Tensor, int, int], np.ndarray],
    stage: str,
    progress: ProgressCallback | None,
    should_stop: ShouldStop | None,
) -> Path:
    """Encode, convert (``to_values(features, row0, rows)`` -> (bands, rows, cols)) and write each row
    tile; the file is renamed into place at the end, or deleted on cancel or failure."""
    tiles = math.ceil(grid.rows / rows_per_tile)
    counter = Stage(progress, stage, tiles, "row tiles", interval=0.0)  # coarse steps: each is worth showing
    try:
        for tile in range(tiles):
            stop_check(should_stop)
            row0 = tile * rows_per_tile
            row1 = min(grid.rows, row0 + rows_per_tile)
            writer.write(row0, to_values(features.rows(row0, row1, should_stop), row0, row1 - row0))
            counter.update(tile + 1)
        stop_check(should_stop)
        return writer.finish(overviews=writer.bands <= 4)
    except BaseException:
        writer.abandon()
        raise


def grid_metadata(model: LocationModel, grid: Grid, features: GridFeatures, kind: str, values: str) -> dict:
    west, south, east, north = grid.extent
    return {
        "GEOCLIP_RASTER": kind,
        "GEOCLIP_VALUES": values,
        "GEOCLIP_MODEL": model.label,
        "GEOCLIP_CELL_DEG": f"{grid.cell:g}",
        "GEOCLIP_EXTENT": f"{west:g},{south:g},{east:g},{north:g}",
        "GEOCLIP_FEATURES": features.source,
        "GEOCLIP_NORMALISATION": "location features are unit-length, as in the model; sampled at cell centres",
    }


# ----------------------------------------------------------------------------------- embedding maps


@dataclass
class EmbeddingMap:
    """What :func:`embedding_map` wrote: the file, its grid, and how its values were made."""

    path: Path
    grid: Grid
    bands: str  # "rgb", "pca" or "all"
    band_count: int
    pca: PrincipalComponents | None
    byte_ranges: np.ndarray | None  # (k, 2) component values mapped to bytes 0 and 255 ("rgb")
    features: str  # where the cells' features came from
    tiles: int


def embedding_map(
    model: LocationModel,
    path: str | os.PathLike,
    extent=WORLD,
    cell: float = DEFAULT_CELL,
    bands: str = "rgb",
    components: int = 3,
    sample: int = PCA_SAMPLE,
    seed: int = PCA_SEED,
    precision: str = "auto",
    tile_rows: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbeddingMap:
    """A GeoTIFF of the location encoder over ``extent`` (W,S,E,N degrees) at ``cell`` degrees.

    ``bands``: ``"rgb"`` (default): the first three principal components as Byte red, green, blue, each
    mapped linearly from its 1st..99th percentile over the PCA sample to 0..255 (clipped); ``"pca"``: the
    first ``components`` principal components as Float32; ``"all"``: the 512 feature values as Float32.
    The PCA is fitted on ``sample`` cells drawn at random (seeded) from the grid. Features are those of the
    cell centres, unit-normalised as in the model. Rows are encoded, projected and written one tile at a
    time (``tile_rows``; default about :data:`TILE_CELLS` cells a tile), so memory does not grow with the
    map; a cancelled or failed map leaves no file. ``precision``: ``auto`` reuses the rasters' cached
    world grid when the grid is that grid and encodes in bf16 where the device is fast at it;
    ``fp32`` encodes everything in float32.
    """
    if bands not in MAP_BANDS:
        raise LocationError(f"bands must be one of {', '.join(MAP_BANDS)}, got {bands!r}")
    grid = Grid.over(extent, cell)
    refuse_foreign_raster(path)  # before any work: another program's file is never replaced
    count = {"rgb": 3, "pca": int(components), "all": FEATURE_DIM}[bands]
    if bands == "pca" and not 1 <= count <= FEATURE_DIM:
        raise LocationError(f"components must be between 1 and {FEATURE_DIM}, got {components}")
    if sample < 2:
        raise LocationError(f"the PCA sample needs at least 2 cells, got {sample}")
    if not 0 <= seed < 2**63:
        raise LocationError(f"the seed must be a whole number from 0, got {seed}")
    dtype = grid_dtype(model.device, precision)
    features = GridFeatures(model, grid, dtype, reuse_cache=precision != "fp32")
    rows_per_tile = tile_rows_of(grid, tile_rows)

    pca, byte_ranges = None, None
    if bands != "all":
        if count >= grid.cells:
            raise LocationError(f"{count} principal components need more than {count} cells; the grid has {grid.cells}")
        fitting = Stage(progress, "Fitting principal components", 1)
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(grid.cells, min(sample, grid.cells), replace=False))
        sampled = features.at(picked, should_stop).float().cpu().numpy()
        pca = fit_pca(sampled, count)
        if bands == "rgb":
            projected = pca.project(sampled)
            byte_ranges = np.stack(
                [
                    np.percentile(projected, BYTE_PERCENTILES[0], axis=0),
                    np.percentile(projected, BYTE_PERCENTILES[1], axis=0),
                ],
                axis=1,
            )
            byte_ranges[:, 1] = np.maximum(byte_ranges[:, 1], byte_ranges[:, 0] + 1e-6)
        fitting.update(1)

    from osgeo import gdal

    kind = {
        "rgb": "embedding map (RGB)",
        "pca": "embedding map (principal components)",
        "all": "embedding map (features)",
    }[bands]
    values = {
        "rgb": "first three principal components of the location features, each scaled linearly from "
        "GEOCLIP_BYTE_RANGES (its 1st..99th percentile over the PCA sample) to 0..255, clipped",
        "pca": "principal component scores of the location features: (feature - mean) . component",
        "all": "the 512 values of the location feature of each cell centre (unit length)",
    }[bands]
    metadata = grid_metadata(model, grid, features, kind, values)
    if pca is not None:
        metadata.update(
            GEOCLIP_PCA_SAMPLE=str(pca.fitted_on),
            GEOCLIP_PCA_SEED=str(seed),
            GEOCLIP_PCA_EXPLAINED_VARIANCE=",".join(f"{v:.6f}" for v in pca.explained_variance_ratio),
        )
    if byte_ranges is not None:
        metadata["GEOCLIP_BYTE_RANGES"] = ";".join(f"{low:.9g},{high:.9g}" for low, high in byte_ranges)
    if bands == "all":
        descriptions = [f"feature {i + 1}" for i in range(count)]
    else:
        names = ("red", "green", "blue")
        descriptions = [f"PC{i + 1}" + (f" ({names[i]})" if bands == "rgb" else "") for i in range(count)]
    writer = TileWriter(
        Path(path),
        grid,
        count,
        gdal.GDT_Byte if bands == "rgb" else gdal.GDT_Float32,
        rows_per_tile,
        metadata,
        descriptions,
        rgb=bands == "rgb",
    )

    @torch.inference_mode()
    def to_values(tile: torch.Tensor, row0: int, rows: int) -> np.ndarray:
        if bands == "all":
            values = tile.float().cpu().numpy()
        else:
            values = pca.project_torch(tile).cpu().numpy()
        if bands == "rgb":
            low, high = byte_ranges[:, 0], byte_ranges[:, 1]
            values = np.clip(np.rint((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(values.T.reshape(count, rows, grid.cols))

    written = stream_tiles(writer, grid, rows_per_tile, features, to_values, "Embedding map", progress, should_stop)
    return EmbeddingMap(
        written, grid, bands, count, pca, byte_ranges, features.source, math.ceil(grid.rows / rows_per_tile)
    )
