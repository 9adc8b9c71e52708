"""The image loader and EXIF reader on real and deliberately broken files."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoclip_qgis.backend.errors import PhotoError
from geoclip_qgis.backend.photos.loader import DECODE_MIN_SIDE, open_photo


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose IHDR is rewritten to claim another size (CRC fixed up)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def truncated_copy(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def corrupted_copy(source: Path, target: Path, seed: int = 7) -> Path:
    """A JPEG whose scan data has runs of bytes overwritten at random: headers intact, pixels garbage."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(seed)
    start = len(data) // 4
    for offset in rng.integers(start, len(data) - 64, size=40):
        data[offset : offset + 32] = rng.integers(0, 256, size=32, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


@pytest.fixture
def bad_files(tmp_path, samples):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    truncated_copy(samples / "gps" / "DSCN0010.jpg", folder / "truncated.jpg")
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    png_claiming(folder / "bomb.png", 40000, 40000)
    return folder


EXPECTED_MESSAGES = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "notes.jpg": "not an image",
    "bomb.png": "1600 MP is over the",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MESSAGES))
def test_bad_file_gets_its_own_message(bad_files, name):
    with pytest.raises(PhotoError) as caught:
        open_photo(bad_files / name)
    assert EXPECTED_MESSAGES[name] in str(caught.value)


def test_unreadable_file(tmp_path, skimage_data):
    """Permission denied is reported as such; as root the check runs as an unprivileged user."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"geoclip-unreadable-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        folder.chmod(0o755)
        photo = folder / "locked.png"
        shutil.copy(skimage_data / "camera.png", photo)
        photo.chmod(0o000)
        code = (
            "import sys\nfrom geoclip_qgis.backend.photos.loader import open_photo\n"
            "from geoclip_qgis.backend.errors import PhotoError\n"
            "try:\n    open_photo(sys.argv[1])\nexcept PhotoError as e:\n    print(e)\n"
        )
        user = "nobody" if os.geteuid() == 0 else None
        out = subprocess.run(
            [sys.executable, "-c", code, str(photo)], user=user, capture_output=True, text=True, timeout=120, cwd="/"
        )
        assert "permission denied" in out.stdout, out.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(PhotoError, match="file not found"):
        open_photo(tmp_path / "nope.jpg")
    with pytest.raises(PhotoError, match="not a regular file"):
        open_photo(tmp_path)
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(PhotoError, match="symbolic links|cannot open"):
        open_photo(tmp_path / "loop.jpg")


def test_broken_sample_files_neither_hang_nor_crash(samples, tmp_path):
    """Files that broke EXIF readers before: each decodes or gives a PhotoError, quickly."""
    broken = sorted((samples / "broken").glob("*.jpg")) + sorted((samples / "exif-quirks").glob("*.jpg"))
    broken.append(corrupted_copy(samples / "gps" / "DSCN0021.jpg", tmp_path / "corrupted.jpg"))
    code = (
        "import sys\nfrom geoclip_qgis.backend.photos.loader import open_photo\n"
        "from geoclip_qgis.backend.errors import PhotoError\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        ph = open_photo(p); print('ok', ph.image.mode, p)\n"
        "    except PhotoError as e:\n        print('error', p, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *map(str, broken)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(broken)
    assert all(line.startswith(("ok RGB", "error")) for line in lines)


def _exiftool_gps(paths):
    if shutil.which("exiftool") is None:
        pytest.fail("exiftool is missing; `make setup` installs it (libimage-exiftool-perl)")
    out = subprocess.run(
        ["exiftool", "-n", "-j", "-GPSLatitude", "-GPSLongitude", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        Path(row["SourceFile"]).name: (row.get("GPSLatitude"), row.get("GPSLongitude"))
        for row in json.loads(out.stdout)
    }


def test_exif_gps_reads_as_exiftool_does(samples):
    paths = sorted((samples / "gps").glob("*.jpg")) + sorted((samples / "exif-quirks").glob("*.jpg"))
    reference = _exiftool_gps(paths)
    with_gps = 0
    for path in paths:
        lat, lon = reference[path.name]
        meta = open_photo(path).metadata
        if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
            with_gps += 1
            assert meta.latitude == pytest.approx(lat, abs=1e-9), path.name
            assert meta.longitude == pytest.approx(lon, abs=1e-9), path.name
        else:
            assert meta.latitude is None and meta.longitude is None, path.name
    assert with_gps >= 11  # nine camera photos plus two in tests/


def test_gps_signs_and_refs():
    """South and west are negative; a missing or unknown reference leaves the position empty."""
    from PIL import ExifTags

    from geoclip_qgis.backend.photos.exif import read_metadata

    def photo_with(gps: dict) -> Image.Image:
        image = Image.new("RGB", (8, 8))
        exif = image.getexif()
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
        data = exif.tobytes()
        path = Path(os.environ["GEOCLIP_CACHE_DIR"]) / "gps_probe.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, exif=data)
        return Image.open(path)

    tags = ExifTags.GPS
    south_west = photo_with(
        {
            tags.GPSLatitudeRef: "S",
            tags.GPSLatitude: (33.0, 52.0, 7.68),
            tags.GPSLongitudeRef: "W",
            tags.GPSLongitude: (70.0, 30.0, 0.0),
        }
    )
    meta = read_metadata(south_west)
    assert meta.latitude == pytest.approx(-(33 + 52 / 60 + 7.68 / 3600))
    assert meta.longitude == pytest.approx(-70.5)
    no_ref = photo_with({tags.GPSLatitude: (10.0, 0.0, 0.0), tags.GPSLongitude: (10.0, 0.0, 0.0)})
    assert read_metadata(no_ref).latitude is None
    out_of_range = photo_with(
        {
            tags.GPSLatitudeRef: "N",
            tags.GPSLatitude: (200.0, 0.0, 0.0),
            tags.GPSLongitudeRef: "E",
            tags.GPSLongitude: (10.0, 0.0, 0.0),
        }
    )
    assert read_metadata(out_of_range).latitude is None


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_all_eight_orientations_come_out_upright(samples, kind):
    """Each file, once its EXIF orientation is applied, matches the upright scene better than any
    flip or rotation of it would."""
    folder = samples / "orientation"

    def thumb(image):
        return np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)

    upright = open_photo(folder / f"{kind}_1.jpg").image
    reference = thumb(upright)
    wrong_ways = list(Image.Transpose)  # the seven non-identity flips and rotations
    for n in range(1, 9):
        photo = open_photo(folder / f"{kind}_{n}.jpg")
        assert photo.metadata.orientation == n
        assert photo.image.size == upright.size, n
        right = np.abs(thumb(photo.image) - reference).mean()
        wrong = min(np.abs(thumb(photo.image.transpose(t)) - reference).mean() for t in wrong_ways)
        assert right < 0.5 * wrong, (n, right, wrong)


def test_modes_become_rgb(tmp_path, skimage_data):
    base = Image.open(skimage_data / "astronaut.png")
    grey16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode.startswith("I;16")
    cases = {
        "L": base.convert("L"),
        "P": base.quantize(32),
        "CMYK": base.convert("CMYK"),
        "I;16": grey16,
        "LA": base.convert("LA"),
    }
    for mode, image in cases.items():
        path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png' if mode != 'I;16' else 'tif'}"
        image.save(path)
        photo = open_photo(path)
        assert photo.image.mode == "RGB", mode
    # 16-bit is scaled, not clipped to white
    pixels = np.asarray(open_photo(tmp_path / "I16.tif").image)
    assert 40 < pixels.mean() < 200
    # translucent pixels are shown over white, as a viewer shows them
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert np.asarray(open_photo(clear).image).min() == 255


def test_large_jpeg_is_decoded_reduced(tmp_path, skimage_data):
    big = Image.open(skimage_data / "astronaut.png").resize((3000, 2000))
    big.save(tmp_path / "big.jpg", quality=90)
    photo = open_photo(tmp_path / "big.jpg")
    assert photo.original_size == (3000, 2000)
    assert min(photo.image.size) >= DECODE_MIN_SIDE
    assert photo.image.size[0] < 3000


# ---- the release's decoding (Preprocessing.RELEASE, evaluate --preprocessing release) ----------------


def release_cases(tmp_path: Path, skimage_data: Path, samples: Path) -> dict[str, Path]:
    """Files the engine's way and the release's way read differently, each in its own way."""
    base = Image.open(skimage_data / "astronaut.png").convert("RGB")
    translucent = base.convert("RGBA")
    translucent.putalpha(Image.linear_gradient("L").resize(base.size))
    cases = {
        "EXIF-rotated JPEG": samples / "orientation" / "landscape_6.jpg",
        "semi-transparent PNG": tmp_path / "translucent.png",
        "palette with a transparent colour": tmp_path / "palette.png",
        "16-bit grey": tmp_path / "grey16.tif",
        "large JPEG": tmp_path / "large.jpg",
    }
    translucent.save(cases["semi-transparent PNG"])
    palette = base.quantize(64)
    darkest = int(np.argmin(np.asarray(palette.getpalette()[: 64 * 3]).reshape(64, 3).sum(axis=1)))
    palette.save(cases["palette with a transparent colour"], transparency=darkest)
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(cases["16-bit grey"])
    base.resize((3000, 2000)).save(cases["large JPEG"], quality=90)
    return cases


def test_release_preprocessing_decodes_as_the_release(tmp_path, skimage_data, samples):
    """Preprocessing.RELEASE gives the pixels of the release's ``Image.open(path).convert("RGB")``, bit
    for bit (in full, as stored, alpha dropped, 16 bits clipped); the engine's way differs on each file."""
    from geoclip_qgis.backend.photos.loader import Preprocessing

    for kind, path in release_cases(tmp_path, skimage_data, samples).items():
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"))
        release = open_photo(path, preprocessing=Preprocessing.RELEASE)
        assert release.image.mode == "RGB", kind
        np.testing.assert_array_equal(np.asarray(release.image), expected, err_msg=kind)
        engine = np.asarray(open_photo(path).image)
        assert engine.shape != expected.shape or np.abs(engine.astype(int) - expected).max() > 20, kind
    # the same from a PIL image as from its file
    image = Image.open(samples / "orientation" / "landscape_6.jpg")
    assert open_photo(image, preprocessing=Preprocessing.RELEASE).image.size == (112, 150)


def test_an_unknown_preprocessing_is_a_named_error(tiny_clip):
    from geoclip_qgis.backend import build_engine
    from geoclip_qgis.backend.errors import GeoCLIPError
    from geoclip_qgis.backend.photos.loader import Preprocessing

    assert Preprocessing.parse("release") is Preprocessing.RELEASE
    with pytest.raises(GeoCLIPError, match="unknown preprocessing 'paper': use one of engine, release"):
        build_engine(clip=tiny_clip, device="cpu", preprocessing="paper")
    out = subprocess.run(
        [sys.executable, "-m", "geoclip_qgis.backend", "evaluate", "x.csv", "--preprocessing", "paper"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "invalid choice: 'paper'" in out.stderr and "Traceback" not in out.stderr


def test_release_preprocessing_reads_heic_in_full(samples):
    pytest.importorskip("pillow_heif", reason="HEIC needs the optional pillow-heif")
    from geoclip_qgis.backend.photos.loader import Preprocessing

    photo = open_photo(samples / "heic" / "IMG_5195.HEIC", preprocessing=Preprocessing.RELEASE)
    assert photo.image.size == photo.original_size and photo.image.mode == "RGB"


def clip_pixels(image: Image.Image) -> np.ndarray:
    """CLIP ViT-L/14's preprocessing of an RGB image, in grey levels (0-255)."""
    from clip_factory import OPENAI_PREPROCESSOR

    from geoclip_qgis.backend.model.backbone import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocessor

    pixels = ClipPreprocessor.from_config(OPENAI_PREPROCESSOR)(image)
    mean, std = (np.asarray(v, dtype=np.float64)[:, None, None] for v in (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    return (pixels * std + mean) * 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decoding_gives_clip_the_full_pictures_pixels(orientation, tmp_path, skimage_data):
    """A large photo decoded at reduced scale reaches CLIP as its full decode does: same crop, same
    sampling points (only the filtering before differs), in every EXIF orientation. Sizes that do not
    divide by the draft's 1/4 are where rounding after the reduction used to move the crop."""
    from geoclip_qgis.backend.photos import loader as photos

    upright = Image.open(skimage_data / "chelsea.png").convert("RGB").resize((3001, 2003), Image.Resampling.BICUBIC)
    inverse = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # the stored picture: upright turned the other way
    stored = upright.transpose(photos._UPRIGHT_TURN[inverse[orientation]]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo_{orientation}.jpg"
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as image:
        full = photos._decode(image, "full", min_side=None).image
    reduced = open_photo(path).image
    assert full.size == upright.size and max(reduced.size) < 1000  # it was decoded reduced
    assert photos.FULL_GEOMETRY in reduced.info and photos.FULL_GEOMETRY not in full.info
    want = clip_pixels(full)
    got = clip_pixels(reduced)
    assert np.abs(got - want).mean() < 0.5 and np.abs(got - want).max() < 8, np.abs(got - want).max()
    reduced.info.pop(photos.FULL_GEOMETRY)  # as before: sizes rounded after the reduction
    assert np.abs(clip_pixels(reduced) - want).mean() > 2 * np.abs(got - want).mean()


def test_integer_reduction_gives_clip_the_full_pictures_pixels(tmp_path, skimage_data):
    """The same for a PNG, shrunk by a whole factor (3) that does not divide its size."""
    from geoclip_qgis.backend.photos import loader as photos

    path = tmp_path / "large.png"
    Image.open(skimage_data / "astronaut.png").convert("RGB").resize((2003, 1501), Image.Resampling.BICUBIC).save(path)
    with Image.open(path) as image:
        want = clip_pixels(photos._decode(image, "full", min_side=None).image)
    reduced = open_photo(path).image
    assert reduced.size == (668, 501)
    got = clip_pixels(reduced)
    assert np.abs(got - want).mean() < 0.5 and np.abs(got - want).max() < 12, np.abs(got - want).max()
    reduced.info.pop(photos.FULL_GEOMETRY)
    assert np.abs(clip_pixels(reduced) - want).mean() > 2 * np.abs(got - want).mean()
