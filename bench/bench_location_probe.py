"""Do GeoCLIP's location embeddings carry geography? A linear probe for country and state/province.

Random land points (seeded, uniform by area on the sphere, kept where they fall inside a Natural Earth
admin-1 polygon of QGIS's world_map.gpkg, which leaves Antarctica out) are labelled with their country
(layer ``countries``) and state/province (layer ``states_provinces``); labels are read from the polygons
burnt into a 0.05 deg grid with GDAL. Classes with fewer than --min-points points are dropped. One
stratified 70/30 split (seeded) serves every feature set; a multinomial logistic regression (scikit-learn,
standardised inputs, C=1) is fitted on the training points and scored on the held-out ones, for:

  (a) GeoCLIP location features (512, unit length, float32, the release heads),
  (b) raw (lat, lon) (2),
  (c) random Fourier features of the 3-D unit vector (512 = cos and sin of 256 seeded Gaussian
      frequencies); their scale is chosen per task on a validation part of the training points among
      sigma 1, 2, 4, 8, 16 and a mix of 1, 4, 16 (a third of the frequencies each, like GeoCLIP's hierarchy).

With ``--where photos`` the points are instead drawn (seeded) from GeoCLIP's 100K GPS gallery, the
positions of MP-16 photos: where people take photos, and where the model was trained.

    .venv/bin/python bench/bench_location_probe.py [--where land|photos] [--points 30000] [--min-points 20]

Needs scikit-learn (``pip install "scikit-learn<1.7"`` keeps NumPy 1.x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean

import numpy as np  # noqa: E402

WORLD_MAP = Path("/usr/share/qgis/resources/data/world_map.gpkg")
LABEL_CELL = 0.05
RFF_FREQUENCIES = 256
RFF_CANDIDATES = {"1": (1.0,), "2": (2.0,), "4": (4.0,), "8": (8.0,), "16": (16.0,), "mix 1/4/16": (1.0, 4.0, 16.0)}
TASKS = (("country", "countries"), ("state", "states_provinces"))


def label_grid(world_map: Path, layer: str) -> np.ndarray:
    """(rows, cols) int32 of 1 + the polygon's feature id at each 0.05 deg cell (0: none)."""
    from osgeo import gdal, osr

    cols, rows = round(360 / LABEL_CELL), round(180 / LABEL_CELL)
    grid = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, gdal.GDT_Int32)
    grid.SetGeoTransform((-180.0, LABEL_CELL, 0.0, 90.0, 0.0, -LABEL_CELL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    grid.SetProjection(srs.ExportToWkt())
    vectors = gdal.OpenEx(str(world_map), gdal.OF_VECTOR)
    if vectors is None:
        sys.exit(f"cannot open {world_map} (QGIS ships it as resources/data/world_map.gpkg)")
    done = gdal.Rasterize(
        grid,
        vectors,
        SQLStatement=f"SELECT fid + 1 AS label, geom FROM {layer}",
        SQLDialect="SQLITE",
        attribute="label",
    )
    if done is None:
        sys.exit(f"cannot rasterise layer {layer} of {world_map}: {gdal.GetLastErrorMsg()}")
    return grid.ReadAsArray()


def names(world_map: Path, layer: str, field: str) -> dict[int, str]:
    from osgeo import ogr

    dataset = ogr.Open(str(world_map))
    return {feature.GetFID() + 1: feature.GetField(field) for feature in dataset.GetLayerByName(layer)}


def sample_land(grids: list[np.ndarray], count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points uniform by area, kept where every grid has a label; (lat, lon) and labels."""
    rows, cols = grids[0].shape
    points, labels = [], []
    while sum(len(p) for p in points) < count:
        lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, 4 * count)))
        lon = rng.uniform(-180.0, 180.0, 4 * count)
        row = np.minimum(((90.0 - lat) / LABEL_CELL).astype(int), rows - 1)
        col = np.minimum(((lon + 180.0) / LABEL_CELL).astype(int), cols - 1)
        found = np.stack([grid[row, col] for grid in grids], axis=1)
        inside = (found > 0).all(axis=1)
        points.append(np.stack([lat[inside], lon[inside]], axis=1))
        labels.append(found[inside])
    return np.concatenate(points)[:count], np.concatenate(labels)[:count]


def sample_photos(
    grids: list[np.ndarray], gallery: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` gallery positions (seeded) where every grid has a label; (lat, lon) and labels."""
    rows, cols = grids[0].shape
    lat, lon = gallery[:, 0].astype(np.float64), gallery[:, 1].astype(np.float64)
    row = np.clip(((90.0 - lat) / LABEL_CELL).astype(int), 0, rows - 1)
    col = np.clip(((lon + 180.0) / LABEL_CELL).astype(int), 0, cols - 1)
    found = np.stack([grid[row, col] for grid in grids], axis=1)
    inside = np.flatnonzero((found > 0).all(axis=1))
    picked = np.sort(rng.choice(inside, min(count, inside.size), replace=False))
    return np.stack([lat[picked], lon[picked]], axis=1), found[picked]


def fourier_features(lat_lon: np.ndarray, sigmas: tuple[float, ...], seed: int) -> np.ndarray:
    """cos/sin of seeded Gaussian projections of the 3-D unit vector: 2 x 256 = 512 values."""
    lat, lon = np.radians(lat_lon[:, 0]), np.radians(lat_lon[:, 1])
    unit = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)
    rng = np.random.default_rng(seed)
    shares = np.array_split(np.arange(RFF_FREQUENCIES), len(sigmas))
    frequencies = np.concatenate([rng.normal(0.0, sigma, (len(share), 3)) for sigma, share in zip(sigmas, shares)])
    phase = 2 * np.pi * unit @ frequencies.T
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)


def probe(train_x, train_y, test_x, test_y, seed: int) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised inputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    classifier = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    classifier.fit(scaler.transform(train_x), train_y)
    return float(np.mean(classifier.predict(scaler.transform(test_x)) == test_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--where",
        choices=["land", "photos"],
        default="land",
        help="land: uniform by area on land (default); photos: positions of the GPS gallery",
    )
    parser.add_argument("--points", type=int, default=30_000, help="points sampled (30000)")
    parser.add_argument("--min-points", type=int, default=20, help="smallest class kept, in points (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", metavar="DIR", help="GeoCLIP heads folder (default: as the engine finds them)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--world-map", type=Path, default=WORLD_MAP)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="default: bench/results/location_probe.json (location_probe_photos.json for photos)",
    )
    args = parser.parse_args()

    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    from geoclip_qgis.backend.location.location_features import load_location_model

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    grids = [label_grid(args.world_map, layer) for _, layer in TASKS]
    model = load_location_model(args.heads, args.device)
    if args.where == "land":
        lat_lon, labels = sample_land(grids, args.points, rng)
    else:
        from geoclip_qgis.backend.model.gallery import read_gallery_csv

        lat_lon, labels = sample_photos(grids, read_gallery_csv(model.files.gallery_csv), args.points, rng)
    print(f"{len(lat_lon)} points ({args.where}) labelled in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    start = time.perf_counter()
    geoclip = model.encode(lat_lon)
    encode_s = time.perf_counter() - start
    print(f"GeoCLIP features in {encode_s:.0f} s on {model.device}", file=sys.stderr)

    results = {
        "GeoCLIP location features (512)": {},
        "raw lat/lon (2)": {},
        "random Fourier features (512)": {},
        "majority class": {},
    }
    tasks = {}
    for column, (task, layer) in enumerate(TASKS):
        label = labels[:, column]
        classes, counts = np.unique(label, return_counts=True)
        kept = np.isin(label, classes[counts >= args.min_points])
        x_index = np.flatnonzero(kept)
        train, test = train_test_split(x_index, test_size=0.3, stratify=label[kept], random_state=args.seed)
        y_train, y_test = label[train], label[test]
        tasks[task] = {
            "layer": layer,
            "classes": int((counts >= args.min_points).sum()),
            "points": int(kept.sum()),
            "train": len(train),
            "test": len(test),
            "classes_dropped": int((counts < args.min_points).sum()),
        }

        # The Fourier scale is chosen on a validation part of the training points only.
        fit, valid = train_test_split(train, test_size=0.25, stratify=y_train, random_state=args.seed)
        scores = {
            name: probe(
                fourier_features(lat_lon[fit], sigmas, args.seed),
                label[fit],
                fourier_features(lat_lon[valid], sigmas, args.seed),
                label[valid],
                args.seed,
            )
            for name, sigmas in RFF_CANDIDATES.items()
        }
        best = max(scores, key=scores.get)
        tasks[task]["rff_sigma"] = best
        tasks[task]["rff_validation"] = scores

        rff = fourier_features(lat_lon, RFF_CANDIDATES[best], args.seed)
        results["GeoCLIP location features (512)"][task] = probe(
            geoclip[train], y_train, geoclip[test], y_test, args.seed
        )
        results["raw lat/lon (2)"][task] = probe(lat_lon[train], y_train, lat_lon[test], y_test, args.seed)
        results["random Fourier features (512)"][task] = probe(rff[train], y_train, rff[test], y_test, args.seed)
        majority = np.unique(y_train, return_counts=True)
        results["majority class"][task] = float(np.mean(y_test == majority[0][np.argmax(majority[1])]))
        print(f"{task}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr)

    command = "python bench/bench_location_probe.py " + " ".join(sys.argv[1:])
    print(f"\nLinear probe, held-out accuracy, points: {args.where} ({command.strip()}):\n")
    print(f"{'features':<34}{'country':>10}{'state/province':>17}")
    for name, row in results.items():
        print(f"{name:<34}{100 * row['country']:>9.1f}%{100 * row['state']:>16.1f}%")
    for task, info in tasks.items():
        print(
            f"{task}: {info['classes']} classes ({info['classes_dropped']} with fewer than {args.min_points} points "
            f"dropped), {info['train']} training / {info['test']} held-out points; Fourier scale {info['rff_sigma']}"
        )

    import sklearn
    import torch

    report = {
        "command": command.strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "where": args.where,
        "points": len(lat_lon),
        "min_points": args.min_points,
        "seed": args.seed,
        "model": model.label,
        "accuracy": results,
        "tasks": tasks,
        "encode_s": encode_s,
        "total_s": time.perf_counter() - started,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    if args.json is None:
        suffix = "" if args.where == "land" else "_photos"
        args.json = ROOT / "bench" / "results" / f"location_probe{suffix}.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
