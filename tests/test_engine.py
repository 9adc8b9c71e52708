"""Prediction behaviour of the engine: batching, caching, precision, inputs, bad photos in a batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoclip_qgis.backend import GeoCLIPError, build_engine
from geoclip_qgis.backend.model import gallery as gallery_module
from geoclip_qgis.backend.photos.walk import expand_paths


def test_candidates_are_ranked_probabilities(engine, photo_dir):
    results = engine.predict(sorted(photo_dir.iterdir()), top_k=7)
    assert len(results) == 4
    for result in results:
        assert result.ok
        probs = [c.probability for c in result.candidates]
        assert [c.rank for c in result.candidates] == list(range(1, 8))
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1.0 + 1e-6
        for c in result.candidates:
            assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180


def test_batching_does_not_change_answers(engine, photo_dir, tiny_clip):
    photos = sorted(photo_dir.iterdir())
    together = engine.predict(photos, top_k=3)
    single = build_engine(clip=tiny_clip, device="cpu", precision="fp32", batch_size=1, embedding_cache=False)
    one_by_one = single.predict(photos, top_k=3)
    for a, b in zip(together, one_by_one):
        assert [(c.lat, c.lon) for c in a.candidates] == [(c.lat, c.lon) for c in b.candidates]
        np.testing.assert_allclose(
            [c.probability for c in a.candidates], [c.probability for c in b.candidates], rtol=1e-4
        )


def test_pil_images_and_paths_agree(engine, photo_dir):
    path = photo_dir / "astronaut.png"
    from_path = engine.predict(path, top_k=3)[0]
    image = Image.open(path)
    from_image = engine.predict([image], top_k=3)[0]
    assert [c.lat for c in from_path.candidates] == [c.lat for c in from_image.candidates]
    unnamed = engine.predict([Image.new("RGB", (300, 200), (20, 120, 200))], top_k=1)[0]
    assert unnamed.photo == "<image 1>" and unnamed.ok


def test_exif_gps_and_error_km(engine, samples):
    result = engine.predict([samples / "gps" / "DSCN0010.jpg"], top_k=2)[0]
    assert result.exif_lat == pytest.approx(43.4674483, abs=1e-6)
    assert result.exif_lon == pytest.approx(11.8851267, abs=1e-6)
    top = result.candidates[0]
    # haversine on the 6371.0088 km sphere, computed independently here
    lat1, lon1, lat2, lon2 = map(np.radians, (result.exif_lat, result.exif_lon, top.lat, top.lon))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    assert result.error_km() == pytest.approx(2 * 6371.0088 * np.arcsin(np.sqrt(a)), rel=1e-9)
    rows = result.rows("m", "t")
    assert rows[1]["error_km"] == pytest.approx(result.error_km(result.candidates[1]))


def test_bad_inputs_in_a_batch(engine, photo_dir, tmp_path, samples):
    from test_photos import png_claiming, truncated_copy

    folder = photo_dir
    (folder / "empty.jpg").write_bytes(b"")
    truncated_copy(samples / "gps" / "DSCN0012.jpg", folder / "truncated.jpg")
    (folder / "notes.jpg").write_text("not a photo")
    png_claiming(folder / "bomb.png", 40000, 40000)
    (folder / "sub").mkdir()
    Image.open(photo_dir / "camera.png").save(folder / "sub" / "deep.png")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    unreadable = None
    if os.geteuid() != 0:  # root reads everything; test_photos covers this case as another user
        unreadable = folder / "locked.png"
        Image.open(photo_dir / "camera.png").save(unreadable)
        unreadable.chmod(0)
    items = list(expand_paths([folder]))
    results = engine.predict(items, top_k=3)
    by_name = {Path(r.photo).name: r for r in results}
    assert by_name["empty.jpg"].error == "empty file (0 bytes)"
    assert "truncated" in by_name["truncated.jpg"].error
    assert "not an image" in by_name["notes.jpg"].error
    assert "decompression bombs" in by_name["bomb.png"].error
    assert "symbolic link loop" in by_name["loop"].error
    if unreadable:
        assert "permission denied" in by_name["locked.png"].error
    answered = {name for name, r in by_name.items() if r.ok}
    assert answered == {"astronaut.png", "camera.png", "kauai.png", "DSCN0010.jpg", "deep.png"}
    assert all(len(by_name[n].candidates) == 3 for n in answered)
    errors = [r.error for r in results if not r.ok]
    assert len(set(errors)) == len(errors), "each bad input has its own message"


def test_gallery_features_are_cached_on_disk(engine, tiny_clip, monkeypatch):
    """A new engine (a new process, as far as the cache knows) reads the features from disk."""
    key = engine.gallery.key
    cache_file = Path(os.environ["GEOCLIP_CACHE_DIR"]) / "features" / f"{key}.safetensors"
    assert cache_file.is_file() and cache_file.stat().st_size > 100_000 * 512 * 4
    monkeypatch.setattr(gallery_module, "_memory", {})
    calls = []
    monkeypatch.setattr(gallery_module, "encode_locations", lambda *a, **k: calls.append(1))
    fresh = build_engine(clip=tiny_clip, device="cpu", precision="fp32").load()
    assert calls == []
    torch.testing.assert_close(fresh.gallery.features, engine.gallery.features)
    assert len(fresh.gallery) == 100_000


def test_damaged_cache_is_rebuilt(engine, tiny_clip, monkeypatch, tmp_path):
    monkeypatch.setenv("GEOCLIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gallery_module, "_memory", {})
    target = tmp_path / "features" / f"{engine.gallery.key}.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")
    small = torch.tensor([[10.0, 20.0], [-30.0, 40.0]])
    monkeypatch.setattr(gallery_module, "read_gallery_csv", lambda path: small.numpy())
    fresh = build_engine(clip=tiny_clip, device="cpu", precision="fp32").load()
    assert len(fresh.gallery) == 2
    torch.testing.assert_close(fresh.gallery.features, engine.heads.location_features(small))
    assert target.stat().st_size > 1000  # rewritten


def test_bf16_tracks_fp32(engine, tiny_clip, photo_dir):
    photos = sorted(photo_dir.iterdir())
    bf16 = build_engine(clip=tiny_clip, device="cpu", precision="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.precision == "bf16"
    fp32_top = [r.candidates[0] for r in engine.predict(photos, top_k=1)]
    bf16_res = bf16.predict(photos, top_k=50)
    for top, res in zip(fp32_top, bf16_res):
        assert (top.lat, top.lon) in {(c.lat, c.lon) for c in res.candidates}


def test_top_k_and_device_errors(engine, tiny_clip):
    with pytest.raises(GeoCLIPError, match="top_k must be between 1 and 100000"):
        list(engine.predict_iter(["x.jpg"], top_k=0))
    with pytest.raises(GeoCLIPError, match="CUDA is not available|only"):
        build_engine(clip=tiny_clip, device="cuda:0")
    with pytest.raises(GeoCLIPError, match="unknown device"):
        build_engine(clip=tiny_clip, device="tpu9")
    with pytest.raises(GeoCLIPError, match="unknown precision"):
        build_engine(clip=tiny_clip, precision="fp8")


def test_stopping_early_stops_the_work(engine, photo_dir, monkeypatch):
    """Closing the generator after the first result leaves later batches unencoded."""
    encoded = []
    original = engine.clip_embeddings
    monkeypatch.setattr(engine, "clip_embeddings", lambda px: encoded.append(len(px)) or original(px))
    photos = sorted(photo_dir.iterdir()) * 5  # 20 photos, batches of 4
    stream = engine.predict_iter(photos, top_k=1)
    next(stream)
    stream.close()
    assert encoded == [4]


def test_embedding_cache_skips_the_vision_tower(tiny_clip, photo_dir, tmp_path, monkeypatch):
    """A second run over the same photos (even renamed) reads embeddings instead of encoding."""
    import shutil

    monkeypatch.setenv("GEOCLIP_CACHE_DIR", str(tmp_path / "cache"))
    cached = build_engine(clip=tiny_clip, device="cpu", precision="fp32")
    first = cached.predict(sorted(photo_dir.iterdir()), top_k=3)
    calls = []
    original = cached.clip_embeddings
    monkeypatch.setattr(cached, "clip_embeddings", lambda px: calls.append(len(px)) or original(px))
    renamed = tmp_path / "moved"
    shutil.copytree(photo_dir, renamed)
    for path in renamed.iterdir():
        path.rename(path.with_name("renamed_" + path.name))
    second = cached.predict(sorted(renamed.iterdir()), top_k=3)
    assert calls == []
    for a, b in zip(first, second):
        assert [(c.lat, c.lon) for c in a.candidates] == [(c.lat, c.lon) for c in b.candidates]
        assert a.exif_lat == b.exif_lat
    assert any(r.exif_lat is not None for r in second)  # EXIF is still read for cached photos
