"""Files from outside are hostile: each test reproduces one attack that once succeeded.

- side files (an output's lock, its unfinished copy) that are links, hard links or another program's
  files are refused or never touched, and what they point at stays as it was;
- ``embed``, ``embedmap``, ``similar``, ``finetune`` and ``evaluate --report`` replace only files they
  made, as ``predict`` always did;
- a model bundle is never written into the models folder or a weights folder in use;
- a photo that changes while it is read never gets another photo's hash, answer or cached embedding;
- CLIP folders whose numbers no CLIP has, or whose JSON is nested past Python's limits, are named errors;
- inputs that used to end in a traceback (a Latin-1 table, a short row, a huge field, a cell of 1e-9
  degrees, a tile of 100 million rows) are named errors with exit status 2;
- the cache's regions folder is private (0700).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_cli import CLI

PRECIOUS = b"precious: not GeoCLIP's\n"


def cli(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
    )


def in_process(*argv) -> tuple[int, str]:
    """The command line's entry point in this process: (exit status, stderr). A traceback would fail the
    test as an exception."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from geoclip_qgis.backend.cli.main import main

    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, err.getvalue()


def named_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "geoclip-qgis: error:" in out.stderr, out.stderr[-2000:]
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr[-2000:])


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (or ``root`` itself): file bytes, link targets, folders; links not followed."""
    entries = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
    shot = {}
    for path in entries:
        key = str(path.relative_to(root.parent))
        if path.is_symlink():
            shot[key] = ("link", os.readlink(path))
        elif path.is_dir():
            shot[key] = "folder"
        else:
            shot[key] = path.read_bytes()
    return shot


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the case folder that a link in the case folder points at."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


# ------------------------------------------------------------------------- 1. side files and links


def test_a_link_at_the_lock_file_is_refused_and_its_target_untouched(engine, tiny_clip, kauai_png, tmp_path, outside):
    case = tmp_path / "case"
    case.mkdir()
    (case / "run.gpkg.lock").symlink_to(outside)
    out = cli("predict", kauai_png, "--clip", tiny_clip, "--out", case / "run.gpkg", "--quiet")
    named_error(out, "run.gpkg.lock", "symbolic link")
    assert outside.read_bytes() == PRECIOUS and (case / "run.gpkg.lock").is_symlink()
    assert not (case / "run.gpkg").exists()

    from geoclip_qgis.backend.errors import ForeignFileError
    from geoclip_qgis.backend.filelock import OutputLock

    hard = case / "hard.gpkg.lock"  # a hard link to a file of the case folder
    os.link(outside, hard)
    with pytest.raises(ForeignFileError, match="hard link"):
        OutputLock(case / "hard.gpkg").acquire()
    (case / "notes.gpkg.lock").write_bytes(PRECIOUS)  # another program's file of that name
    with pytest.raises(ForeignFileError, match="another program"):
        OutputLock(case / "notes.gpkg").acquire()
    assert outside.read_bytes() == PRECIOUS and (case / "notes.gpkg.lock").read_bytes() == PRECIOUS

    stale = case / "stale.gpkg.lock"  # left by a killed run: ours, taken over and removed
    stale.write_text("process 4242, since 2026-01-02 03:04:05")
    with OutputLock(case / "stale.gpkg") as lock:
        assert stale.read_text().startswith(f"process {os.getpid()}, since ")
        assert lock.path == stale
    assert not stale.exists()


@pytest.mark.parametrize("name", ["run.gpkg", "run.geojson", "run.csv"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_link_at_the_output_or_an_unfinished_name_is_never_written_through(
    engine, tiny_clip, kauai_png, tmp_path, outside, name
):
    case = tmp_path / "case"
    case.mkdir()
    (case / name).symlink_to(outside)  # at the output's own name: refused, whatever the format
    out = cli("predict", kauai_png, "--clip", tiny_clip, "--out", case / name, "--quiet")
    named_error(out, name, "symbolic link")
    assert outside.read_bytes() == PRECIOUS and (case / name).is_symlink()
    (case / name).unlink()
    dangling = tmp_path / "elsewhere" / "made-through-a-link"
    (case / f"{name}.partial").symlink_to(dangling)  # where an unfinished file once went: not used
    out = cli("predict", kauai_png, "--clip", tiny_clip, "--out", case / name, "--quiet")
    assert out.returncode == 0, out.stderr
    assert (case / name).is_file() and not (case / name).is_symlink()
    assert not dangling.exists() and (case / f"{name}.partial").is_symlink()
    assert sorted(p.name for p in case.iterdir()) == sorted([name, f"{name}.partial"])


def test_links_at_partial_names_are_never_written_through(wheel_model_dir, tmp_path, outside):
    from geoclip_qgis.backend.errors import GeoCLIPError
    from geoclip_qgis.backend.model.rasters import Raster
    from geoclip_qgis.backend.output.geotiff import write_geotiff

    case = tmp_path / "case"
    case.mkdir()
    for name in ("p.partial.tif", "map.partial.tif", "e.partial.npz", "e.partial.gpkg", "e.gpkg.partial"):
        (case / name).symlink_to(outside)  # every name an unfinished file had, or might have
    raster = Raster(np.full((4, 8), 1 / 32, dtype=np.float32), west=0.0, north=4.0, cell=1.0, kind="world")
    assert write_geotiff(raster, case / "p.tif") == case / "p.tif"

    (case / "places.csv").write_text("lat,lon\n48.85,2.35\n-18.14,178.44\n")
    common = ("--heads", wheel_model_dir, "--device", "cpu", "--quiet")
    status, err = in_process("embed", case / "places.csv", "--out", case / "e.gpkg", "--npz", case / "e.npz", *common)
    assert status == 0, err
    status, err = in_process("embedmap", case / "map.tif", "--extent=-10,40,10,50", "--cell", "2", *common)
    assert status == 0, err
    assert outside.read_bytes() == PRECIOUS
    left = sorted(p.name for p in case.iterdir() if not p.is_symlink())
    assert left == ["e.gpkg", "e.npz", "map.tif", "p.tif", "places.csv"]  # no staging folder stays behind

    (case / "final.tif").symlink_to(outside)  # a link at the output's own name: refused, not replaced
    with pytest.raises(GeoCLIPError, match="symbolic link"):
        write_geotiff(raster, case / "final.tif")
    assert (case / "final.tif").is_symlink() and outside.read_bytes() == PRECIOUS


# ------------------------------------------------------------ 2. other commands and others' files


def _foreign_gpkg(path: Path) -> None:
    from osgeo import ogr

    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("parcels", None, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("owner", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("owner", "someone")
    layer.CreateFeature(feature)
    dataset = None


def _predict_run(path: Path) -> None:
    from geoclip_qgis.backend.output.writers import GeoPackageWriter

    GeoPackageWriter(path, model="test").close()


def _foreign_tif(path: Path) -> None:
    from osgeo import gdal

    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1, gdal.GDT_Byte)
    dataset.GetRasterBand(1).Fill(7)
    dataset = None


def _foreign_folder(path: Path) -> None:
    (path / "gps_gallery").mkdir(parents=True)
    (path / "manifest.json").write_text('{"project": "Operation Sunrise", "owner": "someone"}')
    (path / "gps_gallery" / "coordinates_100K.csv").write_text("LAT,LON\n1,2\n")


CASES = {
    "embed --out another tool's GeoPackage": ("e.gpkg", _foreign_gpkg, ("embed", "P", "--out", "T")),
    "embed --out a predict run": ("run.gpkg", _predict_run, ("embed", "P", "--out", "T")),
    "embed --npz another file": ("e.npz", lambda p: np.savez(p, secrets=np.arange(3)), ("embed", "P", "--npz", "T")),
    "embedmap over another GeoTIFF": ("m.tif", _foreign_tif, ("embedmap", "T", "--cell", "5")),
    "embedmap over a text file": ("m.tif", lambda p: p.write_bytes(PRECIOUS), ("embedmap", "T", "--cell", "5")),
    "similar --raster another GeoTIFF": ("s.tif", _foreign_tif, ("similar", "1", "1", "--raster", "T", "--cell", "5")),
    "similar --places another GeoPackage": ("s.gpkg", _foreign_gpkg, ("similar", "10", "10", "--places", "T")),
    "finetune --out another folder": ("tuned", _foreign_folder, ("finetune", "P", "--out", "T")),
    "evaluate --report another file": ("r.json", lambda p: p.write_bytes(PRECIOUS), ("evaluate", "C", "--report", "T")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_other_commands_never_replace_files_they_did_not_make(case, wheel_model_dir, tmp_path):
    name, make, argv = CASES[case]
    target = tmp_path / name
    make(target)
    before = snapshot(target)
    points = tmp_path / "places.csv"
    points.write_text("lat,lon\n48.85,2.35\n-18.14,178.44\n")
    truth = tmp_path / "truth.csv"
    truth.write_text("photo,lat,lon\nnone.jpg,1,2\n")
    argv = [{"T": target, "P": points, "C": truth}.get(a, a) for a in argv]
    extra = ("--heads", wheel_model_dir, "--device", "cpu", "--quiet")
    status, err = in_process(*argv, *extra)
    assert status == 2, err
    assert err.startswith("geoclip-qgis: error:") and str(target) in err, err
    assert snapshot(target) == before


def test_the_location_tools_replace_their_own_outputs(wheel_model_dir, tmp_path):
    points = tmp_path / "places.csv"
    points.write_text("lat,lon\n48.85,2.35\n-18.14,178.44\n")
    common = ("--heads", wheel_model_dir, "--device", "cpu", "--quiet")
    for _ in range(2):  # the second run replaces what the first wrote
        status, err = in_process("embed", points, "--out", tmp_path / "e.gpkg", "--npz", tmp_path / "e.npz", *common)
        assert status == 0, err
        argv = ("similar", "10", "10", "--top", "3", "--places", tmp_path / "s.gpkg", "--raster", tmp_path / "s.tif")
        status, err = in_process(*argv, "--extent=0,0,20,20", "--cell", "5", *common)
        assert status == 0, err
    # ... but never each other's: an embedding GeoPackage is no places layer
    status, err = in_process("similar", "10", "10", "--places", tmp_path / "e.gpkg", *common)
    assert status == 2 and "not a GeoPackage of similar_places" in err


# --------------------------------------------------------------------- 3. bundles and weight folders


def test_bundles_are_never_written_into_weight_folders(wheel_model_dir, tiny_clip, tmp_path):
    from geoclip_qgis.backend.errors import GeoCLIPError, WeightsError
    from geoclip_qgis.backend.store import bundles, weights

    heads = tmp_path / "heads"
    shutil.copytree(wheel_model_dir / "weights", heads / "weights")
    shutil.copytree(wheel_model_dir / "gps_gallery", heads / "gps_gallery")
    before = snapshot(heads)
    models = weights.models_dir()
    for target in (
        models / "bundle.zip",  # the models folder
        models / "heads" / "weights" / "image_encoder_mlp_weights.pth",  # ... over a weight file in it
        heads / "weights" / "image_encoder_mlp_weights.pth",  # the heads being exported
        heads / "bundle.zip",
        tiny_clip / "extra.zip",  # the backbone being exported
    ):
        with pytest.raises(WeightsError, match="inside"):
            bundles.export_bundle(target, heads=heads, clip=tiny_clip, with_backbone=True)
        assert not target.exists() or target.parent == heads / "weights"
    assert snapshot(heads) == before
    assert not list(tiny_clip.glob("*.zip")) and not (models / "bundle.zip").exists()
    named_error(
        cli("models", "export", heads / "weights" / "logit_scale_weights.pth", "--heads-only", "--heads", heads),
        "inside",
    )
    assert snapshot(heads) == before

    notes = tmp_path / "notes.zip"  # another program's file: refused; an earlier bundle: replaced
    notes.write_bytes(PRECIOUS)
    with pytest.raises(GeoCLIPError, match="not a GeoCLIP model bundle"):
        bundles.export_bundle(notes, heads=heads, with_backbone=False)
    assert notes.read_bytes() == PRECIOUS
    for _ in range(2):
        assert bundles.export_bundle(tmp_path / "ok.zip", heads=heads, with_backbone=False).is_file()
    with zipfile.ZipFile(tmp_path / "ok.zip") as bundle:
        assert "heads/weights/logit_scale_weights.pth" in bundle.namelist()


# ------------------------------------------------------------- 4. a photo that changes while read


def _cached(path: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT photo_sha256, embedding FROM embeddings").fetchall()
    return {sha: np.frombuffer(blob, dtype=np.float32) for sha, blob in rows}


@pytest.mark.parametrize("kept_in_memory", [True, False])
def test_a_photo_changed_while_read_never_gets_another_photos_hash(
    engine, skimage_data, tmp_path, monkeypatch, kept_in_memory
):
    from geoclip_qgis.backend.photos import decoding
    from geoclip_qgis.backend.photos import loader as photos
    from geoclip_qgis.backend.store.embedding_cache import EmbeddingCache

    a_bytes = (skimage_data / "astronaut.png").read_bytes()
    b_bytes = (skimage_data / "coffee.png").read_bytes()
    a_sha = hashlib.sha256(a_bytes).hexdigest()
    (tmp_path / "a.png").write_bytes(a_bytes)
    (tmp_path / "b.png").write_bytes(b_bytes)
    expected_a, expected_b = (emb for _, emb, _, _ in engine.embed_iter([tmp_path / "a.png", tmp_path / "b.png"]))
    assert not np.allclose(expected_a, expected_b, atol=1e-3)

    photo = tmp_path / "photo.png"

    def swap(in_place: bool) -> None:
        if in_place:  # the same file, rewritten
            with open(photo, "r+b") as handle:
                handle.truncate(0)
                handle.write(b_bytes)
        else:  # another file renamed over it
            (tmp_path / "next.png").write_bytes(b_bytes)
            os.replace(tmp_path / "next.png", photo)

    def swap_at(module, name, in_place: bool, first: bool) -> None:
        real = getattr(module, name)

        def swapped(*args, **kwargs):
            if first:
                swap(in_place)
            result = real(*args, **kwargs)
            if not first:
                swap(in_place)
            return result

        monkeypatch.setattr(module, name, swapped)

    swaps = [  # after hashing, just before decoding; after the read, before hashing (by path) or decoding
        (decoding, "open_photo", True, True),
        (decoding, "read_photo", False, False),
    ]
    if not kept_in_memory:  # between hashing by path and decoding
        swaps.append((decoding, "photo_sha256", True, False))
    for number, (module, name, in_place, first) in enumerate(swaps):
        monkeypatch.undo()
        if not kept_in_memory:  # as HEIC photos and files over 64 MB are: hashed and decoded by path
            monkeypatch.setattr(photos, "MAX_IN_MEMORY_BYTES", 0, raising=False)
        photo.write_bytes(a_bytes)
        cache = EmbeddingCache(tmp_path / f"cache{number}.sqlite")
        monkeypatch.setattr(engine, "embeddings", cache)
        swap_at(module, name, in_place, first)
        result = engine.predict([photo], top_k=1)[0]
        cached = _cached(cache.path)
        if kept_in_memory:  # decoded from the bytes hashed: photo A's hash, answer and cache entry
            assert result.ok and result.sha256 == a_sha, (name, result.error)
            np.testing.assert_allclose(cached[a_sha], expected_a, atol=1e-5)
            assert set(cached) == {a_sha}
        else:  # the file changed between hashing and decoding: that photo fails, nothing is cached
            assert not result.ok and "changed while it was being read" in result.error, (name, result.error)
            assert cached == {}
        for sha, embedding in cached.items():  # no entry holds another photo's embedding
            assert not np.allclose(embedding, expected_b, atol=1e-3), sha


# -------------------------------------------------------------------------- 5. hostile CLIP folders


INFINITE = 123456.789  # written as the JSON number 1e999, which Python reads as inf


def _altered_clip(tiny_clip: Path, folder: Path, config=None, preprocessor=None, raw: dict | None = None) -> Path:
    shutil.copytree(tiny_clip, folder)
    for name, change in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        if change is not None:
            data = json.loads((folder / name).read_text())
            change(data)
            (folder / name).write_text(json.dumps(data).replace(str(INFINITE), "1e999"))
    for name, text in (raw or {}).items():
        (folder / name).write_text(text)
    return folder


def _vision(key, value):
    def change(config):
        config["vision_config"][key] = value

    return change


def _set(key, value):
    def change(config):
        config[key] = value

    return change


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "config, preprocessor, raw, message",
    [
        (None, _set("size", {"shortest_edge": 1_000_000}), None, "size.shortest_edge is 1000000"),
        (None, _set("size", 1_000_000), None, "size is 1000000"),
        (None, _set("size", 896), None, "at most 2 times the crop"),
        (None, _set("crop_size", {"height": 224, "width": 10**6}), None, "crop_size.width"),
        (None, _set("crop_size", 112), None, "config.json's image_size of 224"),
        (None, _set("image_std", [0, 0, 0]), None, "image_std"),
        (None, _set("image_mean", "grey"), None, "image_mean"),
        (None, _set("rescale_factor", 1e300), None, "rescale_factor"),
        (None, None, {"preprocessor_config.json": DEEP}, "nested too deeply"),
        (_vision("layer_norm_eps", INFINITE), None, None, "layer_norm_eps is inf"),
        (_vision("layer_norm_eps", 5.0), None, None, "layer_norm_eps is 5.0"),
        (_vision("layer_norm_eps", 0), None, None, "layer_norm_eps is 0"),
        (_vision("hidden_size", 10**9), None, None, "hidden_size is 1000000000"),
        (_vision("num_channels", 4), None, None, "num_channels"),
    ],
)
def test_clip_numbers_no_clip_has_are_named_errors(tiny_clip, tmp_path, config, preprocessor, raw, message):
    import torch

    from geoclip_qgis.backend.errors import WeightsError
    from geoclip_qgis.backend.model import backbone

    folder = _altered_clip(tiny_clip, tmp_path / "clip", config, preprocessor, raw)
    with pytest.raises(WeightsError, match=re.escape(message)):
        backbone.load_image_processor(folder)  # the engine loads the preprocessing first
    if config is not None:  # and the tower refuses the same numbers on its own
        with pytest.raises(WeightsError, match=re.escape(message)):
            backbone.load_vision_tower(folder, torch.device("cpu"), torch.float32)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_hostile_clip_folders_stop_the_command_with_exit_2(engine, tiny_clip, kauai_png, tmp_path):
    from geoclip_qgis.backend.errors import WeightsError
    from geoclip_qgis.backend.store import bundles, weights

    huge = _altered_clip(tiny_clip, tmp_path / "huge", preprocessor=_set("size", {"shortest_edge": 1_000_000}))
    named_error(cli("predict", kauai_png, "--clip", huge, "--quiet"), "size.shortest_edge is 1000000")

    nan = _altered_clip(tiny_clip, tmp_path / "nan", config=_vision("layer_norm_eps", float("nan")))
    assert "NaN" in (nan / "config.json").read_text()
    assert "NaN is not a number" in weights.backbone_problem(nan)
    named_error(cli("predict", kauai_png, "--clip", nan, "--quiet"), "NaN is not a number")

    deep = _altered_clip(tiny_clip, tmp_path / "deep", raw={"config.json": DEEP})
    assert "nested too deeply" in weights.backbone_problem(deep)
    named_error(cli("predict", kauai_png, "--clip", deep, "--quiet"), "nested too deeply")

    bundle = tmp_path / "deep.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("manifest.json", DEEP)
    with pytest.raises(WeightsError, match="not readable JSON"):
        bundles.import_models(bundle)


# --------------------------------------------------------------------- 6. inputs that crashed


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_inputs_that_ended_in_tracebacks_are_named_errors(tiny_clip, tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("photo,lat,lon\nok.jpg,1,2\nété.jpg,1,2\n".encode("latin-1"))
    named_error(cli("evaluate", latin1, "--clip", tiny_clip), "line 3", "not UTF-8")
    short = tmp_path / "short.csv"
    short.write_text("lat,lon,photo\n1,2\n")
    named_error(cli("evaluate", short, "--clip", tiny_clip), "line 2", "2 value(s) where the header has 3 columns")
    wide = tmp_path / "wide.csv"
    wide.write_text("photo,lat,lon\n" + "a" * 200_000 + ",1,2\n")
    named_error(cli("evaluate", wide, "--clip", tiny_clip), "line 2", "field larger than field limit")

    named_error(cli("embedmap", tmp_path / "m.tif", "--cell", "1e-9"), "a cell of 1e-09 degrees")
    named_error(cli("similar", "10", "10", "--raster", tmp_path / "s.tif", "--cell", "1e-9"), "a cell of 1e-09")
    named_error(
        cli("embedmap", tmp_path / "m.tif", "--cell", "0.01", "--tile-rows", "100000000"),
        "GB of features in memory",
        "at most 29 rows",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.csv", "short.csv", "wide.csv"]


# ------------------------------------------------------------------------------ 7. cache privacy


def test_the_regions_cache_folder_is_private(tmp_path):
    from geoclip_qgis.backend.earth import regions

    zeros = np.zeros(2, np.int32)
    made = regions.RegionAssignment(zeros, zeros, zeros.astype(np.float32), ["FR"], ["France"], ["Paris"], zeros[:1])
    path = tmp_path / "cache" / "regions" / "gallery.npz"
    regions._write_assignment(path, made)
    assert path.is_file()
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(path.parent.parent.stat().st_mode & 0o777) == "0o700"  # a cache folder it had to make, too
