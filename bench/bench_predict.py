"""Speed and memory of photo prediction, side by side in one run, on the full-size architecture.

Compares, with a full-size CLIP ViT-L/14 (random weights: the same arithmetic as the real one) and the
real GeoCLIP heads:
  - the official release's ``GeoCLIP.predict`` per photo,
  - this engine's warm cost per photo at batch 1 and batch 16,
  - the bare CLIP vision tower in the same precision at the same batch sizes (the engine's own plain
    torch tower, and transformers' ``CLIPVisionModelWithProjection`` for reference: same arithmetic),
  - cold start: a fresh process to the first answer, with a warm disk cache, and its peak memory
    (repeated; median and range).

    .venv/bin/python bench/bench_predict.py [--release-photos 3] [--photos 32] [--cold-runs 3] \
        [--json bench/results/predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from clip_factory import VIT_L_14, make_clip_checkpoint  # noqa: E402


def sample_photos() -> list[Path]:
    import importlib.util

    skimage = Path(list(importlib.util.find_spec("skimage").submodule_search_locations)[0]) / "data"
    photos = [
        skimage / n
        for n in (
            "astronaut.png",
            "coffee.png",
            "chelsea.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "retina.jpg",
            "hubble_deep_field.jpg",
        )
    ]
    photos += sorted((ROOT / "tests" / "data" / "gps").glob("*.jpg"))
    return [p for p in photos if p.is_file()]


def full_size_clip(cache: Path) -> Path:
    folder = cache / "clip-vit-large-patch14-random"
    if not (folder / "model.safetensors").is_file():
        print(f"generating a full-size ViT-L/14 checkpoint with random weights in {folder} ...", file=sys.stderr)
        make_clip_checkpoint(folder, size=VIT_L_14, patch_gain=1.0)
    return folder


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_release(clip: Path, photos: list[Path]) -> float:
    stub = types.ModuleType("geoclip.train")
    stub.train = stub.eval_images = None
    sys.modules.setdefault("geoclip.train", stub)
    from geoclip import GeoCLIP

    model = GeoCLIP(from_pretrained=True, clip_path=str(clip)).eval()
    model.predict(str(photos[0]), top_k=5)  # warm-up
    start = time.perf_counter()
    for photo in photos:
        model.predict(str(photo), top_k=5)
    per_photo = (time.perf_counter() - start) / len(photos)
    del model
    return per_photo


def bench_engine(engine, photos: list[Path], batch_size: int) -> float:
    engine.batch_size = batch_size
    list(engine.predict_iter(photos[:batch_size], top_k=5))  # warm-up at this batch size
    start = time.perf_counter()
    results = list(engine.predict_iter(photos, top_k=5))
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return elapsed / len(photos)


@torch.inference_mode()
def bench_bare_tower(engine, photos: list[Path], batch_size: int, vision=None) -> float:
    """The vision tower alone on already-preprocessed pixels: the floor for any pipeline."""
    import numpy as np

    from geoclip_qgis.backend.photos.loader import open_photo

    pixels = torch.from_numpy(np.stack([engine.preprocess(open_photo(p).image) for p in photos]))
    vision = vision or engine._vision
    vision(pixels[:batch_size].to(engine.dtype))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(photos), batch_size):
        _ = vision(pixels[i : i + batch_size].to(engine.dtype))
    return (time.perf_counter() - start) / len(photos)


def transformers_tower(clip: Path, dtype: torch.dtype):
    """transformers' own CLIPVisionModelWithProjection, called the engine's way (pixels -> embeddings)."""
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = CLIPVisionModelWithProjection.from_pretrained(str(clip), dtype=dtype).eval()
    return lambda pixels: model(pixel_values=pixels).image_embeds


def bench_cold_start(clip: Path, photo: Path) -> tuple[float, float]:
    """Fresh process to first answer (disk cache warm); returns seconds and peak RSS in MB. The peak is
    the process's own high-water mark (VmHWM): Linux carries ru_maxrss over from the parent through the
    fork and exec of a subprocess, which would report this benchmark's own memory."""
    code = (
        "import resource, sys, time\nstart = time.perf_counter()\n"
        "from geoclip_qgis.backend import build_engine\n"
        f"r = build_engine(clip={str(clip)!r}, embedding_cache=False).predict([{str(photo)!r}], top_k=5)[0]\n"
        "assert r.ok, r.error\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(time.perf_counter() - start, peak)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    _inner, peak_mb = map(float, out.stdout.split())
    return wall, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=32, help="photos per engine/tower measurement")
    parser.add_argument("--release-photos", type=int, default=3, help="photos for the release (~14 s each)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes for the cold start")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from geoclip_qgis.backend import build_engine

    clip = full_size_clip(args.cache)
    base = sample_photos()
    photos = [base[i % len(base)] for i in range(args.photos)]

    engine = build_engine(clip=clip, embedding_cache=False)  # measure encoding, not the cache
    print(
        f"device {engine.device}, precision {engine.precision}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}",
        file=sys.stderr,
    )
    load_start = time.perf_counter()
    engine.load()
    print(f"engine load (gallery cache warm or built): {time.perf_counter() - load_start:.1f} s", file=sys.stderr)

    figures = {"device": str(engine.device), "precision": engine.precision, "photos": len(photos)}
    reference = transformers_tower(clip, engine.dtype)
    for batch in (1, 16):
        figures[f"engine_b{batch}_s"] = bench_engine(engine, photos, batch)
        figures[f"tower_b{batch}_s"] = bench_bare_tower(engine, photos, batch)
        figures[f"hf_tower_b{batch}_s"] = bench_bare_tower(engine, photos, batch, reference)
        print(
            f"batch {batch:>2}: engine {figures[f'engine_b{batch}_s']:.3f} s/photo, bare tower "
            f"{figures[f'tower_b{batch}_s']:.3f} s/photo, transformers' tower {figures[f'hf_tower_b{batch}_s']:.3f}",
            file=sys.stderr,
        )
    del engine, reference

    colds = [bench_cold_start(clip, base[0]) for _ in range(args.cold_runs)]
    for seconds, peak in colds:
        print(f"cold start to first answer: {seconds:.2f} s, peak RSS {peak:.0f} MB", file=sys.stderr)
    figures["cold_start_runs_s"] = [c[0] for c in colds]
    figures["cold_peak_rss_runs_mb"] = [c[1] for c in colds]
    figures["cold_start_s"] = statistics.median(figures["cold_start_runs_s"])
    figures["cold_peak_rss_mb"] = max(figures["cold_peak_rss_runs_mb"])

    figures["release_s"] = bench_release(clip, [base[i % len(base)] for i in range(args.release_photos)])

    print()
    print(f"{'':34}{'s/photo':>10}")
    print(f"{'official release predict()':34}{figures['release_s']:>10.3f}")
    for batch in (1, 16):
        print(f"{f'engine, warm, batch {batch}':34}{figures[f'engine_b{batch}_s']:>10.3f}")
        print(f"{f'bare vision tower, batch {batch}':34}{figures[f'tower_b{batch}_s']:>10.3f}")
        print(f"{f'  transformers tower, batch {batch}':34}{figures[f'hf_tower_b{batch}_s']:>10.3f}")
    print()
    for batch in (1, 16):
        figures[f"engine_over_tower_b{batch}"] = figures[f"engine_b{batch}_s"] / figures[f"tower_b{batch}_s"]
        figures[f"release_over_engine_b{batch}"] = figures["release_s"] / figures[f"engine_b{batch}_s"]
        print(
            f"batch {batch:>2}: engine / bare tower = {figures[f'engine_over_tower_b{batch}']:.2f}x   "
            f"release / engine = {figures[f'release_over_engine_b{batch}']:.1f}x faster"
        )
    runs = figures["cold_start_runs_s"]
    print(
        f"cold start (fresh process, warm disk cache) to first answer: {figures['cold_start_s']:.2f} s "
        f"(median of {len(runs)}, {min(runs):.2f} - {max(runs):.2f}); "
        f"peak memory, image-only work: {figures['cold_peak_rss_mb']:.0f} MB"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
