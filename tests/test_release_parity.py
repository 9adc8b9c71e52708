"""The engine against the official geoclip release, with the same weights on both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geoclip_qgis.backend.heads import LOCATION_ENCODER_FILE, HeadsFiles, load_heads, save_heads

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
    return release_module.GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip)).eval()


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
