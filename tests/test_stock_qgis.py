"""The plugin as users install it: its ZIP in a stock QGIS (QGIS's own Python, nothing added to it, an
empty plugin package folder), then only what the plugin offers. The slow test goes all the way to a first
answer offline: the dock's installer from a folder of wheels (packages and GeoCLIP's heads), Processing
without a restart, a CLIP folder imported in Models…, a folder of JPEG, PNG and HEIC photos answered
through the dock and then through qgis_process."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU build this workplace holds; any torch>=2.2 wheel works

pytestmark = pytest.mark.qgis


def no_network_prefix() -> list[str]:
    """A new network namespace (no interfaces but loopback) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def install_zip(tmp_path: Path) -> tuple[Path, Path]:
    """The plugin ZIP unpacked into a fresh profile's plugin folder, as Plugins › Install from ZIP does.
    Returns (config folder, plugins folder)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from deploy_plugin import enable
    from package_plugin import build

    package = build(tmp_path / "dist")
    config = tmp_path / "qgis-config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(plugins)
    enable(config / "profiles")
    return config, plugins


def stock_env(tmp_path: Path, config: Path) -> dict:
    """A user's environment: no venv, no PYTHONPATH, a home of its own (models and caches go there)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "QT_QPA_PLATFORM": "offscreen",
        "QGIS_CUSTOM_CONFIG_PATH": str(config),
        "GEOCLIP_QGIS_PROFILE": str(config / "profiles" / "default"),
    }


def report_of(out: subprocess.CompletedProcess) -> dict:
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"exit {out.returncode}\n" + out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT ") :])


def test_the_dock_opens_in_a_stock_qgis_and_offers_the_install(stock_qgis, tmp_path):
    """The first click in a QGIS without platformdirs, torch or transformers: the dock, not a traceback;
    Run off; Install dependencies… offered; no package QGIS lacks imported at start."""
    config, plugins = install_zip(tmp_path)
    out = subprocess.run(
        [stock_qgis, "-I", str(ROOT / "tests" / "stock_start_check.py"), str(plugins)],
        capture_output=True,
        text=True,
        env=stock_env(tmp_path, config),
        timeout=300,
    )
    report = report_of(out)
    assert report["error"] == "" and report["dock"]
    assert report["install_offered"] and not report["run_enabled"]
    assert "Python packages missing" in report["model_label"] and report["says"].startswith(
        "Press Install dependencies…"
    )
    assert "platformdirs" in report["says"]
    assert report["output_hint"].endswith("/home/.local/share/geoclip-qgis/runs")  # platformdirs' folder, without it
    assert not report["provider"]  # Processing waits for the packages
    assert report["imported"] == []  # nor NumPy, Pillow, platformdirs or torch at start


@pytest.mark.slow
def test_stock_qgis_from_zip_to_first_answer_offline(stock_qgis, wheelhouse, tiny_clip, samples, kauai_png, tmp_path):
    config, plugins = install_zip(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(samples / "gps" / "DSCN0010.jpg", photos / "camera.jpg")
    shutil.copy(kauai_png, photos / "kauai.png")
    shutil.copy(samples / "heic" / "IMG_5195.HEIC", photos / "phone.heic")
    env = stock_env(tmp_path, config)
    prefix = no_network_prefix()
    if not prefix:  # no namespace: make any connection attempt fail instead
        env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", PIP_NO_INDEX="1")
    out = subprocess.run(
        [
            *prefix,
            stock_qgis,
            "-I",
            str(ROOT / "tests" / "stock_install_check.py"),
            str(plugins),
            str(wheelhouse),
            str(tiny_clip),
            str(photos),
            str(tmp_path / "dock.gpkg"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    report = report_of(out)
    assert report["opened"]["install_offered"] and not report["opened"]["run_enabled"]
    assert not report["opened"]["provider"]
    after = report["after_install"]
    assert after["missing"] == [], report["installed"]["log"]
    assert after["provider"] and "geoclip:geolocate_photos" in after["algorithms"]  # no restart
    assert after["heads_source"] == "geoclip wheel"  # the heads came with the install
    assert after["problems"] == ["backbone_missing"] and after["fix_button"] == "Fix…"
    assert report["after_import"]["run_enabled"] and "backbone_missing" not in report["after_import"]["problems"]
    answered = report["answered"]
    assert answered["error"] in ("", None) and answered["failures"] == [], answered
    assert answered["answered"] == 3 and not answered["pillow_heif_loaded"]  # HEIC decoded outside QGIS's process
    assert "/geoclip_qgis/python/torch/" in report["torch"]  # from the plugin's own folder
    assert report["numpy"].split(".")[0] == "1"  # GDAL's NumPy kept
    with sqlite3.connect(tmp_path / "dock.gpkg") as db:
        names = {row[0] for row in db.execute("SELECT DISTINCT photo FROM predictions")}
    assert {Path(n).name for n in names} == {"camera.jpg", "kauai.png", "phone.heic"}

    # The same profile, headless: qgis_process finds the plugin's packages, heads and imported backbone.
    binary = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not Path(binary).exists():
        pytest.skip("qgis_process is not installed")
    out = subprocess.run(
        [
            *prefix,
            binary,
            "run",
            "geoclip:geolocate_photos",
            f"--FOLDER={photos}",
            "--TOP_K=2",
            f"--OUTPUT={tmp_path / 'qp.gpkg'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ANSWERED:\t3" in out.stdout
