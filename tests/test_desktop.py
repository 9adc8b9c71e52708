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
from test_batch import variants

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


SCREEN = (1366, 768)  # a common laptop screen: everything must fit and stay reachable there
STAGES = (  # (stage the startup script reaches, screenshot for docs/)
    ("first-run", "qgis-dock-first-run.png"),
    ("models", "qgis-models-dialog.png"),
    ("run", "qgis-dock-run.png"),
    ("raster", "qgis-photo-raster.png"),
    ("judge", "qgis-results-panel.png"),
    ("places", "qgis-places-radii.png"),
    ("cancelled", "qgis-dock-cancelled.png"),
    ("embedding", "qgis-embedding-map.png"),
)


@pytest.fixture
def xvfb():
    _need("Xvfb", "qgis", "xwd", "convert")
    read_end, write_end = os.pipe()  # Xvfb picks a free display and writes its number here
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end) as chosen:
        number = chosen.readline().strip()
    if server.poll() is not None or not number:
        pytest.fail("Xvfb could not start (installed by `make setup`)")
    display = f":{number}"
    yield display
    server.terminate()
    server.wait(timeout=30)


def install_plugin_zip(tmp_path: Path, startup: str, ini_extra: str = "") -> tuple[Path, Path]:
    """The plugin ZIP unpacked into a fresh profile (what Plugins › Install from ZIP does), enabled, and a
    startup script that drives the desktop. Returns (the folder for --profiles-path, XDG_DATA_HOME)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from package_plugin import build, check

    package = build(tmp_path / "dist")
    assert check(package) == []
    config = tmp_path / "config"  # --profiles-path takes the folder that holds profiles/
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(plugins)
    ini = config / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(
        "[PythonPlugins]\ngeoclip_qgis=true\n[qgis]\ncheckVersion=false\n[app]\nshowTips=false\n" + ini_extra
    )
    data_home = tmp_path / "xdg"
    (data_home / "QGIS" / "QGIS3").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / startup, data_home / "QGIS" / "QGIS3" / "startup.py")
    return config, data_home


def start_qgis(config: Path, env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["qgis", "--nologo", "--noversioncheck", "--profiles-path", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_qgis(qgis: subprocess.Popen) -> None:
    if qgis.poll() is None:
        os.killpg(qgis.pid, signal.SIGTERM)
        try:
            qgis.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(qgis.pid, signal.SIGKILL)


def photograph_stages(display: str, e2e: Path, qgis: subprocess.Popen, stages, timeout: float = 900) -> None:
    DOCS.mkdir(exist_ok=True)
    for name, png in stages:
        wait_for(e2e / f"{name}.ready", qgis, timeout)
        screenshot(display, DOCS / png)
        (e2e / f"{name}.done").write_text("ok")


def _photos(tmp_path, samples, skimage_data, kauai_png) -> tuple[list[str], Path]:
    """What a user might pick: camera photos with EXIF GPS, other photos, a folder holding a truncated
    download and a file that is no photo; and a folder of 200 photos for the long runs."""
    photos = [str(p) for p in sorted((samples / "gps").glob("*.jpg"))[:4]]
    photos += [str(kauai_png), str(skimage_data / "astronaut.png"), str(skimage_data / "coffee.png")]
    photos += [str(samples / "heic" / "IMG_5195.HEIC")]  # a phone's HEIC: decoded where a crash cannot reach QGIS
    odd = tmp_path / "from_the_card"
    odd.mkdir()
    (odd / "IMG_0007.jpg").write_bytes((samples / "gps" / "DSCN0027.jpg").read_bytes()[:1500])  # cut short
    (odd / "notes.jpg").write_text("shopping list, not a photo")
    shutil.copy(skimage_data / "rocket.jpg", odd / "rocket.jpg")
    many = tmp_path / "two_hundred"
    variants([skimage_data / "chelsea.png", skimage_data / "coffee.png", skimage_data / "rocket.jpg"], many, 200)
    return photos + [str(odd)], many


def test_zip_install_first_hour_and_screenshots(
    xvfb, tiny_clip, raster_engine, samples, skimage_data, kauai_png, tmp_path
):
    raster_engine.surface(0.25, 0.01)  # the world grid the desktop's bf16 rasters read, made once for the session
    config, data_home = install_plugin_zip(tmp_path, "desktop_startup.py", "[geoclip_qgis]\nprecision=bf16\n")
    photos, many = _photos(tmp_path, samples, skimage_data, kauai_png)
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    site = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    env = {
        **os.environ,
        "DISPLAY": xvfb,
        "XDG_DATA_HOME": str(data_home),
        "PYTHONPATH": site,
        "GEOCLIP_E2E_CLIP": str(tiny_clip),  # not where GeoCLIP looks: the user chooses it in Models…
        "GEOCLIP_E2E_DIR": str(e2e),
        "GEOCLIP_E2E_TESTS": str(ROOT / "tests"),  # desktop_stages.py for the startup script
        "GEOCLIP_E2E_PHOTOS": json.dumps(photos),
        "GEOCLIP_E2E_MANY": str(many),
        "GEOCLIP_E2E_SCREEN": f"{SCREEN[0]}x{SCREEN[1]}",
    }
    for name in ("QT_QPA_PLATFORM", "GEOCLIP_CLIP", "GEOCLIP_HEADS"):
        env.pop(name, None)
    qgis = start_qgis(config, env, tmp_path / "qgis.log")
    try:
        photograph_stages(xvfb, e2e, qgis, STAGES)
        try:  # the last stage quits QGIS from inside, mid-run
            quit_status = qgis.wait(timeout=180)
        except subprocess.TimeoutExpired:
            screenshot(xvfb, tmp_path / "stuck.png")
            quit_status = None
    finally:
        stop_qgis(qgis)
    report = json.loads((e2e / "report.json").read_text())
    assert report["plugin_loaded"] and report["dock_visible"]
    python_errors = [m for m in report["messages"] if "python error" in m.lower() or "Traceback" in m]
    assert python_errors == []

    # Before any backbone: Run is off and the dock says why, in QGIS's words, with the way to fix it.
    first = report["first_run"]
    assert not first["run_enabled"] and "backbone" in first["run_tooltip"]
    assert "CLIP backbone is missing" in first["model"] and first["button"] == "Fix…"
    models = report["models_dialog"]
    assert models["fix_visible"] and "Import folder…" in models["fix"] and "--clip" not in models["fix"]
    assert "not ViT-L/14" in models["after_choosing"]  # the tests' small CLIP is said to be what it is
    assert report["after_models"]["run_enabled"]

    # The run: every photo answered or listed with its reason; named layers; the world map under them.
    assert not report["error"] and report["answered"] == 9  # eight photos (one HEIC) and rocket.jpg from the folder
    assert sorted(Path(p).name for p, _ in report["failures"]) == ["IMG_0007.jpg", "notes.jpg"]
    assert report["tree"][0].startswith("DSCN0010.jpg and 8 more") and "World (QGIS's offline map)" in report["tree"]
    assert "GeoCLIP answers" in report["layers"] and "all_answers_world" in report["layers"]
    assert "Photos not answered" in report["layers"]
    assert "_local" in report.get("stage_two_raster", "")

    # Judging one answer: the results panel beside the dock, its confidence areas, its PDF case report.
    judge = report["judge"]
    assert "DSCN0010.jpg" in judge["answers"] and judge["photo"]
    assert "NIKON" in judge["info"] and "confidence area" in judge["info"] and "Countries:" in judge["regions"]
    assert judge["areas"] == ["Confidence areas (50 %, 90 %)"] and all(judge["candidates"])
    pdf = Path(judge["report"][0])
    subprocess.run(
        ["pdftoppm", "-r", "70", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "report")],
        check=True,
        timeout=120,
    )
    shutil.copy(next(tmp_path.glob("report*.png")), DOCS / "qgis-case-report.png")
    assert (DOCS / "qgis-case-report.png").stat().st_size > 20_000

    # Distinct places steered by a hint, in a country chosen by name: each place's circle under its answer.
    places = report["places"]
    assert not places["error"] and places["answered"] == 1 and places["radii"] == 5
    assert places["group"][:2] == ["GeoCLIP answers", "Places and their radius"], places["group"]
    assert places["areas"] == ["Brazil"] and places["hints"] == ["a harbour town in Brazil"]
    assert places["names_listed"] > 3000

    # Cancel: what was kept, not "Task complete" and not a full bar.
    cancelled = report["cancelled"]
    assert cancelled["cancelled"] and 0 < cancelled["answered"] < 200 and cancelled["total"] == 200
    assert cancelled["status"].startswith(f"Cancelled — {cancelled['answered']} of 200 kept")
    assert cancelled["progress"] < 100
    assert any(f"Cancelled — {cancelled['answered']} of 200 kept" in text for text in cancelled["bar"])
    assert not any(text.startswith("Task complete") for text in cancelled["bar"]), cancelled["bar"]

    # The embedding map: an RGB raster of the world, beside the dock, with the toolbox open and Run in view.
    embedding = report["embedding"]
    assert embedding["bands"] == 3 and embedding["renderer"] == "QgsMultiBandColorRenderer"
    assert embedding["run_visible"]

    # Quitting mid-run: one question, then QGIS quits by itself.
    last_words = (tmp_path / "qgis.log").read_text(errors="replace")[-4000:]
    assert quit_status == 0, f"QGIS did not quit ({quit_status}); questions: {report['quit_boxes']}\n{last_words}"
    assert len(report["quit_boxes"]) == 1 and "GeoCLIP: 200 photos" in report["quit_boxes"][0]
    assert report["quit"]["seconds"] < 60
    for _, png in STAGES:
        assert (DOCS / png).stat().st_size > 20_000  # a real screen, not a blank one


STOCK_STAGES = (
    ("stock-dock", "qgis-stock-1-dock.png"),
    ("stock-installer", "qgis-stock-2-installer.png"),
    ("stock-installed", "qgis-stock-3-installed.png"),
    ("stock-models", "qgis-stock-4-models.png"),
    ("stock-answers", "qgis-stock-5-answers.png"),
)


@pytest.mark.slow
def test_stock_qgis_desktop_from_zip_to_first_answer(
    stock_qgis, xvfb, wheelhouse, tiny_clip, samples, kauai_png, tmp_path
):
    """A stock QGIS desktop (nothing added to its Python, no venv), the plugin from its ZIP, offline: the
    dock, its installer from a folder of wheels, Models…, then a folder of JPEG, PNG and HEIC photos."""
    config, data_home = install_plugin_zip(tmp_path, "desktop_stock_startup.py")
    photos = tmp_path / "phone_and_camera"
    photos.mkdir()
    shutil.copy(samples / "gps" / "DSCN0010.jpg", photos / "camera.jpg")
    shutil.copy(kauai_png, photos / "kauai.png")
    shutil.copy(samples / "heic" / "IMG_5195.HEIC", photos / "phone.heic")
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = {  # a user's session: no venv, no PYTHONPATH, a home of its own, and no network
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DISPLAY": xvfb,
        "XDG_DATA_HOME": str(data_home),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PIP_NO_INDEX": "1",
        "GEOCLIP_E2E_DIR": str(e2e),
        "GEOCLIP_E2E_TESTS": str(ROOT / "tests"),  # desktop_stages.py for the startup script
        "GEOCLIP_E2E_WHEELS": str(wheelhouse),
        "GEOCLIP_E2E_CLIP": str(tiny_clip),
        "GEOCLIP_E2E_PHOTOS": str(photos),
        "GEOCLIP_E2E_SCREEN": f"{SCREEN[0]}x{SCREEN[1]}",
    }
    qgis = start_qgis(config, env, tmp_path / "qgis.log")
    try:
        photograph_stages(xvfb, e2e, qgis, STOCK_STAGES, timeout=1200)
        try:
            quit_status = qgis.wait(timeout=120)
        except subprocess.TimeoutExpired:
            quit_status = None
    finally:
        stop_qgis(qgis)
    report = json.loads((e2e / "report.json").read_text())
    last_words = (tmp_path / "qgis.log").read_text(errors="replace")[-3000:]
    assert report["plugin_loaded"] and not report["torch_before"], last_words
    assert [m for m in report["messages"] if "python error" in m.lower() or "Traceback" in m] == []
    dock = report["dock"]
    assert dock["visible"] and dock["install_offered"] and not dock["run_enabled"]
    assert "Python packages missing" in dock["model"] and dock["says"].startswith("Press Install dependencies…")
    assert "platformdirs" in dock["says"]
    assert not report["provider_before"]
    installer = report["installer"]
    assert installer["outcome"] == "completed" and not installer["failure"], installer["log_tail"]
    assert "no restart needed" in installer["log_tail"]
    after = report["after_install"]
    assert not after["install_offered"] and after["provider"] and after["fix_button"] == "Fix…"
    assert "CLIP backbone is missing" in after["model"]
    models = report["models"]
    assert "CLIP ViT-L/14 backbone" in models["fix"] and "In Models…" not in models["fix"]
    assert "installed geoclip package" in models["report"]  # the heads came with the install
    assert report["after_models"]["run_enabled"]
    answered = report["answered"]
    assert not answered["error"] and answered["failures"] == [] and answered["answered"] == 3, answered
    assert not answered["pillow_heif_loaded"] and "/geoclip_qgis/python/torch/" in answered["torch"]
    assert "GeoCLIP answers" in answered["layers"]
    assert quit_status == 0, last_words
    for _, png in STOCK_STAGES:
        assert (DOCS / png).stat().st_size > 20_000  # a real screen, not a blank one
