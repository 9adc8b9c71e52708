"""End to end in the real QGIS desktop under Xvfb: the plugin ZIP installed into a fresh profile,
QGIS started, the dock opened from the toolbar, real photos run, layers on the map; screenshots of what
a user sees go to docs/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

pytestmark = [pytest.mark.qgis, pytest.mark.desktop]


def _need(*programs):
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"the desktop check needs {', '.join(missing)} (installed by `make setup`)")


def screenshot(display: str, target: Path) -> None:
    xwd = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True, timeout=60)
    subprocess.run(["convert", "xwd:-", str(target)], input=xwd.stdout, check=True, timeout=120)


def wait_for(path: Path, qgis: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if qgis.poll() is not None:
            raise AssertionError(f"QGIS exited ({qgis.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def xvfb():
    _need("Xvfb", "qgis", "xwd", "convert")
    display = f":{90 + os.getpid() % 100}"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2)
    if server.poll() is not None:
        pytest.skip(f"Xvfb could not start on {display}")
    yield display
    server.terminate()
    server.wait(timeout=30)


def test_zip_install_dock_run_and_screenshots(xvfb, tiny_clip, engine, samples, skimage_data, kauai_png, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from package_plugin import build, check

    package = build(tmp_path / "dist")
    assert check(package) == []
    config = tmp_path / "config"  # --profiles-path takes the folder that holds profiles/
    profiles = config / "profiles"
    plugins = profiles / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(plugins)  # what "Install from ZIP" does
    ini = profiles / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(
        "[PythonPlugins]\ngeoclip_qgis=true\n[qgis]\ncheckVersion=false\n"
        "[app]\nshowTips=false\n[geoclip_qgis]\nprecision=fp32\n"
    )
    data_home = tmp_path / "xdg"
    (data_home / "QGIS" / "QGIS3").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "desktop_startup.py", data_home / "QGIS" / "QGIS3" / "startup.py")

    photos = [str(p) for p in sorted((samples / "gps").glob("*.jpg"))[:4]]
    photos += [str(kauai_png), str(skimage_data / "astronaut.png"), str(skimage_data / "coffee.png")]
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    site = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    env = {
        **os.environ,
        "DISPLAY": xvfb,
        "XDG_DATA_HOME": str(data_home),
        "PYTHONPATH": site,
        "GEOCLIP_CLIP": str(tiny_clip),
        "GEOCLIP_E2E_DIR": str(e2e),
        "GEOCLIP_E2E_PHOTOS": json.dumps(photos),
    }
    env.pop("QT_QPA_PLATFORM", None)
    qgis = subprocess.Popen(
        ["qgis", "--nologo", "--noversioncheck", "--profiles-path", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(e2e / "stage1.ready", qgis, 600)
        DOCS.mkdir(exist_ok=True)
        screenshot(xvfb, DOCS / "qgis-dock-run.png")
        (e2e / "stage1.done").write_text("ok")
        wait_for(e2e / "stage2.ready", qgis, 120)
        screenshot(xvfb, DOCS / "qgis-photo-raster.png")
    finally:
        os.killpg(qgis.pid, signal.SIGTERM)
        try:
            qgis.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(qgis.pid, signal.SIGKILL)
    report = json.loads((e2e / "report.json").read_text())
    assert report["plugin_loaded"] and report["dock_visible"] and report["run_enabled"]
    assert not report["error"] and report["answered"] == len(photos)
    assert "GeoCLIP answers" in report["layers"] and "all_answers_world" in report["layers"]
    python_errors = [m for m in report["messages"] if "python error" in m.lower() or "Traceback" in m]
    assert python_errors == []
    assert "_local" in report.get("stage_two_raster", "")
    for name in ("qgis-dock-run.png", "qgis-photo-raster.png"):
        assert (DOCS / name).stat().st_size > 20_000  # a real screen, not a blank one
