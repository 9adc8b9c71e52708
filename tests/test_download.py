"""The backbone download against a fake Hub on localhost (the real one is never contacted): progress,
cancel and resume with HTTP Range, proxies (from QgsSettings in the plugin) and plain, named errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from geoclip_qgis.backend.errors import Cancelled, GeoCLIPError
from geoclip_qgis.backend.progress import BYTES, Progress
from geoclip_qgis.backend.store import hub_download, weights
from geoclip_qgis.backend.store.hub_download import DiskFullError, NoNetworkError, ProxyError

REPO, REVISION = weights.BACKBONE_REPO, weights.BACKBONE_REVISION
PROXY_VARS = [f"{name}_proxy" for name in ("http", "https", "all", "no")]
PROXY_VARS += [name.upper() for name in PROXY_VARS]


def backbone_files() -> dict[str, bytes]:
    """What backbone_problem() accepts: a ViT-L/14-shaped config and 4 MiB of "weights"."""
    config = {"model_type": "clip", "projection_dim": 768, "vision_config": {"hidden_size": 1024}}
    files = {name: json.dumps({"name": name}).encode() for name in weights.BACKBONE_FILES}
    files["config.json"] = json.dumps(config).encode()
    files["merges.txt"] = b"#version: 0.2\n"
    files["model.safetensors"] = random.Random(0).randbytes(4 << 20)
    return files


class FakeHub(ThreadingHTTPServer):
    """The Hub's model API and resolve URLs (large files redirect to a "CDN" path, as on the Hub), with
    HTTP Range; also answers as an HTTP proxy for absolute URLs. Counts the file bytes it sends, per
    request: a cancelled request's thread may still be writing while the next download starts."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.published = files, dict(files)
        self.requests: list[dict] = []
        self.honour_range, self.delay, self.proxy_auth = True, 0.0, None
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def sent(self, since: int = 0) -> int:
        """File bytes sent in answer to the requests from number ``since`` on."""
        return sum(request["sent"] for request in self.requests[since:])

    def siblings(self) -> list[dict]:
        rows = []
        for name, data in self.published.items():
            row = {"rfilename": name, "size": len(data)}
            if name.endswith(".safetensors"):
                row["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            else:
                row["blobId"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            rows.append(row)
        return rows


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):
        pass

    def do_GET(self):
        via_proxy = self.path.startswith("http://")
        path = urlsplit(self.path).path if via_proxy else self.path.split("?")[0]
        self.record = {"path": path, "via_proxy": via_proxy, "range": self.headers.get("Range"), "sent": 0}
        self.server.requests.append(self.record)
        if via_proxy and self.server.proxy_auth and self.headers.get("Proxy-Authorization") != self.server.proxy_auth:
            return self._plain(407, "Proxy Authentication Required")
        host = f"http://{self.headers['Host']}"
        if path == f"/api/models/{REPO}/revision/{REVISION}":
            return self._plain(200, json.dumps({"sha": REVISION, "siblings": self.server.siblings()}))
        resolve = f"/{REPO}/resolve/{REVISION}/"
        if path.startswith(resolve) and path.endswith(".safetensors"):
            self.send_response(302)
            self.send_header("Location", f"{host}/cdn/{path[len(resolve) :]}")
            self.end_headers()
            return None
        name = path[len(resolve) :] if path.startswith(resolve) else path.removeprefix("/cdn/")
        if name not in self.server.files:
            return self._plain(404, "Entry not found")
        return self._send(self.server.files[name])

    def _plain(self, status: int, text: str):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, data: bytes):
        start = 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and self.server.honour_range:
            start = int(wanted[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        try:
            for offset in range(start, len(data), 64 << 10):
                piece = data[offset : offset + (64 << 10)]
                self.wfile.write(piece)
                self.record["sent"] += len(piece)
                time.sleep(self.server.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: a cancel


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub at $HF_ENDPOINT, an empty models folder, no proxy from the environment."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEOCLIP_MODELS_DIR", str(tmp_path / "models"))
    server = FakeHub(backbone_files())
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def staging():
    return weights.models_dir() / f".{weights.BACKBONE_FOLDER}.partial"


@pytest.fixture
def every_chunk(monkeypatch):
    """Progress after every chunk, not a few times a second: what a test that stops at a byte count needs."""
    monkeypatch.setattr(hub_download, "PROGRESS_INTERVAL", 0.0)


def assert_installed(hub: FakeHub) -> None:
    target = weights.models_dir() / weights.BACKBONE_FOLDER
    assert weights.find_backbone().path == target
    assert {p.name: p.read_bytes() for p in target.iterdir()} == hub.files
    assert not staging().exists()


def test_progress_rises_to_the_total_and_the_backbone_lands_in_the_models_folder(hub, every_chunk):
    seen: list[Progress] = []
    path = weights.download_backbone(progress=seen.append)
    total = sum(map(len, hub.files.values()))
    assert path == weights.models_dir() / weights.BACKBONE_FOLDER
    assert {(p.stage, p.total, p.unit) for p in seen} == {("Downloading the CLIP backbone", total, BYTES)}
    dones = [p.done for p in seen]
    assert dones[0] == 0 and dones[-1] == total and dones == sorted(dones) and len(dones) > 10
    assert seen[-1].counted() == "4.2 MB of 4.2 MB" and seen[-1].fraction == 1.0
    assert hub.sent() == total
    assert all(REVISION in r["path"] or r["path"].startswith("/cdn/") for r in hub.requests)  # the pinned commit
    assert_installed(hub)


def test_cancel_stops_promptly_and_a_second_call_resumes_with_range(hub, every_chunk):
    total = sum(map(len, hub.files.values()))
    seen = []
    with pytest.raises(Cancelled, match="download again to continue") as stopped:
        weights.download_backbone(
            progress=lambda event: seen.append(event.done), should_stop=lambda: seen[-1] >= total // 2
        )
    assert isinstance(stopped.value, GeoCLIPError)  # the command line names it
    assert total // 2 <= seen[-1] < total // 2 + hub_download.CHUNK  # stopped within one chunk
    assert weights.find_backbone().path is None  # nothing presented as a backbone
    assert not (weights.models_dir() / weights.BACKBONE_FOLDER).exists()
    partial = staging() / "model.safetensors.incomplete"
    kept = sum(p.stat().st_size for p in staging().iterdir())
    assert kept == seen[-1] and 0 < partial.stat().st_size < len(hub.files["model.safetensors"])
    assert not (staging() / "model.safetensors").exists()

    first, mark = hub.sent(), len(hub.requests)
    resume_at = partial.stat().st_size
    again = []
    weights.download_backbone(progress=lambda event: again.append(event.done))
    assert again[0] == kept and again[-1] == total and again == sorted(again)
    assert hub.sent(mark) == total - kept < first  # only the missing bytes travelled
    assert [r["range"] for r in hub.requests if r["range"]] == [f"bytes={resume_at}-"] * 2  # resolve, then CDN
    assert_installed(hub)


def test_a_resumed_download_estimates_the_time_left_from_this_calls_bytes(monkeypatch):
    from geoclip_qgis.backend import progress

    clock = iter([0.0, 0.0, 2.0])  # started, the first report, the next one
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    seen = []
    stage = progress.Stage(seen.append, "Downloading", 100, BYTES, interval=0.0, done=50)
    stage.update(60)  # 10 bytes in 2 s, 40 to go
    assert [p.done for p in seen] == [50, 60] and seen[-1].eta_s == pytest.approx(8.0)


def test_a_server_that_ignores_range_gets_the_file_from_the_start(hub, every_chunk):
    seen = [0.0]
    with pytest.raises(Cancelled):  # half way
        weights.download_backbone(
            progress=lambda event: seen.append(event.fraction), should_stop=lambda: seen[-1] > 0.5
        )
    assert (staging() / "model.safetensors.incomplete").stat().st_size > 0
    hub.honour_range, mark = False, len(hub.requests)
    weights.download_backbone(progress=lambda event: None)
    assert hub.sent(mark) == len(hub.files["model.safetensors"])  # whole, written from the start
    assert_installed(hub)


def test_proxies_carry_every_request_with_their_credentials(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # reachable only through the proxy
    hub.proxy_auth = "Basic " + base64.b64encode(b"ann:p@ss:word").decode()
    address = f"http://ann:{'p%40ss%3Aword'}@127.0.0.1:{hub.server_address[1]}"
    weights.download_backbone(progress=lambda event: None, proxies={"http": address, "https": address})
    assert hub.requests and all(r["via_proxy"] for r in hub.requests)
    assert {r["path"].split("/")[1] for r in hub.requests} == {"api", "openai", "cdn"}
    assert_installed(hub)


def test_no_proxy_mapping_goes_direct_despite_the_environment(hub, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    weights.download_backbone(progress=lambda event: None, proxies={})
    assert_installed(hub)


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("no network", NoNetworkError, "cannot reach"),
        ("unknown host", NoNetworkError, "does not resolve"),
        ("proxy refused", ProxyError, "cannot be reached"),
        ("proxy wants a password", ProxyError, "user name and password"),
        ("socks proxy", ProxyError, "only go through an HTTP proxy"),
        ("disk full", DiskFullError, "not enough free disk space"),
    ],
)
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_failures_are_named_and_plain(hub, monkeypatch, case, error, words):
    proxies = None
    if case == "no network":
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    elif case == "unknown host":
        monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    elif case == "proxy refused":
        proxies = {"http": f"http://127.0.0.1:{closed_port()}"}
    elif case == "proxy wants a password":
        hub.proxy_auth = "Basic secret"
        proxies = {"http": hub.url}
    elif case == "socks proxy":
        proxies = {"http": "socks5://127.0.0.1:1080", "https": "socks5://127.0.0.1:1080"}
    else:
        monkeypatch.setattr(hub_download.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(error, match=words) as caught:
        weights.download_backbone(progress=lambda event: None, proxies=proxies)
    assert isinstance(caught.value, weights.WeightsError)  # the CLI's exit 2
    assert "Traceback" not in str(caught.value) and "secret" not in str(caught.value)
    assert hub.sent() == 0 and weights.find_backbone().path is None


def test_a_disk_that_fills_up_midway_is_named_and_the_partial_file_resumes(hub, monkeypatch):
    import builtins
    import errno

    class FillingDisk:
        def __init__(self, path, mode):
            self.handle = builtins.open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, block):
            if self.handle.tell() >= 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(block)

    monkeypatch.setattr(hub_download, "open", FillingDisk, raising=False)
    with pytest.raises(DiskFullError, match="the disk is full .*download again to resume"):
        weights.download_backbone(progress=lambda event: None)
    kept = (staging() / "model.safetensors.incomplete").stat().st_size
    assert kept >= 1 << 20 and weights.find_backbone().path is None
    monkeypatch.delattr(hub_download, "open")
    mark = len(hub.requests)
    weights.download_backbone(progress=lambda event: None)
    assert hub.sent(mark) == len(hub.files["model.safetensors"]) - kept
    assert_installed(hub)


def test_a_file_that_does_not_match_its_checksum_is_deleted_and_not_installed(hub):
    hub.files["model.safetensors"] = b"x" * len(hub.files["model.safetensors"])
    with pytest.raises(weights.WeightsError, match="model.safetensors does not match the Hub's sha256"):
        weights.download_backbone(progress=lambda event: None)
    assert not (staging() / "model.safetensors").exists() and weights.find_backbone().path is None
    hub.files = dict(hub.published)
    weights.download_backbone(progress=lambda event: None)  # the other files are kept: only it travels
    assert hub.sent() == 2 * len(hub.files["model.safetensors"]) + sum(
        len(v) for k, v in hub.files.items() if k != "model.safetensors"
    )
    assert_installed(hub)


def cli(*args):
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "geoclip_qgis.backend", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_download_shows_a_bar_and_fails_with_exit_2_and_a_message(hub, monkeypatch):
    out = cli("models", "download")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(weights.models_dir() / weights.BACKBONE_FOLDER)
    assert "100%" in out.stderr and "Traceback" not in out.stderr
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    out = cli("models", "download")
    assert out.returncode == 2
    assert "error: cannot reach 127.0.0.1" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------ QGIS

PROXY_KEYS = ("proxyEnabled", "proxyType", "proxyHost", "proxyPort", "proxyUser", "proxyPassword", "noProxyUrls")


@pytest.fixture
def qgis_proxy():
    """QGIS's proxy settings, as Settings › Options › Network writes them; removed afterwards."""
    from qgis_support import qgis_app

    qgis_app()
    from qgis.core import QgsSettings

    settings = QgsSettings()

    def configure(**values):
        for key in PROXY_KEYS:
            settings.remove(f"proxy/{key}")
        for key, value in values.items():
            settings.setValue(f"proxy/{key}", value)

    yield configure
    configure()


@pytest.mark.qgis
def test_qgis_proxy_settings_become_the_engine_mapping(qgis_proxy, monkeypatch):
    from geoclip_qgis.ui.models_dialog import DownloadTask

    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    qgis_proxy()
    assert DownloadTask.proxies_from_settings() is None  # no proxy in QGIS: unchanged behaviour
    http = {"proxyEnabled": True, "proxyType": "HttpProxy", "proxyHost": "proxy.lan", "proxyPort": 3128}
    qgis_proxy(**http, proxyUser="ann", proxyPassword="p@ss")
    address = "http://ann:p%40ss@proxy.lan:3128"
    assert DownloadTask.proxies_from_settings() == {"http": address, "https": address}
    qgis_proxy(**http, noProxyUrls=["https://huggingface.co"])
    assert DownloadTask.proxies_from_settings() == {}
    qgis_proxy(**{**http, "proxyType": "DefaultProxy"})
    assert DownloadTask.proxies_from_settings() is None  # the system's proxy: the engine reads it itself
    qgis_proxy(**{**http, "proxyType": "Socks5Proxy"})
    assert DownloadTask.proxies_from_settings()["https"] == "socks5://proxy.lan:3128"
    qgis_proxy(**{**http, "proxyEnabled": False})
    assert DownloadTask.proxies_from_settings() is None


def run_task(task, until=None):
    from qgis.core import QgsApplication
    from qgis_support import wait_for

    finished = []
    task.taskCompleted.connect(lambda: finished.append(True))
    task.taskTerminated.connect(lambda: finished.append(False))
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: finished, timeout=120, tick=None)
    return finished[0]


@pytest.mark.qgis
def test_the_task_downloads_through_qgis_proxy_with_progress_in_percent(hub, qgis_proxy, monkeypatch):
    from geoclip_qgis.ui.models_dialog import DownloadTask

    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # reachable only through the proxy
    hub.proxy_auth = "Basic " + base64.b64encode(b"ann:secret").decode()
    qgis_proxy(
        proxyEnabled=True, proxyType="HttpProxy", proxyHost="127.0.0.1", proxyPort=hub.server_address[1],
        proxyUser="ann", proxyPassword="secret",
    )  # fmt: skip
    from qgis.PyQt.QtCore import QThread

    main_thread, descriptions = QThread.currentThread(), []

    class Watched(DownloadTask):
        def _show_status(self, text):
            super()._show_status(text)
            descriptions.append((self.description(), QThread.currentThread() == main_thread))

    task = Watched(DownloadTask.proxies_from_settings())
    percents = []
    task.progressChanged.connect(percents.append)
    assert run_task(task), task.error
    assert all(r["via_proxy"] for r in hub.requests) and len(hub.requests) >= len(hub.files)
    assert percents == sorted(percents) and percents[-1] == 100
    assert descriptions[-1] == (f"{DownloadTask.TITLE}: 4.2 MB of 4.2 MB", True)  # set on the main thread
    assert all(on_main for _, on_main in descriptions)
    assert_installed(hub)


@pytest.mark.qgis
def test_cancelling_the_task_keeps_partial_files_and_the_next_task_resumes(hub, qgis_proxy):
    from qgis_support import qgis_app

    qgis_app()
    from geoclip_qgis.ui.models_dialog import DownloadTask

    hub.delay = 0.04  # about 2.6 s for the weights: time to press Cancel
    task = DownloadTask()
    task.progressChanged.connect(lambda percent: percent > 30 and task.cancel())
    assert not run_task(task)
    assert task.cancelled and "download again to continue" in task.error
    assert weights.find_backbone().path is None
    kept = sum(p.stat().st_size for p in staging().iterdir())
    total = sum(map(len, hub.files.values()))
    assert 0.3 * total < kept < total

    hub.delay, mark = 0.0, len(hub.requests)
    again = DownloadTask()
    assert run_task(again), again.error
    assert hub.sent(mark) == total - kept
    assert_installed(hub)


@pytest.mark.qgis
def test_the_dialog_button_uses_qgis_proxy_reports_a_cancel_and_resumes(hub, qgis_proxy, monkeypatch):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtWidgets import QMessageBox
    from qgis_support import wait_for

    from geoclip_qgis.ui import models_dialog
    from geoclip_qgis.ui.models_dialog import ModelsDialog

    said = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: said.append(("info", text)))
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: said.append(("warning", text)))
    monkeypatch.setattr(  # boxes that quote errors show them as plain text
        models_dialog,
        "show_message",
        lambda parent, title, text, warning=False: said.append(("warning" if warning else "info", text)),
    )
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # reachable only through QGIS's proxy
    qgis_proxy(proxyEnabled=True, proxyType="HttpProxy", proxyHost="127.0.0.1", proxyPort=hub.server_address[1])
    chosen_clip = QgsSettings().value("geoclip_qgis/clip", "")
    QgsSettings().setValue("geoclip_qgis/clip", "")  # a CLIP folder chosen by an earlier test would be found first
    dialog = ModelsDialog()
    try:
        hub.delay = 0.04
        dialog.download()
        task = dialog._download
        dialog.download()  # pressed again while it runs
        assert said == [("info", "The backbone is already downloading (see QGIS's task bar).")]
        wait_for(lambda: task.progress() > 30, timeout=60)
        task.cancel()
        wait_for(lambda: len(said) == 2, timeout=60)
        assert said[1][0] == "info" and said[1][1].startswith("Download cancelled after")
        hub.delay, mark = 0.0, len(hub.requests)
        dialog.download()
        wait_for(lambda: dialog.state.backbone.found, timeout=60)
        assert dialog.state.backbone.source == "models folder" and len(said) == 2
        assert hub.sent(mark) < sum(map(len, hub.files.values()))  # resumed
        assert all(r["via_proxy"] for r in hub.requests)
        wait_for(lambda: dialog.checksums_done, timeout=120)
    finally:
        QgsSettings().setValue("geoclip_qgis/clip", chosen_clip)
        dialog.deleteLater()
