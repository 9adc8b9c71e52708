"""Fine-tuning GeoCLIP's heads on the user's own geotagged photos, with the paper's training method.

Objective (paper, and the official release's training loop): for a batch of photos with known GPS,
the logits of each photo against [the batch's GPS + a queue of recent GPS coordinates] go into a
cross-entropy whose target is the photo's own GPS; the queue (default 4096 entries, as released) adds
negatives beyond the batch. CLIP stays frozen, so each photo's 768-d CLIP embedding is computed once
(and cached on disk) and only the image MLP, the location encoder (its random Fourier matrices stay
fixed) and the logit scale train: minutes on a CPU.

Validation: a seeded share of the photos is held out; the starting heads' top-1 answers over the
gallery are the baseline (epoch 0), and after every epoch the same answers give the accuracy at 25 km,
ties broken by the median error (:func:`better`), which drives early stopping. The best epoch's heads
are written, and the starting heads themselves when no epoch beats them (``best_epoch`` 0).

The output folder must be new, empty, or one this fine-tuning wrote (its ``manifest.json``, or the
``checkpoint.pt`` of an interrupted run and nothing foreign beside it), and never the heads being
tuned; links where its files go are refused (:func:`check_out_folder`). Files are written in a fresh
private folder inside it and renamed into place, so nothing is written through a link.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..earth.evaluation import THRESHOLDS_KM, accuracy_table, format_table, is_truth_csv, read_truth_csv
from ..errors import ForeignFileError, GeoCLIPError
from ..filelock import put_in_place, refuse_link, refuse_non_file
from ..geo import haversine_km
from ..model.engine import Engine
from ..model.gallery import encode_locations, read_gallery_csv
from ..model.heads import GeoCLIPHeads, save_heads
from ..progress import ProgressCallback, ShouldStop, Stage
from ..store.heads_files import WEIGHT_FILES
from ..store.weights import DEFAULT_GALLERY, parse_json, sha256_file

CHECKPOINT = "checkpoint.pt"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("base_heads_sha256", "validation")  # every manifest this module writes has them
OUR_FILES = (CHECKPOINT, MANIFEST, *(f"weights/{name}" for name in WEIGHT_FILES), f"gps_gallery/{DEFAULT_GALLERY}")
OUR_NAMES = frozenset({CHECKPOINT, MANIFEST, "weights", "gps_gallery"})


def _our_manifest(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
            return False
        manifest = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and all(key in manifest for key in MANIFEST_KEYS)


def check_out_folder(out_dir: str | Path, base_heads: str | Path | None = None) -> Path:
    """Refuse an output folder that is not fine-tuning's to write (see the module's notes); return it."""
    out = Path(out_dir)
    refuse_link(out, "the output folder")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ForeignFileError(f"{out} is a file, not a folder; name a new folder for the heads")
    if base_heads is not None and out.resolve() == Path(base_heads).resolve():
        raise GeoCLIPError(f"{out} holds the heads being fine-tuned; name a new folder for the new heads")
    names = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".partial"))}
    if names:
        resumable = (out / CHECKPOINT).is_file() and not (out / CHECKPOINT).is_symlink() and names <= OUR_NAMES
        if not (_our_manifest(out / MANIFEST) or resumable):
            raise ForeignFileError(
                f"{out} holds files that fine-tuning did not write ({', '.join(sorted(names)[:3])}...); "
                "GeoCLIP leaves them as they are: name a new or empty folder"
            )
    for folder in ("weights", "gps_gallery"):
        refuse_link(out / folder)
        if (out / folder).exists() and not (out / folder).is_dir():
            raise ForeignFileError(f"{out / folder} is not a folder; name a new or empty folder")
    for name in OUR_FILES:
        refuse_non_file(out / name)
    return out


def _install(staging: Path, out_dir: Path, names) -> None:
    """Rename files written under ``staging`` to the same names under ``out_dir``."""
    for name in names:
        target = out_dir / name
        refuse_link(target.parent)
        target.parent.mkdir(exist_ok=True)
        refuse_non_file(target)
        put_in_place(staging / name, target)


class GPSQueue:
    """A ring buffer of recent GPS coordinates, used as extra negatives.

    Same pointer arithmetic as the release's ``dequeue_and_enqueue``: a batch is written at the
    pointer and wraps around the end; a batch at least as large as the queue replaces it with its last
    ``size`` rows and resets the pointer. Unlike the release, whose queue starts as random near-(0, 0)
    coordinates, only entries written so far are handed out as negatives.
    """

    def __init__(self, size: int = 4096):
        if size < 1:
            raise GeoCLIPError("the GPS queue needs at least one entry")
        self.size = size
        self.buffer = torch.zeros(size, 2)
        self.pointer = 0
        self.filled = 0

    def push(self, gps: torch.Tensor) -> None:
        gps = gps.detach().to(self.buffer.device, self.buffer.dtype)
        count = gps.shape[0]
        if count >= self.size:
            self.buffer.copy_(gps[-self.size :])
            self.pointer, self.filled = 0, self.size
            return
        end = self.pointer + count
        if end <= self.size:
            self.buffer[self.pointer : end] = gps
        else:
            first = self.size - self.pointer
            self.buffer[self.pointer :] = gps[:first]
            self.buffer[: end - self.size] = gps[first:]
        self.pointer = end % self.size
        self.filled = min(self.size, self.filled + count)

    def negatives(self) -> torch.Tensor:
        """The coordinates written so far (all of them once the queue has wrapped)."""
        return self.buffer[: self.filled] if self.filled < self.size else self.buffer

    def to(self, device) -> GPSQueue:
        self.buffer = self.buffer.to(device)
        return self


@dataclass
class Sample:
    photo: str
    lat: float
    lon: float
    embedding: np.ndarray  # (768,) frozen CLIP embedding


@dataclass
class FinetuneSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    queue_size: int = 4096
    val_fraction: float = 0.2
    patience: int = 4
    extend_gallery: bool = False
    val_candidates: int | None = None  # rank validation photos over this many gallery places (None: all)
    seed: int = 0


@dataclass
class Collected:
    samples: list[Sample] = field(default_factory=list)
    without_gps: int = 0
    failed: dict = field(default_factory=dict)  # photo -> reason

    def line(self) -> str:
        return f"{len(self.samples)} photos with a position, {self.without_gps} without, {len(self.failed)} unreadable"


def collect_samples(
    engine: Engine,
    source: str | Path,
    images: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> Collected:
    """Photos with known positions and their CLIP embeddings: a CSV of photo,lat,lon, or photos
    (files or folders) with EXIF GPS (photos without it are counted and left out)."""
    from ..photos.walk import expand_paths

    collected = Collected()
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if len(sources) == 1 and is_truth_csv(sources[0]):
        truths = {t.photo: (t.lat, t.lon) for t in read_truth_csv(sources[0], images)}
        photos = list(truths)
    else:
        truths, photos = None, list(expand_paths(sources))
    stage = Stage(progress, "Reading photos (CLIP embeddings are cached for next time)", len(photos), "photos")
    for index, (photo, embedding, metadata, error) in enumerate(engine.embed_iter(photos), 1):
        if error:
            collected.failed[photo] = error
        else:
            position = (
                truths.get(photo)
                if truths
                else ((metadata.latitude, metadata.longitude) if metadata and metadata.has_gps else None)
            )
            if position is None:
                collected.without_gps += 1
            else:
                collected.samples.append(Sample(photo, position[0], position[1], embedding))
        stage.update(index)
        if should_stop and should_stop():
            break
    return collected


def _split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    held_out = max(1, int(round(count * fraction))) if count > 1 else 0
    return order[held_out:], order[:held_out]


def _trainable(heads: GeoCLIPHeads) -> list[nn.Parameter]:
    heads.requires_grad_(True)
    for capsule in heads.location_encoder.capsules:
        capsule.fourier.b.requires_grad_(False)  # fixed random features, as in the paper
    return [p for p in heads.parameters() if p.requires_grad]


@torch.no_grad()
def validate(heads: GeoCLIPHeads, embeddings: torch.Tensor, truth: np.ndarray, candidates: torch.Tensor) -> dict:
    """Top-1 over ``candidates`` for held-out embeddings -> the paper's accuracy table."""
    heads.eval()
    locations = encode_locations(heads, candidates)
    answers = []
    for start in range(0, embeddings.shape[0], 1024):
        logits = heads.logits(heads.image_features(embeddings[start : start + 1024]), locations)
        answers.append(candidates[logits.argmax(dim=-1)].cpu().numpy())
    answers = np.concatenate(answers) if answers else np.zeros((0, 2))
    errors = haversine_km(truth[:, 0], truth[:, 1], answers[:, 0], answers[:, 1]) if len(answers) else []
    return accuracy_table(list(map(float, errors)))


def better(table: dict, best: dict) -> bool:
    """Whether a validation table beats the best so far: more photos within 25 km, or as many and a
    smaller median error. The median always moves, so a run where every epoch scores 0 % within 25 km
    still ranks them (and the starting heads) instead of keeping whichever came first."""
    if table["acc_25km"] != best["acc_25km"]:
        return table["acc_25km"] > best["acc_25km"]
    return table["median_km"] < best["median_km"]


def finetune(
    engine: Engine,
    samples: list[Sample],
    out_dir: str | Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    resume: bool = False,
) -> dict:
    """Train from the engine's heads on ``samples``; write a heads folder to ``out_dir``; return its manifest."""
    if len(samples) < 10:
        raise GeoCLIPError(f"fine-tuning needs at least 10 photos with GPS, got {len(samples)}")
    out_dir = check_out_folder(out_dir, engine.heads_files.folder)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoCLIPError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    base_sha256 = {  # before anything is written
        name: sha256_file(engine.heads_files.weight_path(name))
        for name in ("image_encoder_mlp_weights.pth", "location_encoder_weights.pth", "logit_scale_weights.pth")
    }
    device = engine.device
    torch.manual_seed(settings.seed)
    train_idx, val_idx = _split(len(samples), settings.val_fraction, settings.seed)
    embeddings = torch.from_numpy(np.stack([s.embedding for s in samples])).float().to(device)
    gps = torch.tensor([[s.lat, s.lon] for s in samples], dtype=torch.float32, device=device)
    truth_val = gps[val_idx].cpu().numpy()

    gallery = read_gallery_csv(engine.heads_files.gallery_csv)
    if settings.extend_gallery:
        gallery = np.concatenate([gallery, gps[train_idx].cpu().numpy()])
    candidates = gallery
    if settings.val_candidates and len(gallery) > settings.val_candidates:
        pick = np.random.default_rng(settings.seed).choice(len(gallery), settings.val_candidates, replace=False)
        candidates = gallery[np.sort(pick)]
    candidates = torch.from_numpy(candidates).to(device)

    heads = copy.deepcopy(engine.heads).to(device)
    before = validate(heads, embeddings[val_idx], truth_val, candidates)
    optimizer = torch.optim.Adam(_trainable(heads), lr=settings.lr, weight_decay=settings.weight_decay)
    queue = GPSQueue(settings.queue_size).to(device)
    # the starting heads are epoch 0: an epoch must beat them to be kept
    state = {"epoch": 0, "best_epoch": 0, "best_validation": before, "stale": 0, "history": []}
    best = starting = copy.deepcopy(heads.state_dict())
    checkpoint = out_dir / CHECKPOINT
    if resume and checkpoint.is_file():
        try:
            saved = torch.load(checkpoint, map_location=device, weights_only=True)
            heads.load_state_dict(saved["heads"])
            best = saved["best"]
            optimizer.load_state_dict(saved["optimizer"])
            queue.buffer.copy_(saved["queue"])
            queue.pointer, queue.filled = int(saved["queue_pointer"]), int(saved["queue_filled"])
            state = parse_json(saved["state"])
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise ValueError("no training state")
            if not isinstance(state.get("best_validation"), dict):  # a checkpoint from before epoch 0 counted
                kept = copy.deepcopy(heads)
                kept.load_state_dict(best)
                state["best_validation"] = validate(kept, embeddings[val_idx], truth_val, candidates)
                if not better(state["best_validation"], before):
                    best, state["best_epoch"], state["best_validation"] = starting, 0, before
        except Exception as exc:  # a damaged or foreign checkpoint: torch's, pickle's, shape errors
            raise GeoCLIPError(f"cannot resume from {checkpoint}: {type(exc).__name__}: {exc}") from None

    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    stage = Stage(progress, "Training", settings.epochs, "epochs")
    stage.update(state["epoch"])
    while state["epoch"] < settings.epochs and state["stale"] < settings.patience:
        if should_stop and should_stop():
            break
        heads.train()
        generator = torch.Generator().manual_seed(settings.seed + state["epoch"])
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        total_loss, steps = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size].to(device)
            batch_gps = gps[batch]
            # the batch's own positions first (targets 0..n-1), then the queue's as extra negatives
            candidates_gps = torch.cat([batch_gps, queue.negatives()], dim=0)
            queue.push(batch_gps)
            logits = heads.logits(heads.image_features(embeddings[batch]), heads.location_features(candidates_gps))
            loss = loss_fn(logits, torch.arange(len(batch), device=device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss, steps = total_loss + loss.item(), steps + 1
        state["epoch"] += 1
        table = validate(heads, embeddings[val_idx], truth_val, candidates)
        state["history"].append({"epoch": state["epoch"], "loss": total_loss / max(steps, 1), **table})
        if better(table, state["best_validation"]):
            state.update(best_validation=table, best_epoch=state["epoch"], stale=0)
            best = copy.deepcopy(heads.state_dict())
        else:
            state["stale"] += 1
        _save_checkpoint(
            {
                "heads": heads.state_dict(),
                "best": best,
                "optimizer": optimizer.state_dict(),
                "queue": queue.buffer,
                "queue_pointer": queue.pointer,
                "queue_filled": queue.filled,
                "state": json.dumps(state),
            },
            out_dir,
        )
        stage.update(
            state["epoch"],
            detail=f"epoch {state['epoch']}: loss {total_loss / max(steps, 1):.3f}, "
            f"validation {table['acc_25km']:.1f}% within 25 km",
        )

    heads.load_state_dict(best)
    after = state["best_validation"]  # the kept heads' own validation: not encoded a third time
    manifest = {
        "base_heads": str(engine.heads_files.folder),
        "base_heads_sha256": base_sha256,
        "backbone": str(engine.clip_dir),
        "photos": {"train": len(train_idx), "validation": len(val_idx)},
        "photo_ids": [hashlib.sha256(samples[i].photo.encode()).hexdigest()[:16] for i in train_idx],
        "gallery": {"places": int(len(gallery)), "extended_with_training_photos": settings.extend_gallery},
        "settings": settings.__dict__,
        "validation": {
            "candidates": int(len(candidates)),
            "thresholds_km": list(THRESHOLDS_KM),
            "before": before,
            "after": after,
            "best_epoch": state["best_epoch"],
            # no epoch beat the starting heads on the validation photos: they are what was written
            "kept_starting_heads": state["best_epoch"] == 0,
        },
        "history": state["history"],
        "seconds": round(time.perf_counter() - started, 1),
        "stopped_early": bool(should_stop and should_stop()),
    }
    _write_heads_folder(heads.cpu(), gallery, manifest, out_dir)
    if not manifest["stopped_early"]:
        checkpoint.unlink(missing_ok=True)  # kept only to resume an interrupted run
    return manifest


def _staging(out_dir: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=".finetune.", suffix=".partial", dir=out_dir))
    except OSError as exc:
        raise GeoCLIPError(f"cannot write in {out_dir}: {exc.strerror or exc}") from None


def _save_checkpoint(state: dict, out_dir: Path) -> None:
    staging = _staging(out_dir)
    try:
        torch.save(state, staging / CHECKPOINT)
        _install(staging, out_dir, [CHECKPOINT])
    except OSError as exc:
        raise GeoCLIPError(f"cannot write {out_dir / CHECKPOINT}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_heads_folder(heads: GeoCLIPHeads, gallery: np.ndarray, manifest: dict, out_dir: Path) -> None:
    """The heads, the gallery and the manifest, each written whole in a private folder and renamed into
    place (the manifest last: a folder with a manifest is complete)."""
    staging = _staging(out_dir)
    try:
        save_heads(heads, staging)
        (staging / "gps_gallery").mkdir()
        with open(staging / "gps_gallery" / DEFAULT_GALLERY, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["LAT", "LON"])
            writer.writerows((f"{lat:.6f}", f"{lon:.6f}") for lat, lon in gallery)
        with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=2))
        _install(staging, out_dir, [name for name in OUR_FILES if name not in (CHECKPOINT, MANIFEST)] + [MANIFEST])
    except OSError as exc:
        raise GeoCLIPError(f"cannot write the heads into {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class Tuned:
    """What one fine-tuning action did: the photos it read and the manifest of the heads it wrote."""

    collected: Collected
    manifest: dict
    out_dir: Path

    def tables(self) -> str:
        """The validation tables before and after."""
        validation = self.manifest["validation"]
        return (
            f"validation before ({validation['candidates']} gallery places):\n{format_table(validation['before'])}\n"
            f"after (best epoch {validation['best_epoch']}):\n{format_table(validation['after'])}"
        )

    @property
    def kept_note(self) -> str:
        """Said when no epoch beat the starting heads (they are what was written), else ""."""
        if self.manifest["validation"].get("kept_starting_heads"):
            return "no epoch beat the starting heads on the validation photos; they are kept"
        return ""


def tune_heads(
    engine: Engine,
    data: str | Path | list,
    out_dir: str | Path,
    settings: FinetuneSettings = FinetuneSettings(),
    images: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    resume: bool = False,
    on_collected: Callable[[Collected], None] | None = None,
) -> Tuned:
    """Fine-tuning as one action, for every door: refuse a folder that is not ours, read the photos of known
    position (a CSV of photo,lat,lon or photos with EXIF GPS), train, write the heads folder."""
    out = check_out_folder(out_dir, engine.heads_files.folder)  # before minutes of reading photos
    engine.load(progress)
    collected = collect_samples(engine, data, images, progress, should_stop=should_stop)
    if on_collected is not None:
        on_collected(collected)
    manifest = finetune(engine, collected.samples, out, settings, progress, should_stop=should_stop, resume=resume)
    return Tuned(collected, manifest, out)
