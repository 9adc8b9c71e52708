"""Memory of folder runs: peak RSS for 200 and for 2,000 generated photos, same command.

A folder run streams: the walk is lazy, results go to the GeoPackage batch by batch, nothing per
photo is kept. The peak should not grow with the folder. Uses the small generated CLIP (the pipeline's
memory, not the model's, is under test) and the real GeoCLIP heads.

    .venv/bin/python bench/bench_memory.py [--photos 200 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "bench"))
from bench_predict import sample_photos  # noqa: E402
from clip_factory import make_clip_checkpoint  # noqa: E402

RUN = """
import resource, sys
from geoclip_qgis.backend.cli.main import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
sys.exit(code)
"""


def make_photos(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= count:
        return
    sources = [Image.open(p).convert("RGB") for p in sample_photos()[:6]]
    for n in range(count):
        image = sources[n % len(sources)]
        shift = n // len(sources)
        box = (shift % 97, shift % 89, image.width - shift % 83, image.height - shift % 79)
        image.crop(box).resize((640, 480)).save(folder / f"photo_{n:05d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    clip = args.cache / "tiny-clip"
    if not (clip / "model.safetensors").is_file():
        make_clip_checkpoint(clip)
    print(f"{'photos':>8} {'peak RSS MB':>12} {'seconds':>9} {'s/photo':>8}")
    peaks = {}
    for count in args.photos:
        folder = args.cache / f"photos-{count}"
        make_photos(folder, count)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    RUN,
                    "predict",
                    str(folder),
                    "--clip",
                    str(clip),
                    "--out",
                    str(Path(tmp) / "out.gpkg"),
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.perf_counter() - start
        peaks[count] = float(out.stderr.strip().splitlines()[-1])
        print(f"{count:>8} {peaks[count]:>12.0f} {seconds:>9.1f} {seconds / count:>8.3f}")
    first, last = args.photos[0], args.photos[-1]
    print(f"peak at {last} / peak at {first} = {peaks[last] / peaks[first]:.2f}x for {last / first:.0f}x the photos")


if __name__ == "__main__":
    main()
