"""Where weights come from: the one place that resolves, checks, imports and downloads them.

Heads (GeoCLIP's trained MLP, location encoder, logit scale and GPS gallery), in this order:
``--heads DIR``, ``$GEOCLIP_HEADS``, ``<models folder>/heads``, the installed ``geoclip`` wheel.
Backbone (a Hugging Face CLIP checkpoint folder): ``--clip DIR``, ``$GEOCLIP_CLIP``,
``<models folder>/clip-vit-large-patch14``, the Hugging Face cache entry, read offline.

Only :func:`download_backbone` uses the network, and only when called.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WeightsError
from ..user_folders import user_data_folder
from .cache import cache_dir, sha256_file
from .heads_files import WEIGHT_FILES, HeadsFiles

HEADS_ENV = "GEOCLIP_HEADS"
CLIP_ENV = "GEOCLIP_CLIP"
MODELS_DIR_ENV = "GEOCLIP_MODELS_DIR"

BACKBONE_REPO = "openai/clip-vit-large-patch14"
# A commit of BACKBONE_REPO, never a branch: a moving name could serve different files tomorrow.
BACKBONE_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"  # pragma: allowlist secret (a commit id)
BACKBONE_FOLDER = "clip-vit-large-patch14"
BACKBONE_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "model.safetensors",
)
CLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_GALLERY = "coordinates_100K.csv"
REQUIRED_PROJECTION_DIM = 768

FIX_HEADS = (
    "pass --heads DIR (a folder with weights/*.pth and gps_gallery/*.csv), "
    "or run: geoclip-qgis models import PATH, or install the geoclip wheel: "
    "pip install --no-deps geoclip"
)
FIX_CLIP = (
    "pass --clip DIR (a Hugging Face CLIP checkpoint folder), or run: "
    "geoclip-qgis models import PATH (from a USB stick), or, online: geoclip-qgis models download"
)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a configuration can hold")


def parse_json(data: str | bytes):
    """``json.loads`` for files from outside: a document nested too deep for Python (a RecursionError)
    and NaN or Infinity are ValueErrors, like any other unreadable JSON."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply to be a configuration") from None


def models_dir() -> Path:
    """The user's models folder (platformdirs), unless $GEOCLIP_MODELS_DIR says otherwise."""
    return Path(os.environ.get(MODELS_DIR_ENV) or user_data_folder() / "models")


@dataclass
class Lookup:
    """The outcome of one search: the folder found and every place tried, with why it was passed over."""

    what: str
    fix: str
    path: Path | None = None
    source: str = ""
    tried: list[tuple[str, str, str]] = field(default_factory=list)  # (source, path, reason)

    def message(self) -> str:
        lines = [f"{self.what} not found. Looked in:"]
        lines += [f"  - {src}: {path} ({reason})" for src, path, reason in self.tried]
        lines.append(f"To fix: {self.fix}")
        return "\n".join(lines)

    def require(self) -> Path:
        if self.path is None:
            raise WeightsError(self.message())
        return self.path


# ---------------------------------------------------------------------------------------------- heads


def wheel_heads_dir() -> Path | None:
    """The installed geoclip release's model folder, found without importing the package."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def heads_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a heads folder, or None when it is one."""
    if not folder.is_dir():
        return "no such folder"
    missing = [f"weights/{name}" for name in WEIGHT_FILES if not (folder / "weights" / name).is_file()]
    if missing:
        return "missing " + ", ".join(missing)
    if not list((folder / "gps_gallery").glob("*.csv")):
        return "missing gps_gallery/*.csv"
    return None


def gallery_csv(folder: Path) -> Path:
    csvs = sorted((folder / "gps_gallery").glob("*.csv"))
    preferred = folder / "gps_gallery" / DEFAULT_GALLERY
    if preferred in csvs:
        return preferred
    if len(csvs) > 1:
        names = ", ".join(p.name for p in csvs)
        raise WeightsError(f"{folder / 'gps_gallery'} holds several galleries ({names}); keep one")
    return csvs[0]


def _heads_candidates(explicit: str | os.PathLike | None):
    if explicit:
        yield "--heads", Path(explicit).expanduser(), True
    if os.environ.get(HEADS_ENV):
        yield f"${HEADS_ENV}", Path(os.environ[HEADS_ENV]).expanduser(), True
    yield "models folder", models_dir() / "heads", False
    wheel = wheel_heads_dir()
    if wheel is not None:
        yield "geoclip wheel", wheel, False
    else:
        yield "geoclip wheel", Path("(geoclip package)"), False


def find_heads(explicit: str | os.PathLike | None = None) -> Lookup:
    lookup = Lookup("GeoCLIP heads", FIX_HEADS)
    for source, folder, insisted in _heads_candidates(explicit):
        reason = "not installed" if source == "geoclip wheel" and not folder.is_absolute() else None
        reason = reason or heads_problem(folder)
        if reason is None:
            lookup.path, lookup.source = folder, source
            return lookup
        lookup.tried.append((source, str(folder), reason))
        if insisted:  # the user named this folder: do not quietly use another one
            return lookup
    return lookup


def resolve_heads(explicit: str | os.PathLike | None = None) -> HeadsFiles:
    folder = find_heads(explicit).require()
    return HeadsFiles(folder=folder, gallery_csv=gallery_csv(folder))


@dataclass(frozen=True)
class ModelFiles:
    """The weights one engine runs on, and where each was found."""

    heads: HeadsFiles
    heads_source: str
    clip_dir: Path | None  # None: the heads alone (judging stored query vectors), no photos or text
    clip_source: str

    @property
    def heads_name(self) -> str:
        return "release" if self.heads_source == "geoclip wheel" else self.heads.folder.name


def resolve_model_files(
    heads: str | os.PathLike | None = None, clip: str | os.PathLike | None = None, backbone: bool = True
) -> ModelFiles:
    """Both halves of the model, or a :class:`WeightsError` naming what is missing and where it was sought.
    ``backbone=False``: the heads alone, for work on stored query vectors that never runs CLIP."""
    heads_lookup = find_heads(heads)
    folder = heads_lookup.require()
    if not backbone:
        return ModelFiles(HeadsFiles(folder, gallery_csv(folder)), heads_lookup.source, None, "not needed")
    clip_lookup = find_backbone(clip)
    clip_dir = clip_lookup.require()
    return ModelFiles(HeadsFiles(folder, gallery_csv(folder)), heads_lookup.source, clip_dir, clip_lookup.source)


# ------------------------------------------------------------------------------------------- backbone


def hf_cache_backbone() -> Path | None:
    """The Hugging Face cache's snapshot of the backbone (pinned revision first, then main), offline."""
    from huggingface_hub import try_to_load_from_cache

    for revision in (BACKBONE_REVISION, None):
        hit = try_to_load_from_cache(BACKBONE_REPO, "config.json", revision=revision)
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def backbone_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable CLIP checkpoint folder, or None when it is one."""
    if not folder.is_dir():
        return "no such folder"
    config_path = folder / "config.json"
    if not config_path.is_file():
        return "no config.json"
    if not any((folder / name).is_file() for name in CLIP_WEIGHT_FILES) and not list(folder.glob("model*.safetensors")):
        return "no model.safetensors or pytorch_model.bin"
    if not (folder / "preprocessor_config.json").is_file():
        return "no preprocessor_config.json"
    try:
        config = parse_json(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"config.json unreadable: {exc}"
    if not isinstance(config, dict) or not isinstance(config.get("vision_config", {}), dict):
        return "config.json is not a CLIP configuration (not a JSON object)"
    model_type = config.get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        return f"config.json describes a {model_type!r} model, not CLIP"
    projection = config.get("projection_dim")
    if projection is None and model_type == "clip":
        projection = config.get("vision_config", {}).get("projection_dim")
    if projection != REQUIRED_PROJECTION_DIM:
        return (
            f"its projection is {projection} wide; GeoCLIP's image head needs {REQUIRED_PROJECTION_DIM} (CLIP ViT-L/14)"
        )
    return None


def _backbone_candidates(explicit: str | os.PathLike | None):
    if explicit:
        yield "--clip", Path(explicit).expanduser(), True
    if os.environ.get(CLIP_ENV):
        yield f"${CLIP_ENV}", Path(os.environ[CLIP_ENV]).expanduser(), True
    yield "models folder", models_dir() / BACKBONE_FOLDER, False
    cached = hf_cache_backbone()
    yield "Hugging Face cache", cached or Path(f"(no {BACKBONE_REPO} in the cache)"), False


def find_backbone(explicit: str | os.PathLike | None = None) -> Lookup:
    lookup = Lookup(f"CLIP backbone ({BACKBONE_REPO})", FIX_CLIP)
    for source, folder, insisted in _backbone_candidates(explicit):
        reason = backbone_problem(folder)
        if reason is None:
            lookup.path, lookup.source = folder, source
            return lookup
        lookup.tried.append((source, str(folder), reason))
        if insisted:
            return lookup
    return lookup


def resolve_backbone(explicit: str | os.PathLike | None = None) -> Path:
    return find_backbone(explicit).require()


# --------------------------------------------------------------------------------- status and copies


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


PART_FILES = {  # the files that make a model, per part; nothing else is listed, copied, exported or accepted
    "heads": ("weights/*.pth", "gps_gallery/*.csv", "manifest.json"),
    BACKBONE_FOLDER: ("*.json", "*.txt", "*.safetensors", "*.bin"),
}


def model_files(folder: Path, part: str) -> list[Path]:
    """The model files of a heads or CLIP folder, sorted; refuses a symbolic link that leads out of it.

    A Hugging Face cache snapshot links its files into the repository's ``blobs/`` folder: links are
    followed there, and nowhere else."""
    folder = Path(folder)
    allowed_root = folder.resolve()
    if folder.parent.name == "snapshots":
        allowed_root = folder.parent.parent.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in PART_FILES[part]):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(allowed_root):
            raise WeightsError(f"refusing {path}: a symbolic link to {path.resolve()}, outside the model folder")
        if path.is_file():
            found.append(path)
    return found


def describe_files(folder: Path, part: str, checksums: bool = True) -> list[dict]:
    return [
        {
            "file": str(path.relative_to(folder)),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path) if checksums else "",
        }
        for path in model_files(folder, part)
    ]


def status(heads: str | None = None, clip: str | None = None, checksums: bool = True) -> dict:
    """What was found where, for ``models status`` and the plugin's models dialog."""
    report = {"models_dir": str(models_dir()), "cache_dir": str(cache_dir())}
    for key, lookup in (("heads", find_heads(heads)), ("backbone", find_backbone(clip))):
        entry = {"found": lookup.path is not None, "tried": lookup.tried}
        if lookup.path is not None:
            part = "heads" if key == "heads" else BACKBONE_FOLDER
            entry.update(
                path=str(lookup.path), source=lookup.source, files=describe_files(lookup.path, part, checksums)
            )
        report[key] = entry
    return report


def download_backbone(tqdm_class=None, *, progress=None, should_stop=None, proxies=None) -> Path:
    """Fetch the backbone at the pinned revision into the models folder: the only network use.

    Files go first into a hidden staging folder beside it (``.clip-vit-large-patch14.partial``), each
    as ``NAME.incomplete`` until complete; a cancelled or failed download keeps them there and the next
    call resumes them with HTTP Range requests. (Not through huggingface_hub's cache: its recent releases
    delete a failed download's partial file.) Every file is checked against the checksum the Hub
    publishes for the revision, and the backbone takes its place in the models folder only then, so a
    half download is never found as a backbone.

    ``progress``: :class:`~.progress.Progress` events counting bytes over all files; None draws a tqdm
    bar (``tqdm_class``) on stderr. ``should_stop()``: polled after each chunk; True raises
    :class:`~.errors.Cancelled`, the partial files kept. ``proxies``: {"http": URL, "https": URL} for this download
    only, ``{}`` for none; None leaves it to ``HTTPS_PROXY``/``HTTP_PROXY`` and the system's settings.
    Failures are :class:`~.hub_download.DownloadError` subclasses with a plain message.
    """
    from . import hub_download as hub

    target = models_dir() / BACKBONE_FOLDER
    staging = target.with_name(f".{BACKBONE_FOLDER}.partial")
    files = hub.list_files(BACKBONE_REPO, BACKBONE_REVISION, BACKBONE_FILES, proxies)
    bar = None
    if progress is None:
        from tqdm import tqdm

        bar = (tqdm_class or tqdm)(total=sum(f.size for f in files), unit="B", unit_scale=True, desc=BACKBONE_FOLDER)

        def progress(event):
            bar.update(event.done - bar.n)

    try:
        hub.download_files(
            files,
            lambda name: hub.file_url(BACKBONE_REPO, BACKBONE_REVISION, name),
            staging,
            proxies=proxies,
            progress=progress,
            should_stop=should_stop,
            stage="Downloading the CLIP backbone",
        )
    finally:
        if bar is not None:
            bar.close()
    verify_downloaded(staging, files)
    problem = backbone_problem(staging)
    if problem:
        raise WeightsError(f"downloaded backbone in {staging} is not usable: {problem}")
    _put_in_place(staging, target)
    return target


def _put_in_place(staging: Path, target: Path) -> None:
    """Replace ``target`` (an older copy, if any) by ``staging``: renames only, never a half-copied folder."""
    import shutil

    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
    except OSError as exc:
        raise WeightsError(
            f"the backbone was downloaded into {staging} but could not be moved to {target}: {exc}"
        ) from exc
    shutil.rmtree(old, ignore_errors=True)


def verify_downloaded(folder: Path, files) -> None:
    """Compare downloaded files with the checksums the Hub lists; remove and report any mismatch."""
    from .hub_download import mismatch

    for remote in files:
        what = mismatch(folder / remote.name, remote)
        if what:
            (folder / remote.name).unlink(missing_ok=True)
            raise WeightsError(
                f"downloaded {remote.name} does not match the Hub's {what} for revision "
                f"{BACKBONE_REVISION[:10]}; it was deleted: run the download again"
            )


def weight_checksums(heads_files, clip_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of the heads' weight files, the GPS gallery and every file of the CLIP folder (remembered
    in the cache folder by size and time, so the backbone is hashed once)."""
    from .cache import file_sha256
    from .heads_files import WEIGHT_FILES

    sums = {f"heads/weights/{name}": file_sha256(heads_files.weight_path(name)) for name in WEIGHT_FILES}
    sums[f"heads/gps_gallery/{Path(heads_files.gallery_csv).name}"] = file_sha256(Path(heads_files.gallery_csv))
    if clip_dir is not None:
        for path in model_files(Path(clip_dir), BACKBONE_FOLDER):
            sums[f"clip/{path.relative_to(clip_dir).as_posix()}"] = file_sha256(path)
    return sums


# ---------------------------------------------------------------------------- what a backbone folder holds

VIT_L_14_VISION = {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14, "image_size": 224}
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


@dataclass(frozen=True)
class BackboneArchitecture:
    """What a CLIP checkpoint folder holds: whether it is ViT-L/14 (the backbone GeoCLIP's heads were
    trained on), a short description, its weights' size, and whether it has a text tower and tokenizer."""

    vit_l14: bool
    description: str
    weights_bytes: int
    text_tower: bool
    tokenizer: bool

    @property
    def answers_text(self) -> bool:
        return self.text_tower and self.tokenizer


def backbone_architecture(folder: str | os.PathLike) -> BackboneArchitecture:
    """What a CLIP checkpoint folder holds, read from its config.json and file names (no weights loaded)."""
    folder = Path(folder)
    try:
        config = parse_json((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict) or not isinstance(config.get("vision_config", {}), dict):
        config = {}
    vision = config.get("vision_config", config) if config.get("model_type") == "clip" else config
    vision = {key: vision.get(key, default) for key, default in VIT_L_14_VISION.items()}
    projection = config.get("projection_dim") or config.get("vision_config", {}).get("projection_dim")
    is_vit_l14 = vision == VIT_L_14_VISION and projection == REQUIRED_PROJECTION_DIM
    size = sum(path.stat().st_size for path in folder.iterdir() if path.suffix in (".safetensors", ".bin"))
    described = (
        "CLIP ViT-L/14"
        if is_vit_l14
        else f"a CLIP vision transformer with {vision['num_hidden_layers']} layers, {vision['hidden_size']} wide, "
        f"patch {vision['patch_size']}, {vision['image_size']} px, projection {projection}"
    )
    return BackboneArchitecture(
        vit_l14=is_vit_l14,
        description=described,
        weights_bytes=size,
        text_tower=config.get("model_type") == "clip",
        tokenizer=any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILES),
    )


def not_vit_l14_warning(description: str | None = None, checkpoint: str = "The CLIP checkpoint in use") -> str:
    """The warning for a CLIP checkpoint that is not ViT-L/14 (``description`` from
    :func:`backbone_architecture`): the dock, the Models dialog and the case reports all say this."""
    but = f" but {description}" if description else ""
    return (
        f"{checkpoint} is not ViT-L/14{but}. GeoCLIP's heads were trained on ViT-L/14's features: its answers "
        "will not be meaningful places."
    )


def backbone_provenance(clip_dir: str | os.PathLike | None) -> dict:
    """What a run's CLIP backbone is, for its provenance (a run's settings, the reports): its architecture
    in words and whether it is ViT-L/14 (1 or 0), read from the checkpoint's config, never its folder's
    name."""
    if clip_dir is None:
        return {}
    architecture = backbone_architecture(clip_dir)
    return {"backbone": architecture.description, "backbone_vit_l14": int(architecture.vit_l14)}


def imported_message(imported: list[str], into: str | os.PathLike | None = None) -> str:
    """What :func:`.bundles.import_models` put into the models folder, named by what it is (the backbone by
    its architecture, not by its folder's name), with the warning when the backbone is not ViT-L/14."""
    into = Path(into) if into is not None else models_dir()
    parts, warnings = [], []
    for name in imported:
        if name == "heads":
            parts.append("GeoCLIP's trained heads (image head, location encoder, GPS gallery)")
            continue
        architecture = backbone_architecture(into / name)
        if architecture.vit_l14:
            parts.append("the CLIP ViT-L/14 backbone")
        else:
            parts.append(f"a CLIP backbone ({architecture.description})")
            warnings.append(not_vit_l14_warning(checkpoint="That backbone"))
    return f"Imported {' and '.join(parts)} into {into}." + "".join(f" {w}" for w in warnings)
