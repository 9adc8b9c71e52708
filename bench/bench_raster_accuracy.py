"""How close raster cells and "how likely here?" discs are to fine integrals of the same density.

For each query — the real location encoder's feature of a known place ("oracle": what a perfect photo
of it gives) and real camera photos through a small generated CLIP (random weights: arbitrary, diffuse
answers) — the rasters are made, then, for the most probable world cells holding 99 % of the
probability (at most ``--cells`` of them), the density is integrated again on a fine grid
(``--fine`` x ``--fine`` sub-cells per 0.25 deg cell). Side by side in one run:

- ``centre``: one sample at each cell's centre, what the world raster held before integration;
- ``raster``: the world raster's value (integrated; under a local window, the sum of its cells).

Reported: percentiles over those cells of value / fine integral (both shares of the same total), the
probability-weighted mean |log ratio|, and where each raster's most probable cell is. The local
raster is checked the same way, each 0.01 deg cell against 5 x 5 sub-cells; ``likely`` within 1 and
25 km against a 20 x 40 quadrature of the disc. Real GeoCLIP heads from the ``geoclip`` wheel.

    .venv/bin/python bench/bench_raster_accuracy.py [--precision bf16] [--json bench/results/raster_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PLACES = {"Kauai": (22.07, -159.50), "McMurdo": (-77.846, 166.676)}
PHOTOS = ["DSCN0010.jpg", "DSCN0021.jpg", "DSCN0029.jpg", "DSCN0040.jpg"]


def fine_world(evaluator, query, cells: np.ndarray, fine: int) -> np.ndarray:
    """Unnormalised log mass of each world cell (flat index) integrated on fine x fine sub-cells."""
    from geoclip_qgis.backend.model.cell_integrals import _logsumexp

    block = evaluator.block
    out = np.empty(len(cells))
    for start in range(0, len(cells), 16):
        part = cells[start : start + 16]
        points, log_area = block.sub_points(part, fine)
        values = evaluator.logits_at(points, query).reshape(len(part), fine, fine) + log_area[:, :, None]
        out[start : start + len(part)] = _logsumexp(values.reshape(len(part), -1), 1)
    return out


def ratios(values: np.ndarray, reference: np.ndarray) -> dict:
    ratio = values / reference
    weights = reference / reference.sum()
    return {
        "cells": int(len(ratio)),
        "p1": float(np.percentile(ratio, 1)),
        "p5": float(np.percentile(ratio, 5)),
        "median": float(np.median(ratio)),
        "p95": float(np.percentile(ratio, 95)),
        "p99": float(np.percentile(ratio, 99)),
        "worst": float(ratio[np.argmax(np.abs(np.log(ratio)))]),
        "weighted_abs_log": float(np.sum(weights * np.abs(np.log(ratio)))),
    }


def fine_disc(evaluator, query, log_total: float, lat: float, lon: float, radius_km: float) -> float:
    """The density over a disc on a fine lat/lon grid over its bounding box (cells of radius/60)."""
    from geoclip_qgis.backend.geo import EARTH_RADIUS_KM, haversine_km

    step = math.degrees(radius_km / 60 / EARTH_RADIUS_KM)
    n = 121
    lat_edges = lat + (np.arange(n + 1) - n / 2) * step
    lon_step = step / max(math.cos(math.radians(lat)), 1e-6)
    lats = (lat_edges[:-1] + lat_edges[1:]) / 2
    lons = lon + (np.arange(n) + 0.5 - n / 2) * lon_step
    grid = np.stack(np.meshgrid(lats, lons, indexing="ij"), axis=-1).reshape(-1, 2)
    inside = haversine_km(lat, lon, grid[:, 0], grid[:, 1]) <= radius_km
    rows = (
        EARTH_RADIUS_KM**2
        * math.radians(lon_step)
        * np.abs(np.sin(np.radians(lat_edges[1:])) - np.sin(np.radians(lat_edges[:-1])))
    )
    area = np.repeat(rows, n)
    logits = evaluator.logits_at(grid[inside], query)
    return float(np.sum(np.exp(logits - log_total) * area[inside]))


def judge(engine, label: str, feature: np.ndarray, budgets: list[int], args) -> list[dict]:
    from geoclip_qgis.backend.earth.likelihood import LikelihoodMap
    from geoclip_qgis.backend.geo import haversine_km
    from geoclip_qgis.backend.model.cell_integrals import CellBlock, _logsumexp
    from geoclip_qgis.backend.results import PhotoResult

    result = PhotoResult(label, feature=feature)
    evaluator = engine.surface(0.25, 0.01)
    query = torch.from_numpy(feature).to(engine.device)
    centre_logit = evaluator._logits(evaluator.world.features, query)
    centre = np.exp(
        centre_logit + evaluator.block.log_areas() - _logsumexp(centre_logit + evaluator.block.log_areas(), 0)
    )
    rows = []
    reference_log = None
    for budget in budgets:
        evaluator.budget = budget
        start = time.perf_counter()
        made = engine.rasters(result)
        seconds = time.perf_counter() - start
        world = made.world.values.reshape(-1).astype(np.float64)
        if reference_log is None:  # the cells are those of the first budget's raster; the reference is fixed
            order = np.argsort(-world, kind="stable")
            held = np.cumsum(world[order])
            cells = order[: min(int(np.searchsorted(held, 0.99)) + 1, args.cells)]
            reference_log = fine_world(evaluator, query, cells, args.fine)
        reference = np.exp(reference_log - made.log_total)
        peak_centre = np.unravel_index(np.argmax(centre), made.world.values.shape)
        peak_local = made.local[0].peak()

        # local raster: each 0.01 deg cell holding 99 % of its probability against 5 x 5 sub-cells
        local = made.local[0]
        values = local.values.reshape(-1).astype(np.float64)
        order = np.argsort(-values, kind="stable")
        keep = order[: min(int(np.searchsorted(np.cumsum(values[order]) / values.sum(), 0.99)) + 1, 2500)]
        r, c = np.divmod(keep, local.cols)
        block = CellBlock(local.north - r * local.cell, local.west + c * local.cell, local.cell)
        points, log_area = block.sub_points(np.arange(len(keep)), 5)
        fine_local = evaluator.logits_at(points, query).reshape(len(keep), 5, 5) + log_area[:, :, None]
        fine_local = np.exp(_logsumexp(fine_local.reshape(len(keep), -1), 1) - made.log_total)

        density = engine.density(result, made)
        likely = LikelihoodMap(made.world, made.local, (1.0, 25.0), density)
        discs = []
        second = made.world.centre(*np.unravel_index(np.argsort(-world)[1], made.world.values.shape))
        for name, (lat, lon) in {"local peak": peak_local[:2], "world cell 2": second}.items():
            found = likely.at(lat, lon)
            for radius in (1.0, 25.0):
                fine = fine_disc(evaluator, query, made.log_total, lat, lon, radius)
                discs.append({"at": name, "radius_km": radius, "likely": found.masses[radius], "fine": fine})
        rows.append(
            {
                "query": label,
                "budget": budget,
                "seconds": seconds,
                "points": made.points,
                "share_checked": float(reference.sum()),
                "centre": ratios(centre[cells], reference),
                "raster": ratios(world[cells], reference),
                "local": ratios(values[keep], fine_local),
                "centre_peak_km_from_local_peak": float(
                    haversine_km(*peak_local[:2], *made.world.centre(*peak_centre))
                ),
                "raster_peak_km_from_local_peak": float(haversine_km(*peak_local[:2], *made.world.peak()[:2])),
                "discs": discs,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--cells", type=int, default=150, help="world cells checked per query at most")
    parser.add_argument("--fine", type=int, default=50, help="sub-cells per side of the fine integral")
    parser.add_argument("--budgets", default="16384,65536,1048576", help="model evaluations per raster set")
    parser.add_argument("--photos", type=int, default=len(PHOTOS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from clip_factory import make_clip_checkpoint

    from geoclip_qgis.backend import build_engine

    clip = ROOT / ".cache" / "bench" / "tiny-clip"
    if not clip.exists():
        make_clip_checkpoint(clip)
    engine = build_engine(clip=clip, device="cpu", precision=args.precision, batch_size=4, embedding_cache=False)
    engine.load()
    queries = []
    with torch.inference_mode():
        for name, (lat, lon) in PLACES.items():
            feature = engine.heads.location_features(torch.tensor([[lat, lon]], dtype=torch.float32))[0]
            queries.append((f"oracle {name}", feature.numpy()))
    photos = [ROOT / "tests" / "data" / "gps" / name for name in PHOTOS[: args.photos]]
    for photo, answer in zip(photos, engine.predict(photos)):
        queries.append((f"photo {photo.name}", answer.feature))
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = [row for label, feature in queries for row in judge(engine, label, feature, budgets, args)]

    print(f"precision {engine.precision}; fine integral: {args.fine}x{args.fine} sub-cells per 0.25 deg cell")
    print(
        "query              | budget  | share | centre p1/median/p99   | raster p1/median/p99 "
        "| local p1/p99 | peak km centre/raster | s"
    )
    for row in rows:
        c, r, loc = row["centre"], row["raster"], row["local"]
        peaks = f"{row['centre_peak_km_from_local_peak']:.0f}/{row['raster_peak_km_from_local_peak']:.0f}"
        print(
            f"{row['query']:<18} | {row['budget']:>7} | {row['share_checked']:.3f} "
            f"| {c['p1']:.2f}/{c['median']:.2f}/{c['p99']:.2f} | {r['p1']:.3f}/{r['median']:.3f}/{r['p99']:.3f} "
            f"| {loc['p1']:.3f}/{loc['p99']:.3f} | {peaks} | {row['seconds']:.1f}"
        )
    for row in rows:
        for disc in row["discs"]:
            print(
                f"{row['query']:<18} {row['budget']:>7} likely {disc['radius_km']:g} km at {disc['at']}: "
                f"{disc['likely']:.4g} vs fine {disc['fine']:.4g} ({disc['likely'] / disc['fine']:.3f})"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"precision": engine.precision, "fine": args.fine, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
