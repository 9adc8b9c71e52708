"""Shared fixtures: a small generated CLIP, the real GeoCLIP heads from the geoclip wheel, real photos
(tests/data, the geoclip wheel's Kauai.png, scikit-image's sample images).

The whole session runs with its models folder and Hugging Face cache in temporary folders, so
nothing of the developer's is read or changed. Derived caches (gallery and world-grid location
features, keyed by the checksum of the weights) live in .cache/tests and survive between runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data"  # real camera files with their licence notice (README.md there)
sys.path.insert(0, str(Path(__file__).parent))

_session_home = Path(tempfile.mkdtemp(prefix="geoclip-tests-"))
os.environ["GEOCLIP_MODELS_DIR"] = str(_session_home / "models")
os.environ["GEOCLIP_CACHE_DIR"] = str(ROOT / ".cache" / "tests")
os.environ["HF_HOME"] = str(_session_home / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
# Rasters at a quarter of the CPU budget, except where their accuracy is measured (test_raster_integrals
# restores the default): what the other tests check does not depend on how finely cells are integrated.
os.environ["GEOCLIP_RASTER_POINTS"] = "16384"
for name in ("GEOCLIP_HEADS", "GEOCLIP_CLIP"):
    os.environ.pop(name, None)

from clip_factory import make_clip_checkpoint  # noqa: E402


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.fail(f"{name} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def wheel_model_dir() -> Path:
    """The geoclip release's model folder: the real trained heads and 100K gallery."""
    return package_dir("geoclip") / "model"


@pytest.fixture(scope="session")
def kauai_png() -> Path:
    return package_dir("geoclip") / "images" / "Kauai.png"


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    return package_dir("skimage") / "data"


@pytest.fixture(scope="session")
def samples() -> Path:
    """The repository's own test photos: gps/, orientation/, broken/, exif-quirks/, heic/."""
    return SAMPLES


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return make_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def engine(tiny_clip):
    """fp32 engine with the real heads and the small CLIP; loaded once for the session."""
    from geoclip_qgis.backend import build_engine

    return build_engine(clip=tiny_clip, device="cpu", precision="fp32", batch_size=4, embedding_cache=False).load()


@pytest.fixture(scope="session")
def raster_engine(tiny_clip):
    """bf16 engine (real heads, small CLIP) for rasters and what is cut from them. An fp32 engine makes
    its rasters in fp32 from an fp32 world grid: the same code, about ten times the CPU time here."""
    from geoclip_qgis.backend import build_engine

    return build_engine(clip=tiny_clip, device="cpu", precision="bf16", batch_size=4, embedding_cache=False).load()


@pytest.fixture(scope="session")
def release_module():
    """The official geoclip package, imported without its training code (which needs torchvision)."""
    stub = types.ModuleType("geoclip.train")
    stub.train = stub.eval_images = None
    sys.modules.setdefault("geoclip.train", stub)
    import geoclip

    return geoclip


@pytest.fixture
def photo_dir(tmp_path, skimage_data, kauai_png, samples) -> Path:
    """A folder of a few real photos of different kinds."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(skimage_data / "astronaut.png", folder / "astronaut.png")
    shutil.copy(skimage_data / "camera.png", folder / "camera.png")
    shutil.copy(kauai_png, folder / "kauai.png")
    shutil.copy(samples / "gps" / "DSCN0010.jpg", folder / "DSCN0010.jpg")
    return folder


@pytest.fixture(scope="session")
def wheelhouse(stock_qgis):
    """What `make wheelhouse` makes for a stock QGIS's Python (skipped where there is none), downloaded
    once: the connected machine's step of an offline install. Fetched again (only what is missing)
    whenever the requirements, the GeoCLIP release or QGIS's own pinned packages change."""
    import json
    import subprocess

    from geoclip_qgis.core.deps import HEADS_RELEASE, OPTIONAL, REQUIRED
    from geoclip_qgis.install import installer

    python, torch = stock_qgis, "torch==2.13.0"  # the CPU build this workplace holds
    folder = ROOT / ".cache" / "wheelhouse"
    wanted = json.dumps(
        {
            "requirements": sorted([*REQUIRED.values(), *OPTIONAL.values(), HEADS_RELEASE]),
            "constraints": installer.qgis_constraints(installer.qgis_packages(python)),
            "torch": torch,
        }
    )
    stamp = folder / "wanted.json"
    if not stamp.is_file() or stamp.read_text() != wanted:
        command = [
            sys.executable,
            "-m",
            "geoclip_qgis.install.installer",
            "wheelhouse",
            str(folder),
            "--python",
            python,
        ]
        subprocess.run(
            [*command, "--torch", torch], check=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        stamp.write_text(wanted)
    return folder


QGIS_PYTHON = "/usr/bin/python3"  # Debian's QGIS embeds the system Python


@pytest.fixture(scope="session")
def stock_qgis():
    """QGIS's own Python, as a stock QGIS has it (no torch): else the stock-QGIS tests skip, before any
    wheel is fetched for it."""
    import subprocess

    if not Path(QGIS_PYTHON).exists() or subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"]).returncode:
        pytest.skip(f"QGIS's Python is not at {QGIS_PYTHON}")
    if subprocess.run([QGIS_PYTHON, "-I", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("QGIS's Python already has torch: not a stock QGIS")
    return QGIS_PYTHON
