"""Similar places: the places of GeoCLIP's GPS gallery whose location features are most like a point's,
optionally with a raster of the cosine similarity to every cell of a grid (streamed by row tiles as the
embedding maps are, :mod:`.embedding_maps`); :func:`write_places_gpkg` writes them as a GeoPackage layer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geo import haversine_km
from ..model.gallery import load_gallery
from ..output.geotiff_files import refuse_foreign_raster
from ..output.gpkg_files import GeoPackage, write_output
from ..progress import ProgressCallback, ShouldStop, Stage
from .embedding_maps import (
    DEFAULT_CELL,
    WORLD,
    Grid,
    GridFeatures,
    TileWriter,
    check_grid,
    grid_metadata,
    stream_tiles,
    tile_rows_of,
)
from .location_features import (
    LocationError,
    LocationModel,
    canonical_lat_lon,
    grid_dtype,
)

PLACES_LAYER = "similar_places"
EXCLUDE_KM = 25.0


@dataclass
class SimilarPlace:
    rank: int
    lat: float
    lon: float
    similarity: float  # cosine similarity of location features, -1..1
    distance_km: float  # great-circle distance from the query point


@dataclass
class SimilarPlaces:
    """Places whose location features are most like the query point's, from the 100K GPS gallery."""

    lat: float
    lon: float
    places: list[SimilarPlace]
    exclude_km: float  # gallery places closer than this to the point were left out
    spread_km: float = 0.0  # listed places are at least this far apart
    raster: Path | None = None
    grid: Grid | None = None
    peak: tuple[float, float, float] | None = None  # (lat, lon, similarity) of the most similar cell
    features: str = ""

    def csv_rows(self) -> list[list]:
        return [
            [p.rank, f"{p.lat:.6f}", f"{p.lon:.6f}", f"{p.similarity:.6f}", f"{p.distance_km:.3f}"] for p in self.places
        ]


PLACE_COLUMNS = ("rank", "lat", "lon", "similarity", "distance_km")


def similar_places(
    model: LocationModel,
    lat: float,
    lon: float,
    raster: str | os.PathLike | None = None,
    extent=WORLD,
    cell: float = DEFAULT_CELL,
    top: int = 20,
    exclude_km: float = EXCLUDE_KM,
    spread_km: float = 0.0,
    precision: str = "auto",
    tile_rows: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> SimilarPlaces:
    """Where else does GeoCLIP's location encoder see a place like (lat, lon)?

    - ``places``: the ``top`` places of GeoCLIP's 100K GPS gallery (MP-16 photo positions) whose
      location features are most similar (cosine) to the point's, best first. Gallery places within
      ``exclude_km`` of the point are left out, so the answer is not the point's own neighbourhood; with
      ``spread_km``, a place closer than that to a better one already listed is skipped.
    - With ``raster``: a Float32 GeoTIFF over ``extent`` at ``cell`` degrees of the cosine similarity
      (-1..1) between the point's feature (float32) and each cell centre's, streamed by row tiles.
    """
    point = canonical_lat_lon([[lat, lon]])
    lat, lon = float(point[0, 0]), float(point[0, 1])
    if raster is not None:  # before any work: a grid that cannot be, or a file that is not ours
        check_grid(extent, cell, tile_rows)
        refuse_foreign_raster(raster)
    if not 1 <= int(top):
        raise LocationError(f"top must be at least 1, got {top}")
    if not (exclude_km >= 0 and spread_km >= 0):
        raise LocationError(f"distances must be 0 km or more, got {exclude_km} and {spread_km}")
    query = torch.from_numpy(model.encode(point)[0]).to(model.device)
    result = SimilarPlaces(lat, lon, [], float(exclude_km), float(spread_km))

    loading = Stage(progress, "Loading the GPS gallery", 1)
    gallery = load_gallery(model.heads, model.files, model.device, progress, should_stop)
    with torch.inference_mode():
        similarity = (gallery.features.float() @ query).cpu().numpy().astype(np.float64)
    coordinates = gallery.coordinates.float().cpu().numpy().astype(np.float64)
    distance = haversine_km(lat, lon, coordinates[:, 0], coordinates[:, 1])
    similarity[distance < exclude_km] = -np.inf
    picked: list[int] = []
    for i in np.argsort(-similarity, kind="stable"):
        if len(picked) == int(top) or not np.isfinite(similarity[i]):
            break
        # The gallery holds many photos of one city; a separation keeps one place per neighbourhood.
        if (
            spread_km > 0
            and picked
            and haversine_km(coordinates[i, 0], coordinates[i, 1], coordinates[picked, 0], coordinates[picked, 1]).min()
            < spread_km
        ):
            continue
        picked.append(int(i))
    result.places = [
        SimilarPlace(
            rank + 1, float(coordinates[i, 0]), float(coordinates[i, 1]), float(similarity[i]), float(distance[i])
        )
        for rank, i in enumerate(picked)
    ]
    loading.update(1)

    if raster is not None:
        from osgeo import gdal

        grid = Grid.over(extent, cell)
        features = GridFeatures(model, grid, grid_dtype(model.device, precision), reuse_cache=precision != "fp32")
        rows_per_tile = tile_rows_of(grid, tile_rows)
        metadata = grid_metadata(
            model,
            grid,
            features,
            "similarity",
            "cosine similarity (-1..1) between the location feature of GEOCLIP_POINT and that of each cell centre",
        )
        metadata["GEOCLIP_POINT"] = f"{lat:.6f},{lon:.6f}"
        writer = TileWriter(Path(raster), grid, 1, gdal.GDT_Float32, rows_per_tile, metadata, ["cosine similarity"])
        best = (-np.inf, 0.0, 0.0)  # similarity, lat, lon of the most similar cell so far

        @torch.inference_mode()
        def to_values(tile: torch.Tensor, row0: int, rows: int) -> np.ndarray:
            nonlocal best
            values = (tile.float() @ query).cpu().numpy().reshape(1, rows, grid.cols)
            r, c = np.unravel_index(int(np.argmax(values[0])), values[0].shape)
            if values[0, r, c] > best[0]:
                best = (
                    float(values[0, r, c]),
                    grid.north - (row0 + r + 0.5) * grid.cell,
                    grid.west + (c + 0.5) * grid.cell,
                )
            return values

        result.raster = stream_tiles(
            writer, grid, rows_per_tile, features, to_values, "Similarity raster", progress, should_stop
        )
        result.grid, result.features = grid, features.source
        result.peak = (best[1], best[2], best[0])
    return result


def write_places_gpkg(result: SimilarPlaces, path: str | os.PathLike) -> Path:
    """The similar places as a point layer ``similar_places`` (EPSG:4326): rank, lat, lon, similarity,
    distance_km, plus the query point and exclusion radius in every row."""
    return write_output(
        path, PLACES_LAYER, lambda gpkg: _fill_places(gpkg, result), len(result.places), PLACES_LEGACY_FIELDS
    )


PLACES_LEGACY_FIELDS = frozenset({"rank", "similarity", "distance_km", "query_lat", "query_lon", "exclude_km"})


def _fill_places(gpkg: GeoPackage, result: SimilarPlaces) -> None:
    from osgeo import ogr

    layer = gpkg.create_layer(PLACES_LAYER, ogr.wkbPoint, options=())
    columns = [
        ("rank", ogr.OFTInteger),
        ("lat", ogr.OFTReal),
        ("lon", ogr.OFTReal),
        ("similarity", ogr.OFTReal),
        ("distance_km", ogr.OFTReal),
        ("query_lat", ogr.OFTReal),
        ("query_lon", ogr.OFTReal),
        ("exclude_km", ogr.OFTReal),
    ]
    for name, kind in columns:
        gpkg.add_field(layer, ogr.FieldDefn(name, kind))
    for place in result.places:  # a few rows: no transaction
        feature = ogr.Feature(layer.GetLayerDefn())
        values = (
            place.rank,
            place.lat,
            place.lon,
            place.similarity,
            place.distance_km,
            result.lat,
            result.lon,
            result.exclude_km,
        )
        for (name, _), value in zip(columns, values):
            feature.SetField(name, value)
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(place.lon, place.lat)
        feature.SetGeometry(point)
        gpkg.add_feature(layer, feature)
