"""What the engine's decoding changes against the official release's, measured: the three differences of
the README's "Parity with the official release", above all (c), decoding large photos at reduced scale.

(c) The release decodes every photo in full and lets CLIP's preprocessing (bicubic resize of the short side
to 224, centre crop) do all the shrinking. The engine may decode large photos smaller first: JPEG draft
mode (libjpeg's DCT scaling, 1/2 to 1/8) and, for any format, an integer box shrink (``Image.reduce``),
both stopping at a short side of at least 448 (or, as a gentler variant, 896). This measures, photo by
photo, what each way of decoding changes against the full decode, everything else (EXIF orientation,
colour conversion, the exact CLIP resize, crop and normalisation) being the same:

  - pixels after preprocessing: max |difference| in normalised units and in grey levels (0-255);
  - CLIP embedding: 1 - cosine to the full decode's;
  - GeoCLIP's answer over the 100K gallery: top-1 place the same, top-5 overlap, |difference| of the
    probability of the full decode's top-1 place (absolute and relative), the largest relative difference
    over its top-5 places (what tests/test_release_parity.py bounds), and the total variation distance
    0.5 * sum|p - q| between the two 100K-place distributions;
  - time to decode and preprocess, one thread.

Two yardsticks come with it, measured the same way: fp32 noise (the same pixels encoded in another batch)
and re-saving the full decode as a JPEG at quality 95 (a copy nobody would call another photo).

(a) and (b), each on the pictures it concerns, both sides decoded in full: the release's own pixels
(``Preprocessing.RELEASE``, which tests/test_photos.py checks against ``Image.open(p).convert("RGB")``)
against the engine's, for the set's JPEGs with EXIF orientation 3, 6 or 8 (a), and for the source pictures
with real transparency, the semi-transparent wallpapers of mate-backgrounds (b).

The model: the full-size CLIP ViT-L/14 architecture with seeded random weights (the real weights cannot be
downloaded here) and the real trained GeoCLIP heads and gallery of the ``geoclip`` wheel, fp32 on the
CPU. With transformers' default initialisation a random ViT-L/14 is nearly blind to the picture (its class
token averages the patches: two different photos' embeddings have a median cosine of 0.91, and most photos
get the same top-1 place), which would make any agreement figure meaningless. The vision tower is
therefore initialised with ``initializer_factor`` 4 (``--init-factor``), which sharpens attention: two
different photos' embeddings then have a median cosine near 0.58, about what the real CLIP gives unrelated
photos, and the answers spread over the gallery. A random network is still not the trained one: read the
figures as "how far does each decoding move a discriminating ViT-L/14, next to the yardsticks", not as
the real model's accuracy.

The photos (about 300 by default; built once into ``--cache``, outside the repository's tracked files):
  - Debian's wallpaper packages, downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``
    (never installed): plasma-workspace-wallpapers, gnome-backgrounds, mate-backgrounds, ukui-wallpapers,
    lomiri-wallpapers: nature and city photographs plus graphic designs, JPEG, PNG and WebP, 1280-5640 px;
  - the camera JPEGs of ../shared/samples (phones and cameras, 1488-4032 px), also kept as they are;
  - scikit-image's sample photos (upscaled, with sensor-like noise added).
  Each photo is a random crop (40-100 % of the source's area, aspect 4:3, 3:2, 16:9, 1:1 or their portrait
  forms) resized with Lanczos to a long side of 1500-6000 px, with Gaussian noise of sigma 2 grey levels
  where it was enlarged by more than 1.3x, then saved as JPEG (quality 75, 85, 92 or 95; 4:2:0 or 4:4:4
  chroma; a fifth of them with EXIF orientation 3, 6 or 8 and the pixels stored turned accordingly), PNG
  (fast compression: the pixels are what is measured) or WebP (quality 90; PNG where libwebp cannot
  encode the picture). Sources with transparency are put on white first: transparency is (b), not (c).
  Each photo has its own seed (21, n): the same packages give the same photos.

    .venv/bin/python bench/bench_decode_parity.py [--photos 300] [--init-factor 4] [--cache .cache/bench] \
        [--json bench/results/decode_parity.json]

Embeddings are kept in the cache, so a rerun (or an interrupted one) encodes only what is missing. About
1,200 ViT-L/14 passes: about an hour on a 2-core CPU shared with other work.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GEOCLIP_CACHE_DIR", str(ROOT / ".cache" / "bench" / "cache"))  # keep the user cache clean
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from geoclip_qgis.backend.model.backbone import OPENAI_CLIP_STD  # noqa: E402
from geoclip_qgis.backend.photos import loader as photos  # noqa: E402

DEBIAN_PACKAGES = (
    "plasma-workspace-wallpapers",
    "gnome-backgrounds",
    "mate-backgrounds",
    "ukui-wallpapers",
    "lomiri-wallpapers",
)
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16)
SEED = 21
SIDE = photos.DECODE_MIN_SIDE  # 448: the short side reduced decodes stop at

# name -> (floor of the reduced decode (None: in full), whether CLIP's resize gets the full-size geometry).
# "full" is the reference; the names are those of the embeddings kept in the cache.
VARIANTS = {
    "full": (None, False),
    "draft+reduce": (SIDE, False),  # the engine before this measurement: sizes rounded after the reduction
    "draft+reduce, floor 896": (2 * SIDE, False),  # gentler: the bicubic resize then shrinks 4x or more
    "draft+reduce, full-size geometry": (SIDE, True),  # the engine now
}


# ------------------------------------------------------------------------------------------ photos


def _run(command: list[str], cwd: Path) -> bool:
    try:
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  {' '.join(command)}: {exc}", file=sys.stderr)
        return False


def debian_wallpapers(cache: Path) -> tuple[list[Path], list[str]]:
    """Image files of Debian's wallpaper packages, downloaded and unpacked once (never installed)."""
    debs, tree = cache / "debs", cache / "debs" / "tree"
    debs.mkdir(parents=True, exist_ok=True)
    for package in DEBIAN_PACKAGES:
        if not list(debs.glob(f"{package}_*.deb")):
            print(f"downloading {package} ...", file=sys.stderr)
            _run(["apt-get", "download", package], debs)
    files = sorted(debs.glob("*.deb"))
    if files and not tree.is_dir():
        for deb in files:
            _run(["dpkg-deb", "-x", str(deb), str(tree)], debs)
    found = [p for p in sorted(tree.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    return found, [p.name for p in files]


def skimage_data() -> Path:
    import importlib.util

    return Path(list(importlib.util.find_spec("skimage").submodule_search_locations)[0]) / "data"


def source_images(cache: Path) -> tuple[list[tuple[str, Path]], list[Path], list[str]]:
    """(tag, path) of distinct source pictures, the camera JPEGs to keep as they are, the .deb files."""
    wallpapers, debs = debian_wallpapers(cache)
    camera = [p for p in sorted(SHARED_SAMPLES.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg")]
    candidates = [("wallpaper", p, 1000) for p in wallpapers]
    candidates += [("camera", p, 1200) for p in camera]
    candidates += [("skimage", p, 300) for p in sorted(skimage_data().glob("*")) if p.suffix in (".png", ".jpg")]
    seen, sources, originals = set(), [], []
    for tag, path, least in candidates:
        try:
            digest = hashlib.sha256(path.resolve().read_bytes()).hexdigest()
            if digest in seen:
                continue
            with Image.open(path) as image:
                if min(image.size) < least or image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                    continue
                image.load()  # a damaged sample is no source
        except Exception:  # the samples include broken files on purpose
            continue
        seen.add(digest)
        sources.append((tag, path))
        if tag == "camera":
            originals.append(path)
    return sources, originals, debs


def _flat(image: Image.Image) -> Image.Image:
    """RGB or L, transparency put on white (transparency is another difference than this one)."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


STORED_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def build_photo_set(folder: Path, count: int, cache: Path) -> tuple[list[Path], dict]:
    """The varied large photos (see the module's notes): made once, then reused."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "photos.json"
    if listing.is_file():
        saved = json.loads(listing.read_text())
        paths = [folder / name for name in saved["photos"]]
        if saved["count"] == count and all(p.is_file() for p in paths):
            return paths, saved["about"]
    sources, originals, debs = source_images(cache)
    if not sources:
        raise SystemExit("no source pictures found (apt-get download failed and no samples?)")
    order = [sources[i] for i in np.random.default_rng(SEED).permutation(len(sources))]
    paths = []
    for n, original in enumerate(originals[:count]):
        path = folder / f"{n:04d}-camera-original{original.suffix.lower()}"
        shutil.copyfile(original, path)
        paths.append(path)
    while len(paths) < count:
        n = len(paths)
        made = [p for p in folder.glob(f"{n:04d}-*") if not p.name.endswith(".partial")]
        if made:  # made by an earlier, interrupted run (each photo has its own seed)
            paths.append(made[0])
            continue
        rng = np.random.default_rng([SEED, n])
        tag, source = order[n % len(order)]
        with Image.open(source) as image:
            image.load()
            picture = _flat(image)
        aspect = float(rng.choice(ASPECTS))
        width, height = picture.size
        area = width * height * rng.uniform(0.4, 1.0)
        crop_w = min(width, int(round((area * aspect) ** 0.5)))
        crop_h = min(height, int(round(crop_w / aspect)))
        crop_w = min(crop_w, int(round(crop_h * aspect)))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        picture = picture.crop((left, top, left + crop_w, top + crop_h))
        long_side = int(rng.integers(1500, 6001))
        scale = long_side / max(crop_w, crop_h)
        size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
        if scale > 1.3:  # enlarged: grain as a sensor would have it, not a smooth blow-up
            values = np.asarray(picture, dtype=np.float32)
            noisy = values + 2 * rng.standard_normal(values.shape, dtype=np.float32)
            picture = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        kind = rng.uniform()
        stem = f"{n:04d}-{tag}-{source.stem[:24]}-{size[0]}x{size[1]}"
        if kind < 0.6:
            quality = int(rng.choice([75, 85, 92, 95]))
            subsampling = 0 if rng.uniform() < 0.25 else 2
            exif = Image.Exif()
            orientation = int(rng.choice([3, 6, 8])) if rng.uniform() < 0.2 else 1
            exif[0x0112] = orientation
            if orientation != 1:
                picture = picture.transpose(STORED_TURN[orientation])
            path = folder / f"{stem}-q{quality}-o{orientation}.jpg"
            picture.save(
                path.with_name(path.name + ".partial"), "JPEG", quality=quality, subsampling=subsampling, exif=exif
            )
        else:
            path = folder / f"{stem}-q90.webp"
            if kind >= 0.85:
                try:
                    picture.save(path.with_name(path.name + ".partial"), "WEBP", quality=90, method=0)
                except ValueError:  # libwebp's first partition overflows on some large pictures: PNG then
                    path.with_name(path.name + ".partial").unlink(missing_ok=True)
                    kind = 0.6
            if kind < 0.85:
                path = folder / f"{stem}.png"
                picture.save(path.with_name(path.name + ".partial"), "PNG", compress_level=1)  # pixels count, not size
        os.replace(path.with_name(path.name + ".partial"), path)
        paths.append(path)
        if len(paths) % 25 == 0:
            print(f"  made {len(paths)}/{count} photos", file=sys.stderr)
    about = {
        "sources": len(sources),
        "by_source": {t: sum(1 for s, _ in sources if s == t) for t in ("wallpaper", "camera", "skimage")},
        "debian_packages": debs,
        "camera_originals": len(originals[:count]),
    }
    listing.write_text(json.dumps({"count": count, "photos": [p.name for p in paths], "about": about}, indent=1))
    return paths, about


# ----------------------------------------------------------------------------------------- decoding


def decode(path: Path, min_side: int | None, geometry: bool = True) -> Image.Image:
    """The engine's own loader (upright by EXIF orientation, RGB the engine's way) decoding down to no
    less than ``min_side`` on the short side (JPEG draft mode, then an integer shrink; None: in full);
    without ``geometry`` the picture forgets its full-size geometry, as before this measurement."""
    with Image.open(path, formats=photos._open_formats()) as image:
        picture = photos._decode(image, path.name, min_side=min_side).image
    if not geometry:
        picture.info.pop(photos.FULL_GEOMETRY, None)
    return picture


def resaved_q95(image: Image.Image) -> Image.Image:
    """The yardstick: the same picture written as a JPEG at quality 95 and read back."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    buffer.seek(0)
    with Image.open(buffer) as again:
        return again.convert("RGB")


def grey_levels(difference: np.ndarray) -> float:
    """Largest |difference| of normalised pixels (3, H, W) in 0-255 grey levels."""
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float64)[:, None, None]
    return float(np.max(np.abs(difference.astype(np.float64)) * std * 255.0))


# -------------------------------------------------------------------------------------------- model


def random_vit_l14(cache: Path, factor: float) -> Path:
    """The full-size ViT-L/14 layout with seeded random weights, vision tower initialised with ``factor``."""
    from clip_factory import VIT_L_14, make_clip_checkpoint

    folder = cache / f"clip-vit-large-patch14-random-init{factor:g}"
    if not (folder / "model.safetensors").is_file():
        print(
            f"generating a full-size ViT-L/14 checkpoint (random, init factor {factor:g}) in {folder} ...",
            file=sys.stderr,
        )
        size = dict(vision=dict(VIT_L_14["vision"], initializer_factor=factor), text=VIT_L_14["text"])
        make_clip_checkpoint(folder, size=size, patch_gain=1.0, with_text=False)
    return folder


class Embeddings:
    """CLIP embeddings by (photo, variant), kept on disk so reruns encode only what is missing."""

    def __init__(self, path: Path):
        self.path = path
        self.table: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as saved:
                self.table = {key: saved[key] for key in saved.files}

    def save(self) -> None:
        tmp = self.path.with_suffix(".partial.npz")
        np.savez(tmp, **self.table)
        os.replace(tmp, self.path)


def answer(engine, embeddings: np.ndarray) -> torch.Tensor:
    """(B, 768) CLIP embeddings -> (B, 100K) GeoCLIP probabilities over the gallery, fp32."""
    with torch.inference_mode():
        features = engine.heads.image_features(torch.from_numpy(embeddings).float())
        return engine.heads.logits(features, engine.gallery.features).softmax(dim=-1)


def compare(p_ref: torch.Tensor, p: torch.Tensor, e_ref: np.ndarray, e: np.ndarray) -> dict:
    top_ref, top = torch.topk(p_ref, 5).indices, torch.topk(p, 5).indices
    best = int(top_ref[0])
    ref5, got5 = p_ref[top_ref].double(), p[top_ref].double()
    cosine = float(np.dot(e_ref, e) / (np.linalg.norm(e_ref) * np.linalg.norm(e)))
    return {
        "top1_same": bool(best == int(top[0])),
        "top5_overlap": len(set(top_ref.tolist()) & set(top.tolist())) / 5,
        "dp_top1": abs(float(p[best]) - float(p_ref[best])),
        "dp_top1_rel": abs(float(p[best]) - float(p_ref[best])) / float(p_ref[best]),
        "top5_rel_max": float(((got5 - ref5).abs() / ref5).max()),
        "tv": 0.5 * float((p.double() - p_ref.double()).abs().sum()),
        "one_minus_cos": 1.0 - cosine,
    }


# ------------------------------------------------------------------------------------------ summary


def translucent_sources(work: Path) -> list[Path]:
    """The source pictures with real transparency (some alpha below 255), distinct by content."""
    candidates = sorted((work / "debs" / "tree").rglob("*.png")) + sorted(skimage_data().glob("*.png"))
    seen, found = set(), []
    for path in candidates:
        digest = hashlib.sha256(path.resolve().read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        with Image.open(path) as image:
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                if image.convert("RGBA").getextrema()[3][0] < 255:
                    found.append(path)
    return found


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {"photos": 0}
    out = {"photos": len(rows), "top1_agreement_pct": 100.0 * sum(r["top1_same"] for r in rows) / len(rows)}
    out["top5_overlap_mean"] = statistics.fmean(r["top5_overlap"] for r in rows)
    for key in ("pixel_max", "grey_max", "dp_top1", "dp_top1_rel", "top5_rel_max", "tv", "one_minus_cos"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = {"median": statistics.median(values), "max": max(values)}
    return out


def fmt(value: float) -> str:
    return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e3) else f"{value:.3f}"


def table(summaries: dict[str, dict], against: str = "against the full decode") -> str:
    def spread(key: str, shown=fmt):
        return lambda s: f"{shown(s[key]['median'])} / {shown(s[key]['max'])}" if key in s else "0 (same pixels)"

    columns = [
        ("photos", lambda s: str(s["photos"])),
        ("top-1 same", lambda s: f"{s['top1_agreement_pct']:.1f} %"),
        ("top-5 overlap", lambda s: f"{100 * s['top5_overlap_mean']:.1f} %"),
        ("pixels max abs. Δ (median / max)", spread("pixel_max")),
        ("grey levels (median / max)", spread("grey_max", lambda v: f"{v:.1f}")),
        ("top-1 p, rel. Δ (median / max)", spread("dp_top1_rel")),
        ("top-5 p, largest rel. Δ (median / max)", spread("top5_rel_max")),
        ("TV distance (median / max)", spread("tv")),
    ]
    lines = [f"| {against} | " + " | ".join(name for name, _ in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, summary in summaries.items():
        if summary.get("photos"):
            lines.append(f"| {name} | " + " | ".join(cell(summary) for _, cell in columns) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--init-factor", type=float, default=4.0, help="vision tower initialisation (see above)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="measure only the first N photos of the set")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--variant", action="append", choices=[v for v in VARIANTS if v != "full"], help="only these (repeat)"
    )
    args = parser.parse_args()
    chosen = {name: VARIANTS[name] for name in ("full", *(args.variant or VARIANTS))}

    from geoclip_qgis.backend import build_engine

    work = args.cache / "decode-parity"
    paths, about = build_photo_set(work / "photos", args.photos, work)
    paths = paths[: args.limit] if args.limit else paths
    clip = random_vit_l14(args.cache, args.init_factor)
    engine = build_engine(
        clip=clip, device="cpu", precision="fp32", batch_size=args.batch, embedding_cache=False
    ).load()
    store = Embeddings(work / f"embeddings-{clip.name}.npz")
    preprocess = engine.preprocess

    compared = [*(v for v in chosen if v != "full"), "engine (this tree)", "re-saved JPEG q95", "fp32 noise"]
    rows: dict[str, list[dict]] = {name: [] for name in compared}
    seconds: dict[str, dict[str, list[float]]] = {name: {} for name in chosen}
    engine_is: dict[str, int] = {}
    ref_answers, ref_embeddings = [], []
    start = time.perf_counter()
    for first in range(0, len(paths), args.batch):
        batch = paths[first : first + args.batch]
        pixels: dict[tuple[str, str], np.ndarray] = {}
        for path in batch:
            with Image.open(path) as image:
                kind = image.format
            for name, (min_side, geometry) in chosen.items():
                began = time.perf_counter()
                image = decode(path, min_side, geometry)
                pixels[path.name, name] = preprocess(image)
                seconds[name].setdefault(kind, []).append(time.perf_counter() - began)
                if name == "full":
                    pixels[path.name, "re-saved JPEG q95"] = preprocess(resaved_q95(image))
            own = preprocess(photos.open_photo(path).image)
            same = [name for name in chosen if np.array_equal(own, pixels[path.name, name])]
            engine_is[same[0] if same else "none of them"] = engine_is.get(same[0] if same else "none of them", 0) + 1
            pixels[path.name, "engine (this tree)"] = own
        # Encode what is not in the store, once per distinct picture: pixels equal to the full decode's use
        # its embedding, and variants with equal pixels share one.
        groups: dict[tuple[str, bytes], list[str]] = {}
        for (name, variant), array in pixels.items():
            key = f"{name}|{variant}"
            if key in store.table or (variant != "full" and np.array_equal(array, pixels[name, "full"])):
                continue
            groups.setdefault((name, hashlib.sha256(array.tobytes()).digest()), []).append(key)
        if groups:
            first_keys = [keys[0] for keys in groups.values()]
            arrays = [pixels[tuple(key.split("|", 1))] for key in first_keys]
            fresh = engine.clip_embeddings(np.stack(arrays)).cpu().numpy()
            for keys, vector in zip(groups.values(), fresh):
                store.table.update({key: vector for key in keys})
        noise = [path for path in batch if f"{path.name}|noise" not in store.table and first < 16]
        for path in noise:  # the same pixels alone in a batch of one: what fp32 arithmetic alone changes
            store.table[f"{path.name}|noise"] = engine.clip_embeddings(pixels[path.name, "full"][None]).cpu().numpy()[0]
        store.save()

        def embedding(name: str, variant: str) -> np.ndarray:
            key = f"{name}|{variant}"
            return store.table[key] if key in store.table else store.table[f"{name}|full"]

        for path in batch:
            e_ref = embedding(path.name, "full")
            variants = [v for v in rows if v != "fp32 noise" or f"{path.name}|noise" in store.table]
            vectors = np.stack([embedding(path.name, "noise" if v == "fp32 noise" else v) for v in variants])
            probabilities = answer(engine, np.concatenate([e_ref[None], vectors]))
            ref_answers.append(int(probabilities[0].argmax()))
            ref_embeddings.append(e_ref)
            for variant, p, e in zip(variants, probabilities[1:], vectors):
                row = compare(probabilities[0], p, e_ref, e)
                if variant != "fp32 noise":
                    difference = pixels[path.name, variant] - pixels[path.name, "full"]
                    row.update(pixel_max=float(np.abs(difference).max()), grey_max=grey_levels(difference))
                row["photo"] = path.name
                rows[variant].append(row)
        done = first + len(batch)
        print(f"  {done}/{len(paths)} photos, {time.perf_counter() - start:.0f} s", file=sys.stderr)

    # Differences (a) and (b), each on the photos it applies to, both sides decoded in full so that only
    # it differs: the engine's way (upright, transparency on white) against the release's own pixels.
    rotated = [path for path in paths if any(f"-o{n}." in path.name for n in (3, 6, 8))]
    transparent = translucent_sources(work)
    release_rows = {"(a) EXIF-rotated JPEGs": rotated, "(b) semi-transparent images": transparent}
    for label, group in release_rows.items():
        found = []
        for path in group:
            key = f"{path.parent.name}/{path.name}"
            engine_way = preprocess(decode(path, None))
            release_way = preprocess(photos.open_photo(path, preprocessing=photos.Preprocessing.RELEASE).image)
            todo = [(f"{key}|{v}", a) for v, a in (("full", engine_way), ("release", release_way))]
            todo = [(k, a) for k, a in todo if k not in store.table]
            if todo:
                fresh = engine.clip_embeddings(np.stack([a for _, a in todo])).cpu().numpy()
                store.table.update({k: vector for (k, _), vector in zip(todo, fresh)})
            e_engine, e_release = store.table[f"{key}|full"], store.table[f"{key}|release"]
            probabilities = answer(engine, np.stack([e_engine, e_release]))
            row = compare(probabilities[0], probabilities[1], e_engine, e_release)
            same_shape = engine_way.shape == release_way.shape
            difference = release_way - engine_way if same_shape else None
            if difference is not None:
                row.update(pixel_max=float(np.abs(difference).max()), grey_max=grey_levels(difference))
            row["photo"] = key
            found.append(row)
        store.save()
        rows[label] = found

    # How far apart different photos are, for scale: consecutive photos of the set.
    units = np.stack(ref_embeddings) / np.linalg.norm(np.stack(ref_embeddings), axis=1, keepdims=True)
    between_cos = [float(np.dot(units[i], units[i + 1])) for i in range(len(units) - 1)]
    between_tv = []
    for i in range(0, min(len(units), 64) - 1):
        p = answer(engine, np.stack([ref_embeddings[i], ref_embeddings[i + 1]]))
        between_tv.append(0.5 * float((p[0].double() - p[1].double()).abs().sum()))

    def kind_of(name: str) -> str:
        return "JPEG" if name.endswith(".jpg") else "PNG" if name.endswith(".png") else "WebP"

    summaries = {name: summarise(found) for name, found in rows.items()}
    by_format = {
        name: {k: summarise([r for r in found if kind_of(r["photo"]) == k]) for k in ("JPEG", "PNG", "WebP")}
        for name, found in rows.items()
        if name in chosen and name != "full"
    }
    timing = {
        name: {kind: 1000 * statistics.median(values) for kind, values in per_kind.items()}
        for name, per_kind in seconds.items()
    }
    worst = {
        name: sorted(found, key=lambda r: r["tv"], reverse=True)[:5]
        for name, found in rows.items()
        if name != "fp32 noise"
    }
    figures = {
        "model": f"full-size CLIP ViT-L/14 architecture, seeded random weights (vision initializer_factor "
        f"{args.init_factor:g}), real GeoCLIP heads and 100K gallery (geoclip wheel), fp32, CPU",
        "photos": len(paths),
        "photo_set": about,
        "decode_floor_side": SIDE,
        "engine_decodes_as": engine_is,
        "distinct_top1_places": len(set(ref_answers)),
        "between_photos": {
            "one_minus_cos_median": 1.0 - statistics.median(between_cos),
            "tv_median": statistics.median(between_tv),
        },
        "summary": summaries,
        "by_format": by_format,
        "decode_and_preprocess_ms_median": timing,
        "worst_by_tv": worst,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    print()
    print(f"{len(paths)} photos; the engine in this tree decodes as: {engine_is}")
    print(
        f"different photos, for scale: {len(set(ref_answers))} distinct top-1 places; median 1 - cos between "
        f"consecutive photos {figures['between_photos']['one_minus_cos_median']:.3f}, median TV "
        f"{figures['between_photos']['tv_median']:.3f}"
    )
    print()
    print(table({k: v for k, v in summaries.items() if k not in release_rows}))
    print()
    print(table({k: summaries[k] for k in release_rows}, "the release's pixels against the engine's (both in full)"))
    print()
    print(table({f"{name}, {k}": v for name, formats in by_format.items() for k, v in formats.items()}))
    print()
    print("decode + preprocess, ms per photo (median, one thread):")
    for name, per_kind in timing.items():
        print(f"  {name:14} " + ", ".join(f"{kind} {ms:.0f}" for kind, ms in sorted(per_kind.items())))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
