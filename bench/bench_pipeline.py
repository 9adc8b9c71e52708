"""Can the CPU side keep a fast encoder fed, and what does it cost beside the vision tower? On generated
12 MP camera JPEGs (4000x3000, EXIF, quality 90: scikit-image's sample photos upscaled, with noise):

  (a) preparing a photo (header and EXIF check, sha256, JPEG draft decode, CLIP preprocessing), one
      thread: photos/s; and the same with one worker per core, as threads and as processes;
  (b) the engine with the vision tower replaced by a near-zero-cost encoder, and the workers and a batch
      size a GPU gets (one worker per core, 64 photos): what the CPU side could feed a fast GPU (the
      gallery scoring, on the GPU there, runs on these cores here);
  (c) the engine with the full-size ViT-L/14 (random weights, the same arithmetic as the real one) and
      its default workers, against the bare tower on the same photos' pixels.

Prints (b) / (cores x (a)) (target >= 0.8) and (c) / bare tower (target <= 1.1) side by side, each
measurement repeated with its spread, and writes the figures as JSON.

    .venv/bin/python bench/bench_pipeline.py [--photos 128] [--gpu-batch 64] [--tower-photos 32] [--repeat 3] \
        [--json bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_predict import full_size_clip  # noqa: E402
from torch import nn  # noqa: E402

SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
CAMERA_SIZE = (4000, 3000)


def skimage_data() -> Path:
    import importlib.util

    return Path(list(importlib.util.find_spec("skimage").submodule_search_locations)[0]) / "data"


def camera_photos(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 12 MP JPEGs the way a camera writes them (made once, then reused)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        path = folder / f"IMG_{n:04d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        image = Image.open(skimage_data() / SAMPLES[n % len(SAMPLES)]).convert("RGB")
        if (n // len(SAMPLES)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image.resize(CAMERA_SIZE, Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)  # sensor noise: realistic file sizes
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112] = "GeoCLIP bench", "12 MP camera", 1  # make, model, orientation
        exif[0x0132] = "2024:05:01 12:00:00"
        exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal
        if n % 2:
            gps = exif.get_ifd(0x8825)
            gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.6), "E", (2.0, 17.0, 40.2)
        tmp = path.with_suffix(".partial")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=90, exif=exif)
        os.replace(tmp, path)
    return paths


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


# ---------------------------------------------------------------------------------------- (a)


def stage_breakdown(preprocess, photos: list[Path]) -> dict:
    """Milliseconds per photo of each step, one thread."""
    from geoclip_qgis.backend.photos.loader import open_photo, probe_photo
    from geoclip_qgis.backend.store.embedding_cache import photo_sha256

    steps = {"header and EXIF check": probe_photo, "sha256 of the file": photo_sha256}
    times = {}
    for name, step in steps.items():
        start = time.perf_counter()
        for photo in photos:
            step(photo)
        times[name] = (time.perf_counter() - start) / len(photos) * 1000
    start = time.perf_counter()
    images = [open_photo(p).image for p in photos]
    times["decode (JPEG draft mode)"] = (time.perf_counter() - start) / len(photos) * 1000
    start = time.perf_counter()
    for image in images:
        preprocess(image)
    times["CLIP preprocessing"] = (time.perf_counter() - start) / len(photos) * 1000
    return times


# C calls that run with the GIL released (Pillow's decoder, resampling and copies, reads, hashing).
GIL_FREE_CALLS = (
    "<method 'decode' of 'ImagingDecoder' objects>",
    "<method 'resize' of 'ImagingCore' objects>",
    "<method 'copy' of 'ImagingCore' objects>",
    "<method 'read' of '_io.BufferedReader' objects>",
    "<method 'readinto' of '_io.BufferedReader' objects>",
    "<method 'update' of '_hashlib.HASH' objects>",
)


def gil_held_share(preparer, photos: list[Path]) -> tuple[float, float]:
    """(ms per photo, share of the photo's time) that one preparing thread holds the GIL: its plain
    time less the time spent in C calls that release it (timed under cProfile, which costs C calls
    little). The Python between them is what threads preparing in parallel must take turns for."""
    import cProfile
    import pstats

    start = time.perf_counter()
    for photo in photos:
        preparer(photo, str(photo))
    plain = (time.perf_counter() - start) / len(photos)
    profile = cProfile.Profile()
    profile.enable()
    for photo in photos:
        preparer(photo, str(photo))
    profile.disable()
    released = sum(
        row[2] for (_file, _line, name), row in pstats.Stats(profile).stats.items() if name in GIL_FREE_CALLS
    )
    held = max(0.0, plain - released / len(photos))
    return held * 1000, held / plain


def prepare_rate(preparer, photos: list[Path], pool=None, workers: int = 1) -> float:
    labels = [str(p) for p in photos]
    if pool is None:
        start = time.perf_counter()
        outcomes = [preparer(p, label) for p, label in zip(photos, labels)]
    else:
        list(pool.map(preparer, photos[: 2 * workers], labels))  # workers started and warm
        start = time.perf_counter()
        outcomes = list(pool.map(preparer, photos, labels))
    elapsed = time.perf_counter() - start
    from geoclip_qgis.backend.photos.decoding import Prepared

    assert all(isinstance(o, Prepared) and o.pixels is not None for o in outcomes), outcomes[:3]
    return len(photos) / elapsed


# ---------------------------------------------------------------------------------------- (b)


class NearZeroEncoder(nn.Module):
    """Stands in for the vision tower at almost no cost: each photo's mean colour, projected to 768."""

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(3, 768, generator=torch.Generator().manual_seed(0)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mean(dim=(2, 3)) @ self.projection


def engine_rate(engine, photos: list[Path]) -> float:
    list(engine.predict_iter(photos[: min(engine.batch_size, 8)], top_k=5))  # warm-up
    start = time.perf_counter()
    results = list(engine.predict_iter(photos, top_k=5))
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return len(photos) / elapsed


# ---------------------------------------------------------------------------------------- (c)


@torch.inference_mode()
def bare_tower_rate(engine, pixels: torch.Tensor) -> float:
    vision, size = engine._vision, engine.batch_size
    vision(pixels[:size].to(engine.dtype))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), size):
        vision(pixels[i : i + size].to(engine.dtype))
    return len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=128, help="photos per (a)/(b) measurement")
    parser.add_argument("--gpu-batch", type=int, default=64, help="photos per batch in (b)")
    parser.add_argument("--tower-photos", type=int, default=32, help="photos per (c) measurement")
    parser.add_argument("--distinct", type=int, default=12, help="distinct generated photos (then repeated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from geoclip_qgis.backend import build_engine
    from geoclip_qgis.backend.model import backbone
    from geoclip_qgis.backend.photos.decoding import PhotoPreparer, choose_decode_workers, usable_cores

    clip = full_size_clip(args.cache)
    distinct = camera_photos(args.cache / "photos-12mp", args.distinct)
    photos = [distinct[i % len(distinct)] for i in range(args.photos)]
    cores = usable_cores()
    sizes = [len(p.read_bytes()) / 1e6 for p in distinct]  # read once: a warm disk cache for every run
    print(
        f"{cores} cores, {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
        f"{len(distinct)} photos {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}, {min(sizes):.1f}-{max(sizes):.1f} MB",
        file=sys.stderr,
    )
    preprocess = backbone.load_image_processor(clip)
    preparer = PhotoPreparer(preprocess)
    figures: dict = {"cores": cores, "photos": len(photos), "photo_size": list(CAMERA_SIZE)}
    figures["stage_ms"] = stage_breakdown(preprocess, distinct)
    held_ms, held_share = gil_held_share(preparer, distinct)
    figures["gil_held_ms_per_photo"], figures["gil_held_share"] = held_ms, held_share

    # (a) and (b), interleaved so that a burst of load elsewhere on the machine hits them alike.
    gpu_workers = choose_decode_workers("cuda")
    fast = build_engine(
        clip=clip, device="cpu", batch_size=args.gpu_batch, embedding_cache=False, decode_workers=gpu_workers
    )
    fast._vision = NearZeroEncoder()  # the tower a fast GPU would be, as far as the CPU side can tell
    fast.load()
    one, threads, processes, fed = [], [], [], []
    context = multiprocessing.get_context("spawn")
    with (
        ThreadPoolExecutor(cores) as thread_pool,
        ProcessPoolExecutor(cores, mp_context=context) as process_pool,
    ):
        for run in range(args.repeat):
            one.append(prepare_rate(preparer, photos))
            threads.append(prepare_rate(preparer, photos, thread_pool, cores))
            processes.append(prepare_rate(preparer, photos, process_pool, cores))
            fed.append(engine_rate(fast, photos))
            print(
                f"run {run + 1}: prepare 1 thread {one[-1]:.1f}/s, {cores} threads {threads[-1]:.1f}/s, "
                f"{cores} processes {processes[-1]:.1f}/s; engine with a near-zero encoder {fed[-1]:.1f}/s",
                file=sys.stderr,
            )
    del fast
    figures["a_prepare_1_thread"] = spread(one)
    figures["a_prepare_threads"] = spread(threads)
    figures["a_prepare_processes"] = spread(processes)
    figures["b_engine_near_zero_encoder"] = spread(fed)
    figures["b_decode_workers"] = gpu_workers
    feed_ratios = [b / (cores * a) for a, b in zip(one, fed)]
    figures["b_over_cores_a"] = spread(feed_ratios)

    # (c): the real tower's cost with the engine around it, and without.
    engine = build_engine(clip=clip, embedding_cache=False).load()
    from geoclip_qgis.backend.photos.loader import open_photo

    tower_photos = [distinct[i % len(distinct)] for i in range(args.tower_photos)]
    pixels = torch.from_numpy(np.stack([engine.preprocess(open_photo(p).image) for p in tower_photos]))
    figures["c_device"], figures["c_precision"] = str(engine.device), engine.precision
    figures["c_batch"], figures["c_decode_workers"] = engine.batch_size, engine.effective_decode_workers
    engine_runs, tower_runs = [], []
    for run in range(max(1, args.repeat - 1)):
        engine_runs.append(engine_rate(engine, tower_photos))
        tower_runs.append(bare_tower_rate(engine, pixels))
        print(
            f"run {run + 1}: engine with ViT-L/14 {engine_runs[-1]:.3f}/s, bare tower {tower_runs[-1]:.3f}/s",
            file=sys.stderr,
        )
    figures["c_engine"] = spread(engine_runs)
    figures["c_bare_tower"] = spread(tower_runs)
    cost_ratios = [t / e for e, t in zip(engine_runs, tower_runs)]  # time per photo, engine over tower
    figures["c_over_bare_tower"] = spread(cost_ratios)

    def row(name: str, key: str, unit: str = "/s") -> None:
        s = figures[key]
        print(f"{name:52}{s['median']:>9.2f}{unit}   {s['min']:.2f} - {s['max']:.2f}")

    print()
    print(f"{'':52}{'median':>11}   range over {args.repeat} runs")
    row("(a) prepare a photo, 1 thread", "a_prepare_1_thread")
    row(f"    prepare, {cores} threads", "a_prepare_threads")
    row(f"    prepare, {cores} processes", "a_prepare_processes")
    row(f"(b) engine, near-zero encoder, {gpu_workers} workers, batch {args.gpu_batch}", "b_engine_near_zero_encoder")
    row(f"(c) engine, ViT-L/14 {engine.precision}, {engine.effective_decode_workers} decode worker(s)", "c_engine")
    row(f"    bare ViT-L/14 {engine.precision}, same photos, batch {engine.batch_size}", "c_bare_tower")
    print()
    print("per photo, one thread: " + ", ".join(f"{k} {v:.1f} ms" for k, v in figures["stage_ms"].items()))
    print(
        f"GIL held while preparing a photo: {held_ms:.2f} ms, {held_share:.1%} of its time "
        f"(threads preparing in parallel top out near {1 / max(held_share, 1e-3):.0f}x one thread)"
    )
    b, c = figures["b_over_cores_a"], figures["c_over_bare_tower"]
    print(
        f"(b) / ({cores} cores x (a)) = {b['median']:.2f} ({b['min']:.2f} - {b['max']:.2f}), target >= 0.8    "
        f"(c) / bare tower (time per photo) = {c['median']:.3f}x ({c['min']:.3f} - {c['max']:.3f}), target <= 1.1"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
