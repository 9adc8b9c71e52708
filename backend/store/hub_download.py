"""Resumable, cancellable downloads of a few files from the Hugging Face Hub, through an explicit proxy.

Plain ``urllib``, not huggingface_hub's downloader: recent huggingface_hub releases delete a failed
download's partial file (each attempt writes a uniquely named temporary file), so nothing could resume;
and a proxy handed in here must reach every request whichever HTTP client huggingface_hub uses. No Qt:
progress is reported as :class:`..progress.Progress` events counting bytes, and a ``should_stop()`` that
says yes stops the download with :class:`..errors.Cancelled`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from ..errors import Cancelled, WeightsError
from ..progress import BYTES, ProgressCallback, ShouldStop, Stage
from ..version import __version__

CHUNK = 256 * 1024  # cancel and progress granularity
PROGRESS_INTERVAL = 0.1  # seconds between progress reports: a 1.7 GB download has thousands of chunks
TIMEOUT_S = 30
RETRIES = 3  # per file, only after bytes arrived: a dropped connection, not an unreachable host
PARTIAL = ".incomplete"


class DownloadError(WeightsError):
    """A download failed; the message says why and what to do. Partial files are kept for a resume."""


class NoNetworkError(DownloadError):
    """No network, a name that does not resolve, a refused or dropped connection."""


class ProxyError(DownloadError):
    """The proxy cannot be reached, refuses the connection or wants credentials."""


class DiskFullError(DownloadError):
    """Not enough room for the files."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None = None  # large (LFS) files: the content's sha256
    blob_sha1: str | None = None  # small files: git's blob id


def hub_endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT`` (a mirror) as huggingface_hub reads it, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def file_url(repo: str, revision: str, name: str) -> str:
    return f"{hub_endpoint()}/{repo}/resolve/{revision}/{quote(name)}"


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    try:  # certifi too: some Python builds (macOS bundles) ship no system certificates
        import certifi

        context.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return context


def build_opener(proxies: dict[str, str] | None) -> urllib.request.OpenerDirector:
    """``proxies`` {"http": URL, "https": URL}; ``{}``: no proxy at all; None: the environment's
    (``HTTPS_PROXY``...) and the system's, which is urllib's default."""
    handlers: list = [urllib.request.HTTPSHandler(context=_ssl_context())]
    if proxies is not None:
        for address in proxies.values():
            if urlsplit(address).scheme not in ("http", "https"):
                raise ProxyError(
                    f"the proxy {_where(address)} is a {urlsplit(address).scheme.upper()} proxy; the download "
                    "can only go through an HTTP proxy: set one, or copy the backbone from another machine"
                )
        handlers.append(urllib.request.ProxyHandler(proxies))
    return urllib.request.build_opener(*handlers)


def _open(opener, url: str, offset: int = 0):
    headers = {"User-Agent": f"geoclip-qgis/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def list_files(repo: str, revision: str, names: Iterable[str], proxies=None) -> list[RemoteFile]:
    """Size and checksum of each named file at ``revision``, from the Hub's model API."""
    url = f"{hub_endpoint()}/api/models/{repo}/revision/{revision}?blobs=true"
    try:
        with _open(build_opener(proxies), url) as response:
            siblings = {s["rfilename"]: s for s in json.loads(response.read()).get("siblings", [])}
    except DownloadError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise explain(exc, url, proxies) from exc
    files = []
    for name in names:
        entry = siblings.get(name)
        if entry is None or entry.get("size") is None:
            raise DownloadError(f"the Hub lists no {name} in {repo} at revision {revision[:10]}")
        lfs = entry.get("lfs") or {}
        files.append(RemoteFile(name, int(entry["size"]), lfs.get("sha256"), None if lfs else entry.get("blobId")))
    return files


def mismatch(path: Path, remote: RemoteFile) -> str | None:
    """Which published checksum ``path`` fails ("sha256", "git blob id", "size"), or None."""
    if not path.is_file() or path.stat().st_size != remote.size:
        return "size"
    if remote.sha256:
        digest = hashlib.sha256()
    elif remote.blob_sha1:
        digest = hashlib.sha1(f"blob {remote.size}\0".encode(), usedforsecurity=False)
    else:
        return None
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    if remote.sha256:
        return None if digest.hexdigest() == remote.sha256 else "sha256"
    return None if digest.hexdigest() == remote.blob_sha1 else "git blob id"


class _Meter:
    """Bytes on disk over all files, as a progress stage; the stop check between chunks."""

    def __init__(self, stage: Stage, should_stop: ShouldStop | None):
        self.stage, self.should_stop = stage, should_stop

    @property
    def done(self) -> int:
        return self.stage.done

    def add(self, count: int) -> None:
        self.stage.update(self.stage.done + count)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            self.stage.flush()  # where it stopped: what the next call resumes from
            raise Cancelled(
                f"download cancelled after {_mb(self.done)} of {_mb(self.stage.total)}; what was fetched is kept: "
                "download again to continue from there"
            )


def _on_disk(folder: Path, remote: RemoteFile) -> int:
    final, partial = folder / remote.name, folder / (remote.name + PARTIAL)
    if final.is_file() and final.stat().st_size == remote.size:
        return remote.size
    return min(partial.stat().st_size, remote.size) if partial.is_file() else 0


def download_files(
    files: list[RemoteFile],
    url_for: Callable[[str], str],
    folder: Path,
    *,
    proxies: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    stage: str = "Downloading",
) -> None:
    """Fetch ``files`` into ``folder``. Each is written as ``NAME.incomplete`` and takes its own name
    only when complete; a failed or stopped call (:class:`..errors.Cancelled`, ``should_stop`` is asked
    after each chunk) leaves the partial files, and the next call resumes them with HTTP Range requests.
    ``progress`` hears ``stage`` counting bytes on disk (unit :data:`..progress.BYTES`), so it starts at
    what earlier calls fetched and rises to the sum of the files' sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(remote.size for remote in files)
    on_disk = sum(_on_disk(folder, remote) for remote in files)
    free = shutil.disk_usage(folder).free
    if free < total - on_disk:
        raise DiskFullError(
            f"not enough free disk space in {folder}: the download needs {_mb(total - on_disk)} more and "
            f"{_mb(free)} is free. Free some space (or choose another models folder) and download again"
        )
    meter = _Meter(Stage(progress, stage, total, BYTES, PROGRESS_INTERVAL, done=on_disk), should_stop)
    opener = build_opener(proxies)
    for remote in files:
        url = url_for(remote.name)
        try:
            _fetch(opener, url, folder, remote, meter)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise explain(exc, url, proxies, folder) from exc


def _fetch(opener, url: str, folder: Path, remote: RemoteFile, meter: _Meter) -> None:
    final, partial = folder / remote.name, folder / (remote.name + PARTIAL)
    if final.is_file() and final.stat().st_size == remote.size:
        return
    for attempt in range(RETRIES):
        before = meter.done
        try:
            _stream(opener, url, partial, remote, meter)
            break
        except (ConnectionError, TimeoutError, http.client.IncompleteRead):
            if meter.done == before or attempt == RETRIES - 1:
                raise
            time.sleep(1)
    os.replace(partial, final)


def _stream(opener, url: str, partial: Path, remote: RemoteFile, meter: _Meter) -> None:
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > remote.size:  # not this file's bytes: start over
        meter.add(-remote.size)
        partial.unlink()
        offset = 0
    meter.check()
    if offset == remote.size:
        return
    with _open(opener, url, offset) as response:
        content_range = response.headers.get("Content-Range", "")
        if offset and not (response.status == 206 and content_range.startswith(f"bytes {offset}-")):
            meter.add(-offset)  # the server sent the whole file: it is written from the start
            offset = 0
        with open(partial, "ab" if offset else "wb") as out:
            read = getattr(response, "read1", response.read)  # read1: what has arrived, so Cancel is prompt
            while block := read(CHUNK):
                out.write(block)
                meter.add(len(block))
                meter.check()
    if partial.stat().st_size != remote.size:
        raise http.client.IncompleteRead(b"", remote.size - partial.stat().st_size)


def _where(address: str) -> str:
    """A proxy or server address without its credentials."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _proxy_for(url: str, proxies: dict[str, str] | None) -> str | None:
    scheme, host = urlsplit(url).scheme, urlsplit(url).hostname or ""
    if proxies is not None:
        return proxies.get(scheme)
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


def _mb(size: float) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def explain(exc: BaseException, url: str, proxies=None, folder: Path | None = None) -> DownloadError:
    """The named error, in plain words, for what went wrong while fetching ``url``."""
    host, proxy = _where(url), _proxy_for(url, proxies)
    resume = "download again to resume"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFullError(f"the disk is full ({folder or exc.filename}): free some space and {resume}")
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code == 407:
            where = _where(proxy) if proxy else "in use"
            return ProxyError(f"the proxy {where} wants a user name and password (HTTP 407): check the proxy settings")
        if exc.code in (401, 403, 404):
            return DownloadError(f"{host} refused {urlsplit(url).path} (HTTP {exc.code} {exc.reason})")
        return NoNetworkError(f"{host} answered HTTP {exc.code} {exc.reason}; try again later and {resume}")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    text = str(reason)
    if proxy and "Tunnel connection failed" in text:
        why = "wants a user name and password" if "407" in text else f"refused to reach {host} ({text})"
        return ProxyError(f"the proxy {_where(proxy)} {why}: check the proxy settings")
    if isinstance(reason, ssl.SSLError):
        return DownloadError(f"the secure connection to {host} failed ({text}); a proxy may be intercepting it")
    if proxy and isinstance(reason, (ConnectionRefusedError, socket.gaierror, TimeoutError)):
        return ProxyError(f"the proxy {_where(proxy)} cannot be reached ({text}): check the proxy settings")
    if isinstance(reason, socket.gaierror):
        return NoNetworkError(f"cannot reach {host}: no network, or its name does not resolve ({text})")
    if isinstance(exc, urllib.error.URLError) and isinstance(reason, OSError):  # while connecting
        return NoNetworkError(f"cannot reach {host} ({text}): check the network connection")
    if isinstance(reason, (ConnectionError, TimeoutError, http.client.HTTPException)):
        return NoNetworkError(f"the connection to {host} dropped ({text or type(reason).__name__}); {resume}")
    return DownloadError(f"the download from {host} failed: {text or type(reason).__name__}; {resume}")
