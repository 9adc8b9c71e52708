"""The engine against the official geoclip release, with the same weights on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoclip_qgis.backend.model.heads import LOCATION_ENCODER_FILE, HeadsFiles, load_heads, save_heads

# Poles, the antimeridian from both sides, the equator and a few places between.
SPREAD = [
    (90.0, 0.0),
    (-90.0, 0.0),
    (89.999, 179.9),
    (-89.5, -179.5),
    (0.0, 0.0),
    (0.0, 180.0),
    (0.0, -180.0),
    (0.0, 179.999),
    (0.0, -179.999),
    (51.5074, -0.1278),
    (-33.8688, 151.2093),
    (21.9, -159.5),
    (64.1466, -21.9426),
    (-54.8, -68.3),
    (35.6762, 139.6503),
    (-1.2921, 36.8219),
]


@pytest.fixture(scope="session")
def release_model(release_module, tiny_clip):
    """The release's model, its code unchanged but for one thing: its predict() encodes the whole 100K
    gallery through the location encoder on every call (about 20 s a photo here). The gallery is the same
    tensor each time, so the encoder's output for it is computed by that same encoder once and handed
    back after; any other input is encoded as the release does."""
    model = release_module.GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip)).eval()
    encode, gallery = model.location_encoder.forward, model.gps_gallery
    encoded = {}

    def gallery_once(location):
        if location is not gallery:
            return encode(location)
        if "gallery" not in encoded:
            with torch.no_grad():
                encoded["gallery"] = encode(location)
        return encoded["gallery"]

    model.location_encoder.forward = gallery_once
    return model


def test_location_encoder_matches_release(release_module, wheel_model_dir):
    reference = release_module.LocationEncoder(from_pretrained=True).eval()
    ours = load_heads(HeadsFiles(wheel_model_dir, wheel_model_dir / "gps_gallery" / "coordinates_100K.csv"))
    points = torch.tensor(SPREAD, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(points)
        got = ours.location_encoder(points)
    assert expected.norm(dim=1).min() > 0.1  # real weights, not zeros
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # Distinct places give distinct features (a broken projection would collapse them).
    assert torch.cdist(got, got).fill_diagonal_(1e9).min() > 1e-3


def test_saved_heads_load_in_the_release(release_module, wheel_model_dir, tmp_path):
    """Our writer produces the release's layout: the release's own loader reads it back."""
    ours = load_heads(HeadsFiles(wheel_model_dir, wheel_model_dir / "gps_gallery" / "coordinates_100K.csv"))
    with torch.no_grad():
        ours.location_encoder.capsules[0].head.bias.add_(0.5)
    save_heads(ours, tmp_path)
    reference = release_module.LocationEncoder(from_pretrained=False)
    reference.load_state_dict(torch.load(tmp_path / "weights" / LOCATION_ENCODER_FILE, weights_only=True))
    points = torch.tensor(SPREAD, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reference(points), ours.location_encoder(points), rtol=0, atol=1e-6)


@pytest.fixture
def parity_photos(tmp_path, skimage_data, kauai_png, samples):
    """Real photos in the modes the release and the engine must agree on."""
    palette = tmp_path / "chelsea_palette.png"
    Image.open(skimage_data / "chelsea.png").quantize(64).save(palette)
    photos = {
        "RGB PNG": skimage_data / "astronaut.png",
        "RGB JPEG": skimage_data / "rocket.jpg",
        "camera JPEG": samples / "gps" / "DSCN0010.jpg",
        "RGBA": kauai_png,
        "grayscale": skimage_data / "camera.png",
        "palette": palette,
    }
    assert {Image.open(p).mode for p in photos.values()} >= {"RGB", "RGBA", "L", "P"}
    return photos


@pytest.mark.slow
def test_top5_matches_release(release_model, engine, parity_photos):
    ours = engine.predict(list(parity_photos.values()), top_k=5)
    top1 = set()
    for (kind, path), result in zip(parity_photos.items(), ours):
        assert result.ok, (kind, result.error)
        gps, probs = release_model.predict(str(path), top_k=5)
        got_gps = np.array([[c.lat, c.lon] for c in result.candidates])
        got_probs = np.array([c.probability for c in result.candidates])
        np.testing.assert_array_equal(got_gps, gps.numpy(), err_msg=kind)
        np.testing.assert_allclose(got_probs, probs.numpy(), rtol=1e-3, err_msg=kind)
        assert np.all(np.diff(got_probs) <= 0), "candidates are best first"
        top1.add((round(got_gps[0, 0], 4), round(got_gps[0, 1], 4)))
    # Different photos must get different answers, or the comparison proves little.
    assert len(top1) >= 4, top1


# ---- the release's own preprocessing (evaluate --preprocessing release) -----------------------------


@pytest.fixture
def photos_seen_differently(tmp_path, samples, skimage_data):
    """Photos whose pixels the engine's way and the release's way differ on: an EXIF-rotated JPEG (the
    engine turns it upright, the release does not) and a semi-transparent PNG (the engine shows it over
    white, the release drops the alpha channel)."""
    translucent = tmp_path / "translucent.png"
    rgba = Image.open(skimage_data / "astronaut.png").convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # clear at the top, opaque at the bottom
    rgba.save(translucent)
    rotated = samples / "orientation" / "landscape_6.jpg"
    assert Image.open(rotated).getexif().get(0x0112) == 6
    return {"EXIF-rotated JPEG": rotated, "semi-transparent PNG": translucent}


def release_clip_embedding(release_model, path) -> np.ndarray:
    """The CLIP embedding the release's predict() computes for a photo, by its own steps: PIL open,
    .convert("RGB"), its CLIP processor, its CLIP model."""
    from geoclip.model.image_encoder import _extract_image_features

    with Image.open(path) as image:
        pixels = release_model.image_encoder.preprocess_image(image.convert("RGB"))
    with torch.no_grad():
        output = release_model.image_encoder.CLIP.get_image_features(pixel_values=pixels)
    return _extract_image_features(output)[0].numpy()


def clip_embeddings(engine, paths) -> list[np.ndarray]:
    rows = list(engine.embed_iter(paths))
    assert all(error is None for _, _, _, error in rows), rows
    return [embedding for _, embedding, _, _ in rows]


def test_release_preprocessing_gives_the_release_embeddings(
    release_model, engine, tiny_clip, photos_seen_differently, tmp_path
):
    """With the release's preprocessing the engine sees what the release sees, through its own pipeline
    and embedding cache; the engine's way differs on these photos. The cache never hands one way's
    embedding to the other."""
    from geoclip_qgis.backend import build_engine
    from geoclip_qgis.backend.store.embedding_cache import EmbeddingCache

    paths = list(photos_seen_differently.values())
    shared = EmbeddingCache(tmp_path / "embeddings.sqlite")

    def built(preprocessing):
        return build_engine(clip=tiny_clip, device="cpu", precision="fp32", batch_size=4, preprocessing=preprocessing)

    engine_way, release_way = built("engine"), built("release")
    engine_way.embeddings = release_way.embeddings = shared
    assert engine_way.backbone_key != release_way.backbone_key
    engine_way.load()
    release_way.load()
    first = clip_embeddings(engine_way, paths)  # cached under the engine's key first
    assert len(shared) == len(paths)
    for _ in range(2):  # computed, then read back from the cache
        got = clip_embeddings(release_way, paths)
        for kind, path, ours, default in zip(photos_seen_differently, paths, got, first):
            expected = release_clip_embedding(release_model, path)
            np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5 * np.abs(expected).max(), err_msg=kind)
            # the engine's way is another picture: far beyond float noise
            assert np.abs(default - expected).max() > 0.05 * np.abs(expected).max(), kind
    assert len(shared) == 2 * len(paths)
    np.testing.assert_array_equal(np.stack(clip_embeddings(engine, paths)), np.stack(first))
    # A large photo, which the engine's way decodes at reduced scale, is read in full as the release reads it.
    large = tmp_path / "large.jpg"
    Image.open(photos_seen_differently["semi-transparent PNG"]).convert("RGB").resize((3000, 2000)).save(large)
    expected = release_clip_embedding(release_model, large)
    np.testing.assert_allclose(
        clip_embeddings(release_way, [large])[0], expected, rtol=0, atol=2e-5 * np.abs(expected).max()
    )


@pytest.mark.slow
def test_evaluate_with_the_release_preprocessing_answers_as_predict(
    release_model, engine, tiny_clip, photos_seen_differently, tmp_path
):
    """``evaluate --preprocessing release`` gives, photo by photo, the top-5 places and probabilities of
    the release's ``predict()``; without it, the answers differ."""
    import csv

    from test_cli import run

    table = tmp_path / "truth.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "lat", "lon"])
        writer.writerows([str(path), 21.9, -159.5] for path in photos_seen_differently.values())
    answers = {}
    for way in ("release", "engine"):
        out = tmp_path / f"{way}.csv"
        run("evaluate", table, "--clip", tiny_clip, "--precision", "fp32", "--preprocessing", way, "--out", out)
        rows = list(csv.DictReader(open(out, newline="")))
        answers[way] = {}
        for r in rows:
            answer = (int(r["rank"]), float(r["lat"]), float(r["lon"]), float(r["probability"]))
            answers[way].setdefault(Path(r["photo"]).name, []).append(answer)
    for kind, path in photos_seen_differently.items():
        gps, probs = release_model.predict(str(path), top_k=5)
        ours = sorted(answers["release"][path.name])
        np.testing.assert_array_equal([(lat, lon) for _, lat, lon, _ in ours], gps.numpy(), err_msg=kind)
        np.testing.assert_allclose([p for *_, p in ours], probs.numpy(), rtol=1e-3, err_msg=kind)
        default = sorted(answers["engine"][path.name])
        assert [p for *_, p in default] != pytest.approx([p for *_, p in ours], rel=1e-2), kind
