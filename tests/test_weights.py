"""Where weights come from: order of lookup, clear messages, checks, import."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from clip_factory import make_clip_checkpoint

from geoclip_qgis.backend.errors import WeightsError
from geoclip_qgis.backend.model.heads import LOCATION_ENCODER_FILE, HeadsFiles, load_heads
from geoclip_qgis.backend.store import bundles, weights


@pytest.fixture
def heads_copy(tmp_path, wheel_model_dir) -> Path:
    target = tmp_path / "my-heads"
    shutil.copytree(wheel_model_dir / "weights", target / "weights")
    (target / "gps_gallery").mkdir()
    (target / "gps_gallery" / "coords.csv").write_text("LAT,LON\n10.5,20.25\n-33.0,151.0\n")
    return target


def test_heads_lookup_order(heads_copy, wheel_model_dir, monkeypatch, tmp_path):
    assert weights.find_heads().source == "geoclip wheel"
    assert weights.find_heads().path == wheel_model_dir
    models_heads = Path(weights.models_dir()) / "heads"
    shutil.copytree(heads_copy, models_heads)
    try:
        assert weights.find_heads().source == "models folder"
        monkeypatch.setenv("GEOCLIP_HEADS", str(heads_copy))
        assert weights.find_heads().source == "$GEOCLIP_HEADS"
        assert weights.find_heads(str(wheel_model_dir)).source == "--heads"
    finally:
        shutil.rmtree(models_heads)


def test_named_folder_is_never_silently_replaced(tmp_path):
    with pytest.raises(WeightsError) as caught:
        weights.resolve_heads(tmp_path / "typo")
    message = str(caught.value)
    assert "GeoCLIP heads not found" in message
    assert f"--heads: {tmp_path / 'typo'} (no such folder)" in message
    assert "To fix:" in message and "geoclip-qgis models import" in message


def test_missing_backbone_message_names_places_and_fix(monkeypatch):
    with pytest.raises(WeightsError) as caught:
        weights.resolve_backbone()
    message = str(caught.value)
    assert "CLIP backbone (openai/clip-vit-large-patch14) not found" in message
    assert "models folder" in message and "Hugging Face cache" in message
    assert "geoclip-qgis models download" in message


def test_backbone_from_env_and_hf_cache(tiny_clip, monkeypatch, tmp_path):
    monkeypatch.setenv("GEOCLIP_CLIP", str(tiny_clip))
    assert weights.find_backbone().source == "$GEOCLIP_CLIP"
    monkeypatch.delenv("GEOCLIP_CLIP")
    # A Hugging Face cache entry laid out as huggingface_hub writes it, found offline.
    hub = tmp_path / "hub"
    repo = hub / "models--openai--clip-vit-large-patch14"
    snapshot = repo / "snapshots" / weights.BACKBONE_REVISION
    shutil.copytree(tiny_clip, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(weights.BACKBONE_REVISION)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    found = weights.find_backbone()
    assert found.source == "Hugging Face cache" and found.path == snapshot


def test_narrow_projection_is_refused(tmp_path):
    narrow = make_clip_checkpoint(tmp_path / "b32", projection_dim=512, with_text=False)
    with pytest.raises(WeightsError, match="projection is 512 wide; GeoCLIP's image head needs 768"):
        weights.resolve_backbone(narrow)


def test_wrong_heads_are_refused_with_reason(heads_copy):
    files = HeadsFiles(heads_copy, heads_copy / "gps_gallery" / "coords.csv")
    path = heads_copy / "weights" / LOCATION_ENCODER_FILE
    state = torch.load(path, weights_only=True)
    state["LocEnc0.head.0.weight"] = torch.zeros(256, 1024)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"head.weight has shape \(256, 1024\), expected \(512, 1024\)"):
        load_heads(files)
    del state["LocEnc1.capsule.0.b"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing keys"):
        load_heads(files)


def test_pickled_objects_are_not_executed(heads_copy, tmp_path):
    """A heads file holding an arbitrary pickled object is refused, and its code never runs."""
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"0.weight": Payload()}, heads_copy / "weights" / "image_encoder_mlp_weights.pth")
    with pytest.raises(WeightsError, match="cannot read GeoCLIP heads file"):
        load_heads(HeadsFiles(heads_copy, heads_copy / "gps_gallery" / "coords.csv"))
    assert not marker.exists()


def test_import_folder(heads_copy, tmp_path):
    assert bundles.import_models(heads_copy) == ["heads"]
    assert weights.find_heads().source == "models folder"
    shutil.rmtree(weights.models_dir())
    with pytest.raises(WeightsError, match="nothing to import"):
        bundles.import_models(tmp_path / "my-heads" / "weights")


def test_bundle_round_trip_and_tampering(heads_copy, tiny_clip, kauai_png, tmp_path):
    bundle = bundles.export_bundle(tmp_path / "bundle.zip", heads=str(heads_copy), clip=str(tiny_clip))
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert "heads/weights/location_encoder_weights.pth" in manifest["files"]
    assert f"{weights.BACKBONE_FOLDER}/model.safetensors" in manifest["files"]

    # one byte changed in one file: refused, naming the file, and nothing lands in the models folder
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = bytearray(source.read(item))
            if item.filename == "heads/weights/logit_scale_weights.pth":
                data[len(data) // 2] ^= 0x01
            target.writestr(item, bytes(data))
    with pytest.raises(WeightsError, match="heads/weights/logit_scale_weights.pth fails its checksum"):
        bundles.import_models(tampered)
    assert not weights.models_dir().exists() or not any(weights.models_dir().iterdir())

    assert sorted(bundles.import_models(bundle)) == sorted(["heads", weights.BACKBONE_FOLDER])
    found = weights.find_backbone()
    assert found.source == "models folder"
    assert (found.path / "model.safetensors").read_bytes() == (tiny_clip / "model.safetensors").read_bytes()
    from geoclip_qgis.backend import build_engine  # the imported models run, found with no arguments

    engine = build_engine(device="cpu", precision="fp32", embedding_cache=False)
    assert engine.files.heads_source == "models folder" and engine.files.clip_source == "models folder"
    result = engine.predict([kauai_png], top_k=1)[0]
    assert result.ok and len(engine.gallery) == 2  # heads_copy's own two-point gallery
    shutil.rmtree(weights.models_dir())


def test_zip_without_manifest_is_refused(tiny_clip, tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        for path in tiny_clip.rglob("*"):
            archive.write(path, f"bundle/{weights.BACKBONE_FOLDER}/{path.relative_to(tiny_clip)}")
    with pytest.raises(WeightsError, match="not a GeoCLIP model bundle"):
        bundles.import_models(plain)


@pytest.mark.parametrize(
    "name", ["../../escaped.pth", "heads/../../escaped.pth", "/etc/escaped.pth", "heads/weights/run.py"]
)
def test_bundle_entries_outside_the_bundle_or_not_model_files_are_refused(tmp_path, name):
    """Manifest names are checked before a byte is extracted: no '..', no absolute paths, no code."""
    bundle = tmp_path / "evil.zip"
    manifest = {"format": bundles.BUNDLE_FORMAT, "files": {name: {"bytes": 1, "sha256": "0" * 64}}}
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr(name, "x")
    with pytest.raises(WeightsError, match="not a model file path"):
        bundles.import_models(bundle)
    assert not (tmp_path.parent / "escaped.pth").exists() and not Path("/etc/escaped.pth").exists()


def test_status_reports_files_and_checksums(tiny_clip):
    report = weights.status(clip=str(tiny_clip))
    assert report["heads"]["found"] and report["backbone"]["found"]
    files = {row["file"]: row for row in report["heads"]["files"]}
    row = files["weights/logit_scale_weights.pth"]
    assert row["sha256"] == weights.sha256_file(Path(report["heads"]["path"]) / row["file"])
    assert row["bytes"] > 0
