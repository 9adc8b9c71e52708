"""Confidence rasters against the photo's own encoding, side by side in one run.

For each photo: the engine's warm cost to answer it (batch 1), then the world (0.25 deg) and local
(0.01 deg) rasters for it with warm caches. Full-size ViT-L/14 architecture (random weights), real heads.

    .venv/bin/python bench/bench_rasters.py [--photos 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_predict import full_size_clip, sample_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from geoclip_qgis.backend import build_engine

    engine = build_engine(clip=full_size_clip(args.cache), embedding_cache=False, batch_size=1).load()
    start = time.perf_counter()
    engine.surface(0.25, 0.01)
    print(
        f"world grid features ready in {time.perf_counter() - start:.1f} s (computed once, then cached)",
        file=sys.stderr,
    )
    photos = sample_photos()[: args.photos]
    warm = engine.predict(photos[:1], top_k=5)[0]
    engine.rasters(warm)  # warm-up

    encode, rasters = [], []
    for photo in photos:
        start = time.perf_counter()
        result = engine.predict([photo], top_k=5)[0]
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine.rasters(result)
        rasters.append(time.perf_counter() - start)
    figures = {
        "precision": engine.precision,
        "photos": len(photos),
        "encode_s": sum(encode) / len(encode),
        "rasters_s": sum(rasters) / len(rasters),
    }
    figures["rasters_over_encode"] = figures["rasters_s"] / figures["encode_s"]
    print(f"answer one photo (warm, batch 1): {figures['encode_s']:.3f} s")
    print(f"world 0.25 deg + local 0.01 deg rasters for it: {figures['rasters_s']:.3f} s")
    print(f"rasters / encoding = {figures['rasters_over_encode']:.2f}x (target: at most 2x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
