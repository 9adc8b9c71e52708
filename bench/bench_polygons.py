"""Points of the 100K GPS gallery inside polygons: the old rule (OGR ``polygon.Contains(point)`` one
point at a time after the whole geometry's box test) against backend/photos/polygons.py, side by side.

  (a) one 100,000-vertex polygon the size of a country (a circle of radius 4 deg latitude over central
      Europe with a coastline-like multi-scale radial noise) against the 100K gallery;
  (b) the 240 countries of QGIS's world map (resources/data/world_map.gpkg, layer countries) against the
      100K gallery, as ``zones_of`` does for Processing's "Probability by region".

For (a) the old rule runs on every point in the polygon's box (about 3 min on a 2-core machine; --sample N
times N of them instead). For (b) a full old run takes about half an hour, so its old time is an ESTIMATE,
labelled as such: the points in each country's box are counted (what the old code looked at) and the old
per-point test is timed on --per-country random ones of them; estimate = sum over countries of points in
box x mean time per point (``--full-old`` runs it all). On every timed point both rules must agree
exactly. New times: median of --repeat runs.

    .venv/bin/python bench/bench_polygons.py [--sample N] [--per-country 20] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean

import numpy as np  # noqa: E402

WORLD_MAP = Path("/usr/share/qgis/resources/data/world_map.gpkg")


def gallery() -> np.ndarray:
    spec = importlib.util.find_spec("geoclip")
    if spec is None:
        sys.exit("the geoclip release is not installed; run `make setup`")
    csv = Path(list(spec.submodule_search_locations)[0]) / "model" / "gps_gallery" / "coordinates_100K.csv"
    return np.loadtxt(csv, delimiter=",", skiprows=1)  # (N, 2) lat, lon


def country_sized_polygon(vertices: int = 100_000, seed: int = 0) -> str:
    """A star-shaped (so simple and valid) polygon over central Europe: radius 4 deg of latitude times
    1 + multi-scale noise (amplitude falling as 1/frequency, like a coastline), 6.2 deg of longitude."""
    rng = np.random.default_rng(seed)
    angle = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    frequencies = np.unique(np.geomspace(2, vertices / 4, 400).astype(int))
    noise = np.zeros(vertices)
    for f in frequencies:
        noise += rng.normal(0, 1) / f * np.sin(f * angle + rng.uniform(0, 2 * np.pi))
    radius = 1.0 + 0.35 * noise / np.abs(noise).max()
    lon = 10.0 + 6.2 * radius * np.cos(angle)
    lat = 50.0 + 4.0 * radius * np.sin(angle)
    ring = np.concatenate([np.stack([lon, lat], axis=1), [[lon[0], lat[0]]]])
    return "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in ring) + "))"


def old_in_box(geometry, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The points the old code tested: in the whole geometry's box (edges included)."""
    west, east, south, north = geometry.GetEnvelope()
    return np.flatnonzero((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north))


def old_contains(geometry, lat: np.ndarray, lon: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, float]:
    """The old rule on the given points: (inside, seconds)."""
    from osgeo import ogr

    point = ogr.Geometry(ogr.wkbPoint)
    inside = np.zeros(indices.size, dtype=bool)
    start = time.perf_counter()
    for k, index in enumerate(indices):
        point.SetPoint_2D(0, float(lon[index]), float(lat[index]))
        inside[k] = geometry.Contains(point)
    return inside, time.perf_counter() - start


def old_estimate(wkts, lat, lon, per_polygon: int, full: bool, rng, members) -> tuple[float, int, int, int]:
    """(old seconds, points in boxes, points timed, disagreements with the new members on those)."""
    from osgeo import ogr

    seconds, in_boxes, timed, wrong = 0.0, 0, 0, 0
    for wkt, got in zip(wkts, members):
        geometry = ogr.CreateGeometryFromWkt(wkt)
        candidates = old_in_box(geometry, lat, lon)
        if candidates.size == 0:
            continue
        chosen = candidates if full or candidates.size <= per_polygon else rng.choice(candidates, per_polygon, False)
        inside, took = old_contains(geometry, lat, lon, chosen)
        seconds += took / chosen.size * candidates.size
        in_boxes, timed = in_boxes + candidates.size, timed + chosen.size
        wrong += int((inside != np.isin(chosen, got)).sum())
    return seconds, in_boxes, timed, wrong


def new_time(coordinates, wkts, repeat: int):
    from geoclip_qgis.backend.earth.regions import zones_of

    times, zones = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        zones = zones_of(coordinates, wkts)
        times.append(time.perf_counter() - start)
    return statistics.median(times), zones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=0, help="(a): old rule timed on this many points (0: all)")
    parser.add_argument("--per-country", type=int, default=20, help="(b): old rule timed on this many per country")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--full-old", action="store_true", help="run the old rule on every point (hours)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from osgeo import gdal, ogr

    rng = np.random.default_rng(0)
    coordinates = gallery()
    lat, lon = coordinates[:, 0], coordinates[:, 1]
    print(
        f"GDAL {gdal.__version__}, GEOS {ogr.GetGEOSVersionMajor()}.{ogr.GetGEOSVersionMinor()}."
        f"{ogr.GetGEOSVersionMicro()}, {os.cpu_count()} CPUs, {len(coordinates)} gallery points",
        flush=True,
    )
    rows, figures = [], {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node()}

    # (a) one 100,000-vertex country-sized polygon
    wkt = country_sized_polygon()
    new_s, zones = new_time(coordinates, [wkt], args.repeat)
    every = args.full_old or args.sample <= 0
    old_s, in_box, timed, wrong = old_estimate([wkt], lat, lon, args.sample, every, rng, zones.members)
    label = (
        f"measured on all {in_box} points in its box"
        if every
        else f"ESTIMATED from {timed} of {in_box} points in its box"
    )
    rows.append(("(a) 100,000-vertex polygon x 100K gallery", old_s, label, new_s, wrong))
    figures["star"] = {"old_s": old_s, "old_measured": every, "points_in_box": in_box, "timed": timed}
    figures["star"].update({"new_s": new_s, "inside": int(zones.members[0].size), "disagreements": wrong})

    # (b) QGIS's world map
    if WORLD_MAP.is_file():
        source = ogr.Open(str(WORLD_MAP))  # kept: its layer dies with it
        layer = source.GetLayerByName("countries")
        wkts = [feature.GetGeometryRef().ExportToWkt() for feature in layer]
        new_s, zones = new_time(coordinates, wkts, args.repeat)
        old_s, in_box, timed, wrong = old_estimate(wkts, lat, lon, args.per_country, args.full_old, rng, zones.members)
        label = (
            f"measured on all {in_box} points in the boxes"
            if args.full_old
            else f"ESTIMATED from {timed} of {in_box} points in the boxes ({args.per_country} per country)"
        )
        rows.append((f"(b) {len(wkts)} countries of QGIS's world map x 100K", old_s, label, new_s, wrong))
        placed = int(np.unique(np.concatenate(zones.members)).size)
        figures["world_map"] = {"countries": len(wkts), "old_s": old_s, "old_measured": args.full_old}
        figures["world_map"].update({"points_in_boxes": in_box, "timed": timed, "new_s": new_s})
        figures["world_map"].update({"points_in_a_country": placed, "disagreements": wrong})
    else:
        print(f"(b) skipped: no {WORLD_MAP} (QGIS ships it)")

    print(f"\n{'case':<48} {'old (s)':>12} {'new (s)':>9} {'old/new':>9}  old rule")
    for name, old_s, label, new_s, wrong in rows:
        print(f"{name:<48} {old_s:>12.1f} {new_s:>9.3f} {old_s / new_s:>8.0f}x  {label}")
        if wrong:
            print(f"    !! {wrong} timed points where old and new disagree")
    print(f"new: median of {args.repeat} runs; on every timed point old and new agree unless flagged above")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
