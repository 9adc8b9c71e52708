"""The image loader inside QGIS's process: HEIC decoded in a child process (pillow-heif never loaded
here), no format beyond photos (no Ghostscript for PostScript named .jpg), and every colour mode a
camera or an export writes decoding at reduced size."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoclip_qgis.backend import interpreter
from geoclip_qgis.backend.errors import PhotoError
from geoclip_qgis.backend.photos import loader as photos
from geoclip_qgis.backend.photos.decoding import PhotoPreparer, Prepared
from geoclip_qgis.backend.photos.loader import DECODE_MIN_SIDE, open_photo, probe_photo

ROOT = Path(__file__).resolve().parents[1]
needs_heif = pytest.mark.skipif(
    importlib.util.find_spec("pillow_heif") is None, reason="HEIC needs the optional pillow-heif"
)


@pytest.fixture
def heic(samples) -> Path:
    return samples / "heic" / "IMG_5195.HEIC"


def run_python(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (nothing this test session loaded) and return its JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- HEIC in a child process -------------------------------------------------------------------------


@needs_heif
def test_heic_is_decoded_in_a_child_and_matches_the_in_process_decode(heic):
    """The engine's process never imports pillow_heif nor maps its bundled libheif; the pixels,
    sizes and metadata it gets from the child are exactly those of decoding in-process."""
    result = run_python(
        """
        import json, sys
        import numpy as np
        from PIL import Image
        from geoclip_qgis.backend.photos import loader as photos

        path = sys.argv[1]
        photo = photos.open_photo(path)
        probed = photos.probe_photo(path)
        maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
        loaded = {
            "module": "pillow_heif" in sys.modules,
            "library": "pillow_heif" in maps or "libheif" in maps,
        }

        import pillow_heif  # the reference: the decode this process used to do itself

        pillow_heif.register_heif_opener()
        with Image.open(path, formats=("HEIF",)) as image:
            reference = photos._decode(image, path)
        print(json.dumps({
            "loaded": loaded,
            "same_pixels": bool(np.array_equal(np.asarray(photo.image), np.asarray(reference.image))),
            "sizes": [photo.image.size, reference.image.size, photo.original_size, reference.original_size],
            "same_metadata": photo.metadata == reference.metadata == probed,
            "gps": [photo.metadata.latitude, photo.metadata.longitude],
            "mode": photo.image.mode,
        }))
        """,
        str(heic),
    )
    assert result["loaded"] == {"module": False, "library": False}
    assert result["same_pixels"] and result["same_metadata"]
    shown, reference, original, reference_original = result["sizes"]
    assert shown == reference and original == reference_original == [2566, 3313]
    assert min(shown) >= DECODE_MIN_SIDE and result["mode"] == "RGB"
    assert result["gps"] == pytest.approx([39.0513, -94.2888], abs=1e-3)


SYSTEM_LIBHEIF = ctypes.util.find_library("heif")
QGIS_LIKE = """
import ctypes, sys
ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)  # as in QGIS: GDAL's libheif in the global scope
if sys.argv[3] == "engine":
    from geoclip_qgis.backend.photos.loader import open_photo, probe_photo
    photo = open_photo(sys.argv[1])
    print("decoded", photo.image.size, probe_photo(sys.argv[1]) == photo.metadata, flush=True)
else:  # what the engine used to do
    import pillow_heif
    from PIL import Image
    pillow_heif.register_heif_opener()
    Image.open(sys.argv[1]).load()
    print("decoded in-process", flush=True)
"""


@needs_heif
@pytest.mark.skipif(not SYSTEM_LIBHEIF or not sys.platform.startswith("linux"), reason="needs the system libheif")
def test_heic_decodes_with_the_system_libheif_loaded_as_in_qgis(heic):
    """QGIS has the system libheif (GDAL's HEIF driver) in its global symbol scope; pillow-heif's bundled
    libheif loaded beside it crashes the process (signal 11, checked here as the control). The engine,
    decoding in a child, reads the photo."""
    engine = subprocess.run(
        [sys.executable, "-c", QGIS_LIKE, str(heic), SYSTEM_LIBHEIF, "engine"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert engine.returncode == 0 and "decoded (514, 663) True" in engine.stdout, engine.stderr
    old = subprocess.run(
        [sys.executable, "-c", QGIS_LIKE, str(heic), SYSTEM_LIBHEIF, "old"], capture_output=True, text=True, timeout=300
    )
    # killed by a signal (what QGIS users saw), or 0 where the two libheif builds happen to coexist
    assert old.returncode <= 0, old.stderr


@needs_heif
def test_heic_is_found_by_its_bytes_not_its_name(heic, tmp_path):
    disguised = tmp_path / "holiday.jpg"
    shutil.copy(heic, disguised)
    photo = open_photo(disguised)
    assert photo.original_size == (2566, 3313) and photo.metadata.has_gps
    assert probe_photo(disguised) == photo.metadata


@needs_heif
def test_heic_over_the_pixel_limit_is_refused_by_the_child(heic, monkeypatch):
    monkeypatch.setattr(photos, "MAX_PIXELS", 2566 * 3313 - 1)
    for read in (open_photo, probe_photo):
        with pytest.raises(PhotoError, match=r"2566x3313 pixels, .* safety limit"):
            read(heic)


@needs_heif
def test_damaged_heic_gets_the_loaders_own_message(heic, tmp_path):
    damaged = tmp_path / "damaged.heic"
    damaged.write_bytes(heic.read_bytes()[:4000])
    with pytest.raises(PhotoError, match="damaged image data|truncated|not an image"):
        open_photo(damaged)


def fake_child(tmp_path: Path, monkeypatch, body: str) -> None:
    script = tmp_path / "fake_heif_child.py"
    script.write_text(textwrap.dedent(body))
    monkeypatch.setattr(photos, "HEIF_CHILD", script)


def answering(header, payload: bytes = b"") -> str:
    """A fake child's script that writes this answer (a header dict, or raw bytes after the magic line)."""
    line = header if isinstance(header, bytes) else json.dumps(header).encode()
    return f"import sys\nsys.stdout.buffer.write({b'GEOCLIP-HEIF 1' + bytes([10]) + line + bytes([10]) + payload!r})\n"


PIXELS_4x4 = {"format": "HEIF", "size": [4, 4], "mode": "RGB", "decoded_size": [4, 4], "exif": 0, "xmp": 0}
CHILD_FAILURES = {
    "segfault": ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", r"HEIC decoder crashed \(signal 11\)"),
    "exit": ("import sys\nsys.stderr.write('libheif: out of luck\\n')\nsys.exit(3)\n", r"exit status 3\) libheif"),
    "garbage": ("import sys\nsys.stdout.write('hello from a broken decoder')\n", "unreadable answer"),
    "nothing": ("", "unreadable answer"),
    "bad_json": (answering(b"{not json"), "unreadable answer"),
    "short": (answering({**PIXELS_4x4, "pixels": 48}, b"x" * 47), "unreadable answer"),
    "long": (answering({**PIXELS_4x4, "pixels": 48}, b"x" * 49), "unreadable answer"),
    "wrong_mode": (answering({**PIXELS_4x4, "mode": "P", "pixels": 16}, b"x" * 16), "unreadable answer"),
    "no_mode": (answering({"format": "HEIF", "size": [4, 4], "exif": 0, "xmp": 0, "pixels": 0}), "unreadable answer"),
    "odd_error": (answering({"error": ["SIGSEGV"]}), "unreadable answer"),
    "unknown_error": (answering({"error": "RuntimeError", "message": "heif_decode"}), "decoder failed: RuntimeError"),
}


@pytest.mark.parametrize("failure", sorted(CHILD_FAILURES))
def test_a_failing_decoder_is_that_photos_error_and_the_batch_goes_on(failure, heic, samples, tmp_path, monkeypatch):
    body, message = CHILD_FAILURES[failure]
    fake_child(tmp_path, monkeypatch, body)
    prepare = PhotoPreparer(preprocess=lambda image: np.zeros((3, 2, 2), np.float32))
    outcomes = [prepare(path, path.name) for path in (heic, samples / "gps" / "DSCN0010.jpg")]
    assert isinstance(outcomes[0], PhotoError) and re.search(message, str(outcomes[0])), outcomes[0]
    assert isinstance(outcomes[1], Prepared)


def test_a_well_formed_answer_is_the_photo(heic, tmp_path, monkeypatch):
    """The other side of the checks above: what the child announces is what the loader rebuilds."""
    fake_child(tmp_path, monkeypatch, answering({**PIXELS_4x4, "pixels": 48}, bytes(range(48))))
    photo = open_photo(heic)
    assert photo.original_size == (4, 4) and photo.image.mode == "RGB"
    assert np.asarray(photo.image).reshape(-1).tolist() == list(range(48))


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_hanging_decoder_is_stopped(heic, tmp_path, monkeypatch):
    marker = tmp_path / "still-running"
    fake_child(tmp_path, monkeypatch, f"import pathlib, time\ntime.sleep(3)\npathlib.Path({str(marker)!r}).touch()\n")
    monkeypatch.setattr(photos, "HEIF_TIMEOUT_S", 0.5)
    with pytest.raises(PhotoError, match=r"HEIC decoder timed out after 0.5 s"):
        open_photo(heic)
    time.sleep(3.5)
    assert not marker.exists()  # killed, not left behind


def test_without_pillow_heif_the_message_says_to_install_it(heic, tmp_path, monkeypatch):
    """The real child, with a pillow_heif that cannot be imported first on its path."""
    blocker = tmp_path / "blocked" / "pillow_heif"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pillow_heif is not here')\n")
    real_env = photos._child_env

    def env_without_heif():
        env = real_env()
        env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), env["PYTHONPATH"]])
        return env

    monkeypatch.setattr(photos, "_child_env", env_without_heif)
    for read in (open_photo, probe_photo):
        with pytest.raises(PhotoError, match="HEIC/HEIF photo: install pillow-heif to read it"):
            read(heic)


def test_the_child_gets_this_process_path(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", [str(tmp_path), "", str(tmp_path / "missing"), str(tmp_path)])
    assert photos._child_env()["PYTHONPATH"] == str(tmp_path)


def test_qgis_python_is_found_beside_the_embedded_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", sys.executable)
    assert interpreter.python_interpreter() == sys.executable  # the command line, a venv
    prefix = tmp_path / "qgis"
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    python.write_text("")
    monkeypatch.setattr(sys, "executable", str(prefix / "bin" / "qgis"))  # inside QGIS
    monkeypatch.setattr(sys, "exec_prefix", str(prefix))
    assert interpreter.python_interpreter() == str(python)
    python.unlink()
    assert interpreter.python_interpreter() == "python3"


# ---- only photo formats ------------------------------------------------------------------------------

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 600 600
%%EndComments
newpath 0 0 moveto 600 600 lineto stroke
showpage
%%EOF
"""


def test_postscript_named_jpg_is_refused_without_running_ghostscript(tmp_path):
    """A fake ``gs`` first on PATH leaves a marker when anything runs it. The loader refuses the file
    and the marker stays absent; plain Image.open on the same file does run it (the trap works)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    marker = tmp_path / "ghostscript-ran"
    fake_gs = folder / "gs"
    fake_gs.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    fake_gs.chmod(0o755)
    (tmp_path / "x.jpg").write_bytes(EPS)
    env = dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    result = run_python(
        """
        import json, sys
        from geoclip_qgis.backend.errors import PhotoError
        from geoclip_qgis.backend.photos.loader import open_photo, probe_photo

        messages = []
        for read in (open_photo, probe_photo):
            try:
                read(sys.argv[1])
                messages.append("read")
            except PhotoError as exc:
                messages.append(str(exc))
        print(json.dumps(messages))
        """,
        str(tmp_path / "x.jpg"),
        env=env,
    )
    assert all(m.startswith("not an image") for m in result), result
    assert not marker.exists()
    run_python(  # the control: Pillow unrestricted hands the file to Ghostscript
        """
        import json, sys
        from PIL import Image
        try:
            Image.open(sys.argv[1]).load()
        except Exception as exc:
            pass
        print(json.dumps(0))
        """,
        str(tmp_path / "x.jpg"),
        env=env,
    )
    assert marker.exists()


def test_every_image_open_names_its_formats():
    """No Image.open( in the engine, the plugin or the tools without formats=."""
    offenders = []
    for folder in ("backend", "geoclip_qgis", "tools"):
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            for match in re.finditer(r"Image\.open\(", text):
                call = text[match.end() : text.find(")", match.end()) + 1]
                if "formats=" not in call:
                    offenders.append(f"{source.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}")
    assert not offenders


def test_camera_mpo_jpegs_still_open(tmp_path, skimage_data):
    base = Image.open(skimage_data / "astronaut.png").convert("RGB")
    base.save(
        tmp_path / "stereo.jpg",
        save_all=True,
        append_images=[base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
        format="MPO",
    )
    with Image.open(tmp_path / "stereo.jpg") as check:
        assert check.format == "MPO"
    assert open_photo(tmp_path / "stereo.jpg").image.size == (512, 512)


# ---- colour modes at reduced size ---------------------------------------------------------------------


def large(skimage_data) -> Image.Image:
    """A photo with more than 2 x DECODE_MIN_SIDE on its short side, so it is decoded reduced."""
    side = 2 * DECODE_MIN_SIDE + 200
    return Image.open(skimage_data / "astronaut.png").convert("RGB").resize((side + 300, side))


MODES = {
    "palette.gif": lambda im: im.quantize(64),
    "palette.png": lambda im: im.quantize(64),
    "palette-transparent.png": lambda im: im.quantize(64),
    "onebit.png": lambda im: im.convert("1"),
    "grey16.png": lambda im: Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),
    "grey16.tif": lambda im: Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_each_mode_decodes_reduced(name, skimage_data, tmp_path):
    source = MODES[name](large(skimage_data))
    path = tmp_path / name
    if name == "palette-transparent.png":
        source.save(path, transparency=0)
    else:
        source.save(path)
    with Image.open(path) as check:
        assert min(check.size) > 2 * DECODE_MIN_SIDE
        saved_mode = check.mode
        expected = photos._to_rgb(check.copy())  # converted at full size
    photo = open_photo(path)
    assert photo.image.mode == "RGB", saved_mode
    assert DECODE_MIN_SIDE <= min(photo.image.size) < min(source.size)
    # same picture as converting at full size, within what averaging before or after conversion changes
    small = (64, 48)
    got = np.asarray(photo.image.resize(small, Image.Resampling.BOX), dtype=np.float32)
    want = np.asarray(expected.resize(small, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(got - want).mean() < 6, (saved_mode, np.abs(got - want).mean())
