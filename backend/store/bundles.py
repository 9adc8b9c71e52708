"""Carrying models between machines: import a folder or a bundle .zip into the models folder, export
one. Everything that comes in is checked before it is used.

A bundle is a .zip with ``manifest.json`` (every file's size and sha256), ``heads/`` and
``clip-vit-large-patch14/``. Only model files travel: heads weights (``weights/*.pth``), the GPS gallery
(``gps_gallery/*.csv``) and CLIP checkpoint files (configs, tokenizer files, weights) — no code.

On import, before a byte is extracted, every entry must be named in the manifest with a safe relative
path and its declared size, and the whole must fit on the disk; extraction then streams each file with
its declared size as a hard budget and its sha256 checked. A folder is read without following symbolic
links out of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ForeignFileError, WeightsError
from ..filelock import put_in_place, refuse_non_file, staged
from .weights import (
    BACKBONE_FOLDER,
    PART_FILES,
    backbone_problem,
    find_backbone,
    find_heads,
    heads_problem,
    model_files,
    models_dir,
    parse_json,
    sha256_file,
)

BUNDLE_FORMAT = "geoclip-qgis-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 4 * 1024 * 1024  # a manifest is a few KB; more is not a manifest


def import_models(source: str | os.PathLike) -> list[str]:
    """Copy heads and/or a backbone from a folder or a bundle .zip into the models folder.

    The source may be a heads folder, a CLIP checkpoint folder, a folder holding ``heads/`` and
    ``clip-vit-large-patch14/``, or a .zip made by :func:`export_bundle`. Returns what was imported.
    """
    source = Path(source).expanduser()
    if source.is_file() and zipfile.is_zipfile(source):
        return _import_zip(source)
    if not source.is_dir():
        raise WeightsError(f"cannot import {source}: not a folder or a .zip file")
    imported = []
    for name, folder, problem in _importable_parts(source):
        if problem is None:
            _copy_model(folder, name, models_dir() / name)
            imported.append(name)
    if not imported:
        raise WeightsError(
            f"nothing to import from {source}: it is neither a heads folder "
            f"({heads_problem(source)}) nor a CLIP checkpoint folder ({backbone_problem(source)})"
        )
    return imported


def _importable_parts(source: Path):
    yield "heads", source, heads_problem(source)
    yield BACKBONE_FOLDER, source, backbone_problem(source)
    for name in ("heads", BACKBONE_FOLDER):
        sub = source / name
        if sub.is_dir() and not sub.is_symlink():
            check = heads_problem if name == "heads" else backbone_problem
            yield name, sub, check(sub)


def _copy_model(source: Path, part: str, target: Path) -> None:
    """Copy a part's model files into a sibling folder first, then swap: a failed copy never leaves
    half a model."""
    files = model_files(source, part)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # a fresh private folder: nothing already there under a staging name is written into
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise WeightsError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    try:
        for path in files:
            destination = staging / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)  # the file's bytes, never a link
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise WeightsError(f"cannot copy {source} into {target}: {exc.strerror or exc}") from None


def export_bundle(
    target: str | os.PathLike, heads: str | None = None, clip: str | None = None, with_backbone: bool = True
) -> Path:
    """One .zip with ``heads/``, ``clip-vit-large-patch14/`` and a manifest of every file's sha256,
    for carrying models to machines without internet (:func:`import_models` verifies it)."""
    target = Path(target)
    parts = {"heads": find_heads(heads).require()}
    if with_backbone:
        parts[BACKBONE_FOLDER] = find_backbone(clip).require()
    _refuse_bundle_target(target, parts)
    listed = {name: model_files(folder, name) for name, folder in parts.items()}
    files = {}
    for name, folder in parts.items():
        for path in listed[name]:
            files[f"{name}/{path.relative_to(folder).as_posix()}"] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
    manifest = {"format": BUNDLE_FORMAT, "files": files}
    with staged(target) as partial:
        try:
            with zipfile.ZipFile(partial, "w", allowZip64=True) as bundle:
                bundle.writestr(MANIFEST, json.dumps(manifest, indent=2))
                for name, folder in parts.items():
                    for path in listed[name]:
                        arcname = f"{name}/{path.relative_to(folder).as_posix()}"
                        # weights do not compress; text files (gallery CSV, JSON) do
                        text = path.suffix in (".csv", ".json", ".txt")
                        bundle.write(path, arcname, compress_type=zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED)
            with zipfile.ZipFile(partial) as written:  # what is on disk reads back whole
                if written.testzip() is not None or set(written.namelist()) != {MANIFEST, *files}:
                    raise OSError("the bundle did not read back whole")
        except (OSError, zipfile.BadZipFile) as exc:
            raise WeightsError(f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") from None
        _refuse_bundle_target(target, parts)
        put_in_place(partial, target)
    return target


def _refuse_bundle_target(target: Path, parts: dict[str, Path]) -> None:
    """A bundle goes neither into the models folder nor into a weights folder in use (it would replace a
    weight file, or be taken for one by later exports), and never over a file that is not a bundle."""
    where = Path(os.path.realpath(target.parent)) / target.name
    folders = [("the models folder", models_dir())]
    folders += [(f"the {name} folder being exported", folder) for name, folder in parts.items()]
    in_use = (("the heads folder in use", find_heads(None)), ("the CLIP folder in use", find_backbone(None)))
    for what, lookup in in_use:
        if lookup.path is not None:
            folders.append((what, lookup.path))
    for what, folder in folders:
        if where.is_relative_to(os.path.realpath(folder)):
            raise WeightsError(
                f"{target} is inside {what} ({folder}); a bundle written there would be taken for a model file "
                "or replace one: write it anywhere else"
            )
    refuse_non_file(target, "where the bundle would go")
    if target.exists() and not _is_bundle(target):
        raise ForeignFileError(f"{target} exists and is not a GeoCLIP model bundle; refusing to overwrite it")


def _is_bundle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as bundle:
            _read_manifest(bundle, path)
    except (OSError, zipfile.BadZipFile, WeightsError, ValueError):
        return False
    return True


def _safe_name(name: str) -> bool:
    """A manifest or zip entry name: relative, forward slashes, no '..', inside one of the parts, and a
    model file by its pattern."""
    if not name or "\\" in name or name.startswith("/") or ":" in name:
        return False
    parts = PurePosixPath(name).parts
    if ".." in parts or "." in parts or len(parts) < 2:
        return False
    part, relative = parts[0], "/".join(parts[1:])
    return part in PART_FILES and any(fnmatch.fnmatch(relative, pattern) for pattern in PART_FILES[part])


def _read_manifest(bundle: zipfile.ZipFile, archive: Path) -> dict[str, dict]:
    try:
        info = bundle.getinfo(MANIFEST)
    except KeyError:
        raise WeightsError(
            f"{archive} is not a GeoCLIP model bundle (no {MANIFEST}); if you trust it, unzip it and import the folder"
        ) from None
    if info.file_size > MANIFEST_LIMIT:
        raise WeightsError(f"{archive}: its {MANIFEST} is {info.file_size} bytes, not a manifest; refusing the bundle")
    try:
        with bundle.open(info) as handle:
            manifest = parse_json(handle.read(MANIFEST_LIMIT + 1).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError):
        raise WeightsError(f"{archive}: {MANIFEST} is not readable JSON; refusing the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise WeightsError(f"{archive}: unknown bundle format {found!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise WeightsError(f"{archive}: {MANIFEST} lists no files; refusing the bundle")
    for name, entry in files.items():
        if not _safe_name(name):
            raise WeightsError(f"{archive}: the manifest names {name!r}, which is not a model file path; refusing")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("bytes"), int)
            or entry["bytes"] < 0
            or not isinstance(entry.get("sha256"), str)
        ):
            raise WeightsError(f"{archive}: the manifest entry for {name} has no size and sha256; refusing")
    return files


def _check_entries(bundle: zipfile.ZipFile, files: dict[str, dict], archive: Path) -> list[zipfile.ZipInfo]:
    """Every entry is listed with its declared size, no entry twice, every listed file present."""
    members, seen = [], set()
    for info in bundle.infolist():
        if info.is_dir() or info.filename == MANIFEST:
            continue
        name = info.filename
        if name not in files:
            raise WeightsError(f"{archive}: {name} is not in the manifest; refusing the bundle")
        if name in seen:
            raise WeightsError(f"{archive}: {name} appears twice; refusing the bundle")
        if info.file_size != files[name]["bytes"]:
            raise WeightsError(
                f"{archive}: {name} would unpack to {info.file_size} bytes, the manifest says "
                f"{files[name]['bytes']}; refusing the bundle"
            )
        seen.add(name)
        members.append(info)
    missing = sorted(files.keys() - seen)
    if missing:
        raise WeightsError(f"{archive}: {missing[0]} is listed in the manifest but missing; refusing the bundle")
    return members


def _extract(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, expected: dict, root: Path, archive: Path) -> None:
    """Stream one entry out with its declared size as a hard budget, hashing as it goes."""
    target = root / info.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    with bundle.open(info) as source, open(target, "wb") as out:
        while block := source.read(1 << 20):
            written += len(block)
            if written > expected["bytes"]:
                raise WeightsError(f"{archive}: {info.filename} unpacks to more than its declared size; refusing")
            digest.update(block)
            out.write(block)
    if written != expected["bytes"]:
        raise WeightsError(f"{archive}: {info.filename} is shorter than its declared size; refusing the bundle")
    if digest.hexdigest() != expected["sha256"]:
        raise WeightsError(
            f"{archive}: {info.filename} fails its checksum (sha256 {digest.hexdigest()[:16]}..., "
            f"manifest says {str(expected['sha256'])[:16]}...); refusing the bundle"
        )


def _import_zip(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            files = _read_manifest(bundle, archive)
            members = _check_entries(bundle, files, archive)
            total = sum(entry["bytes"] for entry in files.values())
            scratch = Path(tempfile.gettempdir())
            for folder in (scratch, models_dir().parent if models_dir().parent.exists() else scratch):
                free = shutil.disk_usage(folder).free
                if total > free:
                    raise WeightsError(
                        f"{archive} unpacks to {total / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB free in {folder}"
                    )
            with tempfile.TemporaryDirectory() as tmp:
                for info in members:  # every file checked before anything reaches the models folder
                    _extract(bundle, info, files[info.filename], Path(tmp), archive)
                return import_models(tmp)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{archive} is a damaged .zip file: {exc}") from None
    except OSError as exc:
        raise WeightsError(f"cannot import {archive}: {exc.strerror or exc}") from None
