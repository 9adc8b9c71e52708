"""torch and transformers installed into QGIS's Python from a local folder of wheels, with the
network unreachable, and the plugin then runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QGIS_PYTHON = "/usr/bin/python3"
TORCH = "torch==2.13.0"  # the CPU build this workplace holds; any torch>=2.2 wheel works

pytestmark = pytest.mark.slow


def no_network_prefix() -> list[str]:
    """A new network namespace (no interfaces but loopback) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def wheelhouse():
    """What `make wheelhouse` makes, downloaded once (this is the connected machine's step)."""
    folder = ROOT / ".cache" / "wheelhouse"
    from geoclip_qgis import installer
    from geoclip_qgis.deps import OPTIONAL, REQUIRED

    # What the folder must hold follows the requirements and QGIS's own pinned packages: fetched again
    # (only what is missing) whenever either changed since it was made.
    wanted = json.dumps(
        {
            "requirements": sorted([*REQUIRED.values(), *OPTIONAL.values()]),
            "constraints": installer.qgis_constraints(installer.qgis_packages(QGIS_PYTHON)),
            "torch": TORCH,
        }
    )
    stamp = folder / "wanted.json"
    if not stamp.is_file() or stamp.read_text() != wanted:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "geoclip_qgis.installer",
                "wheelhouse",
                str(folder),
                "--python",
                QGIS_PYTHON,
                "--torch",
                TORCH,
            ],
            check=True,
            timeout=1800,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        stamp.write_text(wanted)
    return folder


def test_offline_install_from_wheels_then_run(wheelhouse, tiny_clip, wheel_model_dir, kauai_png, tmp_path):
    if not Path(QGIS_PYTHON).exists():
        pytest.skip("QGIS's Python is not at /usr/bin/python3")
    sys.path.insert(0, str(ROOT / "tools"))
    from deploy_plugin import deploy

    plugin_dir = deploy(tmp_path / "profiles", copy=True)
    heads = tmp_path / "heads"  # the released heads, as a user would import them (no geoclip wheel here)
    shutil.copytree(wheel_model_dir / "weights", heads / "weights")
    shutil.copytree(wheel_model_dir / "gps_gallery", heads / "gps_gallery")
    prefix = no_network_prefix()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        GEOCLIP_CLIP=str(tiny_clip),
        GEOCLIP_HEADS=str(heads),
        GEOCLIP_CACHE_DIR=str(tmp_path / "cache"),
        QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "qgis"),
        PATH="/usr/bin:/bin",
    )
    if not prefix:  # no namespace: make any connection attempt fail instead
        env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", PIP_NO_INDEX="1")
    out = subprocess.run(
        [
            *prefix,
            QGIS_PYTHON,
            str(ROOT / "tests" / "offline_install_check.py"),
            str(plugin_dir.parent),
            str(wheelhouse),
            TORCH,
            str(kauai_png),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    assert "torch" in report["missing_before"] and "transformers" in report["missing_before"]
    assert report["missing_after"] == []
    assert "geoclip_qgis/python/torch" in report["torch"]  # from the plugin's own folder
    assert report["numpy"].split(".")[0] == "1"  # GDAL's NumPy major kept
    assert report["run_enabled"] and not report["error"] and report["answered"] == 1
