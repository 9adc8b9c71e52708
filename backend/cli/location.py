"""Command line for the location tools: ``embed``, ``embedmap`` and ``similar``.

    geoclip-qgis embed points.gpkg --out points_embedded.gpkg --npz points.npz --pca 3
    geoclip-qgis embedmap world.tif --cell 0.25
    geoclip-qgis similar 48.8566 2.3522 --top 20 --raster paris_like.tif > paris_like.csv

stdout carries data only (the paths written, or the similar places as CSV); progress and notes go to
stderr. Problems are reported as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import sys

from ..csv_safety import csv_row
from ..errors import GeoCLIPError
from ..progress import Progress

LOCATION_COMMANDS = ("embed", "embedmap", "similar")


def _add_common(parser: argparse.ArgumentParser, precision_default: str) -> None:
    parser.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (weights/*.pth, gps_gallery/*.csv)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        default=precision_default,
        choices=["auto", "fp32", "fp16", "bf16"],
        help=f"location encoder precision ({precision_default}); auto = bf16 where the device is "
        "fast at it, and the rasters' cached world grid is reused when the grid matches it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _add_grid(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extent",
        default="-180,-90,180,90",
        metavar="W,S,E,N",
        help="degrees (default: the world); write --extent=-10,35,30,60 when W is negative",
    )
    parser.add_argument("--cell", type=float, default=0.25, metavar="DEG", help="cell size in degrees (0.25)")
    parser.add_argument(
        "--tile-rows",
        type=int,
        default=None,
        metavar="N",
        help="raster rows encoded and written at a time (default: about 65,536 cells a tile)",
    )


def add_location_commands(subparsers) -> None:
    """Add ``embed``, ``embedmap`` and ``similar`` to an argparse subparsers object."""
    embed = subparsers.add_parser(
        "embed",
        help="GeoCLIP location embeddings (512-d, unit length) for the points of a vector file or CSV",
        description="Location features for every point of a vector layer (any OGR format, any CRS: reprojected "
        "to EPSG:4326) or a CSV with lat/lon columns.",
    )
    embed.add_argument("source", metavar="POINTS", help="a point layer (GeoPackage, shapefile, GeoJSON...) or a CSV")
    embed.add_argument("--layer", metavar="NAME", help="layer of a multi-layer file (default: the first)")
    embed.add_argument("--lat-column", metavar="NAME", help="latitude column (default: lat or latitude, any case)")
    embed.add_argument("--lon-column", metavar="NAME", help="longitude column (default: lon, lng, long or longitude)")
    embed.add_argument("--id-field", metavar="NAME", help="field whose values become the ids (default: feature ids)")
    embed.add_argument(
        "--out",
        metavar="FILE.gpkg",
        help="GeoPackage copy of the points with the vector as JSON text in field 'embedding'",
    )
    embed.add_argument("--npz", metavar="FILE.npz", help="NumPy arrays: ids, lat, lon, embeddings (N, 512) float32")
    embed.add_argument("--parquet", metavar="FILE.parquet", help="Parquet table (needs pyarrow)")
    embed.add_argument(
        "--pca",
        type=int,
        default=0,
        metavar="N",
        help="also the first N principal components (fitted on these points) as fields pc1..pcN",
    )
    _add_common(embed, "fp32")

    embedmap = subparsers.add_parser(
        "embedmap",
        help="a GeoTIFF of the location encoder over an extent: principal components as RGB, or bands",
        description="Streams the grid by row tiles, so memory stays bounded for any size; a stopped run leaves "
        "no file.",
    )
    embedmap.add_argument("out", metavar="OUT.tif")
    _add_grid(embedmap)
    embedmap.add_argument(
        "--bands",
        choices=["rgb", "pca", "all"],
        default="rgb",
        help="rgb: first 3 principal components as Byte RGB (default); pca: the first "
        "--components as Float32; all: the 512 feature values as Float32",
    )
    embedmap.add_argument("--components", type=int, default=3, metavar="N", help="principal components for --bands pca")
    embedmap.add_argument("--sample", type=int, default=20_000, metavar="N", help="cells the PCA is fitted on (20000)")
    embedmap.add_argument("--seed", type=int, default=0, help="seed of the PCA sample (0)")
    _add_common(embedmap, "auto")

    similar = subparsers.add_parser(
        "similar",
        help="places GeoCLIP's location encoder finds most like a point; CSV on stdout",
        description="The gallery places (100K MP-16 photo positions) whose location features are most like the "
        "point's, best first, leaving out those within --exclude-km of it.",
    )
    similar.add_argument("lat", type=float, metavar="LAT")
    similar.add_argument("lon", type=float, metavar="LON")
    similar.add_argument("--top", type=int, default=20, metavar="N", help="places to list (20)")
    similar.add_argument(
        "--exclude-km",
        type=float,
        default=25.0,
        metavar="KM",
        help="leave out gallery places this close to the point (25)",
    )
    similar.add_argument(
        "--spread-km",
        type=float,
        default=0.0,
        metavar="KM",
        help="skip a place this close to a better one already listed (0: off)",
    )
    similar.add_argument("--raster", metavar="OUT.tif", help="also a Float32 GeoTIFF of cosine similarity per cell")
    similar.add_argument("--places", metavar="OUT.gpkg", help="also the places as a GeoPackage point layer")
    _add_grid(similar)
    _add_common(similar, "auto")


class _StderrProgress:
    """One progress bar per stage on stderr, from the engine's :class:`..progress.Progress` events."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stage = None
        self.bar = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        if event.stage != self.stage:
            self.close()
            from tqdm import tqdm

            self.stage = event.stage
            self.bar = tqdm(total=event.total, desc=event.stage, file=sys.stderr, dynamic_ncols=True, leave=False)
        self.bar.total = event.total
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = self.stage = None


def _say(args, message: str) -> None:
    if not args.quiet:
        print(f"geoclip-qgis: {message}", file=sys.stderr)


def _model(args):
    from ..location.location_features import load_location_model

    model = load_location_model(args.heads, args.device)
    _say(args, f"{model.label} on {model.device}")
    return model


def _run_embed(args, progress) -> int:
    from ..location.point_embeddings import embed_file, refuse_foreign_outputs

    refuse_foreign_outputs(args.out, args.npz, args.parquet)  # before the model loads
    outcome = embed_file(
        _model(args),
        args.source,
        args.out,
        args.npz,
        args.parquet,
        args.pca,
        args.layer,
        args.lat_column,
        args.lon_column,
        args.id_field,
        progress,
    )
    progress.close()
    for note in outcome.notes:
        _say(args, note)
    _say(args, f"{outcome.points} point(s) embedded")
    for path in outcome.written:
        print(path)
    return 0


def _run_embedmap(args, progress) -> int:
    from ..location.embedding_maps import check_grid, embedding_map
    from ..output.geotiff_files import refuse_foreign_raster

    check_grid(args.extent, args.cell, args.tile_rows)  # before the model loads
    refuse_foreign_raster(args.out)
    made = embedding_map(
        _model(args),
        args.out,
        args.extent,
        args.cell,
        args.bands,
        args.components,
        args.sample,
        args.seed,
        args.precision,
        args.tile_rows,
        progress,
    )
    progress.close()
    _say(args, f"{made.grid.cols} x {made.grid.rows} cells, {made.band_count} band(s), features {made.features}")
    print(made.path)
    return 0


def _run_similar(args, progress) -> int:
    from ..location.similar_places import (
        PLACE_COLUMNS,
        PLACES_LAYER,
        PLACES_LEGACY_FIELDS,
        similar_places,
        write_places_gpkg,
    )
    from ..output.gpkg_files import refuse_foreign_output

    if args.places:  # before the model loads: another program's file is never replaced
        refuse_foreign_output(args.places, PLACES_LAYER, PLACES_LEGACY_FIELDS)
    if args.raster:
        from ..location.embedding_maps import check_grid
        from ..output.geotiff_files import refuse_foreign_raster

        check_grid(args.extent, args.cell, args.tile_rows)
        refuse_foreign_raster(args.raster)
    found = similar_places(
        _model(args),
        args.lat,
        args.lon,
        args.raster,
        args.extent,
        args.cell,
        args.top,
        args.exclude_km,
        args.spread_km,
        args.precision,
        args.tile_rows,
        progress,
    )
    progress.close()
    if args.places:
        write_places_gpkg(found, args.places)
        _say(args, f"places written to {args.places}")
    if found.raster is not None:
        peak_lat, peak_lon, peak = found.peak
        _say(
            args,
            f"similarity raster written to {found.raster} (most similar cell {peak:.4f} at "
            f"{peak_lat:.4f}, {peak_lon:.4f})",
        )
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(PLACE_COLUMNS)
    writer.writerows(csv_row(row) for row in found.csv_rows())  # the product's one CSV formula rule
    return 0


def run_location_command(args) -> int:
    """Run ``embed``, ``embedmap`` or ``similar`` from parsed arguments; the exit status."""
    runners = {"embed": _run_embed, "embedmap": _run_embedmap, "similar": _run_similar}
    progress = _StderrProgress(not args.quiet)
    try:
        return runners[args.command](args, progress)
    except GeoCLIPError as exc:
        progress.close()
        print(f"geoclip-qgis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("geoclip-qgis: interrupted; no partial output was left", file=sys.stderr)
        return 130
