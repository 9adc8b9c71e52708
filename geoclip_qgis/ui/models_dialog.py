"""Models and settings: what can run with the weights found, what is missing and the button that fixes
it; where each weight file was found, its size and checksum; choose folders, precision and decoding;
import a folder or bundle, export a bundle, download the backbone (the only network use); diagnostics
for a bug report.

The engine's :class:`.backend.model_state.ModelState` says what is missing and how to fix it inside QGIS
(dialogs and buttons, never command-line options); this dialog shows it."""

from __future__ import annotations

import html
import threading
from dataclasses import replace
from pathlib import Path

from qgis.core import QgsApplication, QgsMessageLog, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
)

from ..backend.model.model_state import Capability, ModelState, ProblemCode, source_words
from ..core import deps
from ..core.plain_text import show_message
from ..core.session import EngineSettings, current_state, dialog_folder, drop_engines, load_settings, save_settings
from . import diagnostics

LOG_TAG = "GeoCLIP"


def state_html(state: ModelState, checksums: dict | None = None, versions: str = "") -> str:
    """The model state as HTML for the dialog: what runs, then each part's weight files."""
    checksums = checksums or {}
    parts = ["<h3>What can run</h3><table cellspacing='2' cellpadding='2'>"]
    for capability in Capability:
        ok = state.can(capability)
        mark = "<span style='color:#1a7f37'>✔ ready</span>" if ok else "<span style='color:#b00'>✘ not yet</span>"
        parts.append(
            f"<tr><td><b>{capability.label}</b></td><td>{mark}</td><td>needs {html.escape(capability.needs)}</td></tr>"
        )
    parts.append("</table>")
    for problem in state.problems:
        colour = "#b00" if problem.blocks else "#a15c00"
        parts.append(
            f"<p style='color:{colour}'>⚠ {html.escape(problem.text)}<br>"
            f"<i>{html.escape(problem.fix_in_models_dialog())}</i></p>"
        )
    for part in state.parts:
        parts.append(f"<h3><a name='{part.key}'></a>{part.title}</h3>")
        if not part.found:
            parts.append("<p style='color:#b00'>not found. Looked in:</p><ul>")
            for place in part.tried:
                where = html.escape(source_words(place.source))
                if place.has_folder:
                    folder, reason = html.escape(place.path), html.escape(place.reason)
                    parts.append(f"<li>{where}: <code>{folder}</code> ({reason})</li>")
                else:  # nothing to point at: "(no openai/... in the cache)"
                    parts.append(f"<li>{where}: {html.escape(place.path.strip('()'))}</li>")
            parts.append("</ul>")
            continue
        parts.append(f"<p>Found in {html.escape(source_words(part.source))}:<br><code>{html.escape(part.path)}</code>")
        architecture = part.architecture
        if architecture:
            text = "yes" if architecture.answers_text else "no"
            parts.append(f"<br>Checkpoint: {html.escape(architecture.description)}; text queries: {text}")
        parts.append("</p><table cellspacing='2' cellpadding='2'><tr><th align='left'>weight file</th>")
        parts.append("<th align='right'>size</th><th align='left'>sha256</th></tr>")
        for row in weight_files(part.path, part.key):
            digest = checksums.get(row["path"], "computing…")
            parts.append(
                f"<tr><td>{html.escape(row['file'])}</td><td align='right'>{row['size']}</td>"
                f"<td><code>{html.escape(digest[:16])}</code></td></tr>"
            )
        parts.append("</table>")
    if versions:
        parts.append(f"<p>{html.escape(versions)}</p>")
    return "".join(parts)


def weight_files(folder: str, part: str) -> list[dict]:
    """The files that hold weights (not configuration): the heads' .pth files and gallery, the
    backbone's .safetensors or .bin."""
    from ..backend.store import weights

    if not folder:
        return []
    kind = "heads" if part == "heads" else weights.BACKBONE_FOLDER
    rows = []
    for path in weights.model_files(Path(folder), kind):
        if path.suffix in (".pth", ".csv", ".safetensors", ".bin"):
            rows.append(
                {
                    "file": path.relative_to(folder).as_posix(),
                    "path": str(path),
                    "size": weights.human_size(path.stat().st_size),
                }
            )
    return rows


def _sha256(path: str) -> str:
    try:
        from ..backend.store.cache import file_sha256  # remembered by size and time: a backbone is hashed once
    except ImportError:
        from ..backend.store.weights import sha256_file as file_sha256
    return file_sha256(Path(path))


class _Checksums(QObject):
    """sha256 of the weight files, computed on a worker thread (a backbone takes seconds)."""

    ready = pyqtSignal(dict)

    def start(self, paths: list[str]) -> None:
        def work():
            sums = {}
            for path in paths:
                try:
                    sums[path] = _sha256(path)
                except OSError as exc:
                    sums[path] = f"unreadable: {exc}"
            self.ready.emit(sums)

        threading.Thread(target=work, name="geoclip-checksums", daemon=True).start()


class DownloadTask(QgsTask):
    """The backbone download on QGIS's task manager: progress in percent, "MB of MB" in the description,
    Cancel stops it within a chunk and keeps the partial files, so the next download resumes them.
    ``proxies``: the engine's mapping (see :meth:`proxies_from_settings`), read on the main thread."""

    TITLE = "GeoCLIP: downloading the CLIP backbone"
    status_line = pyqtSignal(object)  # a backend Progress; not `status`: QgsTask.status() is the task's state

    def __init__(self, proxies: dict | None = None):
        super().__init__(self.TITLE, QgsTask.Flag.CanCancel)
        self.error = ""
        self.cancelled = False
        self.proxies = proxies
        # Queued to the main thread, where the task object lives: descriptions are not set from workers.
        self.status_line.connect(self._show_status)

    @staticmethod
    def proxies_from_settings(url: str = "") -> dict | None:
        """QGIS's proxy (Settings › Options › Network) for ``url`` (the Hub), as the engine takes it:
        None when QGIS uses none or the system's (the engine then reads the system's, as before), ``{}``
        for a URL QGIS reaches without a proxy, else {"http": URL, "https": URL}."""
        from urllib.parse import quote

        from qgis.core import QgsSettings

        from ..backend.store.hub_download import hub_endpoint

        settings, url = QgsSettings(), url or hub_endpoint()

        def listed(key: str) -> bool:
            entries = settings.value(key, [])
            entries = [entries] if isinstance(entries, str) else list(entries or [])
            return any(entry.strip() and url.startswith(entry.strip()) for entry in entries)

        if not settings.value("proxy/proxyEnabled", False, type=bool):
            return None
        if listed("proxy/noProxyUrls"):
            return {}
        kind = settings.value("proxy/proxyType", "DefaultProxy", type=str) or "DefaultProxy"
        host = settings.value("proxy/proxyHost", "", type=str).strip()
        # DefaultProxy is the system's; QGIS sends excluded URLs through the system's proxy too.
        if kind in ("DefaultProxy", "FtpCachingProxy") or not host or listed("proxy/proxyExcludedUrls"):
            return None
        port = settings.value("proxy/proxyPort", "", type=str).strip()
        user = settings.value("proxy/proxyUser", "", type=str)
        password = settings.value("proxy/proxyPassword", "", type=str)
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
        scheme = "socks5" if kind == "Socks5Proxy" else "http"
        address = f"{scheme}://{credentials}{host}" + (f":{port}" if port else "")
        return {"http": address, "https": address}

    def run(self) -> bool:
        from ..backend.errors import Cancelled
        from ..backend.store import weights

        try:
            weights.download_backbone(progress=self._progress, should_stop=self.isCanceled, proxies=self.proxies)
            return True
        except Cancelled as exc:
            self.cancelled, self.error = True, str(exc)
        except Exception as exc:
            self.error = str(exc)
        return False

    def _progress(self, event) -> None:
        from ..core.tasks import show_progress

        show_progress(self, event, self.status_line)

    def _show_status(self, event) -> None:
        self.setDescription(f"{self.TITLE}: {event.counted()}")  # "1.2 MB of 1,710.7 MB"


class ModelsDialog(QDialog):
    """``focus``: the problem to open at, its fix buttons first."""

    headsInstalled = pyqtSignal()  # noqa: N815 - Qt naming

    def __init__(self, parent=None, focus: ProblemCode | None = None):
        super().__init__(parent)
        self.setWindowTitle("GeoCLIP models")
        self.resize(760, 640)
        self.focus_code = focus
        self.state: ModelState | None = None
        self.checksums: dict = {}
        self.checksums_done = False
        self._checksum_worker = _Checksums(self)
        self._checksum_worker.ready.connect(self._checksums_ready)
        settings = load_settings()
        layout = QVBoxLayout(self)

        self.fix_box = QGroupBox("To fix")
        self.fix_box.setStyleSheet("QGroupBox { border: 2px solid #d08000; border-radius: 4px; margin-top: 1.2em; }")
        fix_layout = QVBoxLayout(self.fix_box)
        self.fix_text = QLabel()
        self.fix_text.setWordWrap(True)
        fix_layout.addWidget(self.fix_text)
        fix_buttons = QHBoxLayout()
        self.fix_import = QPushButton("Import folder…")
        self.fix_import.clicked.connect(self.import_folder)
        self.fix_bundle = QPushButton("Import bundle…")
        self.fix_bundle.clicked.connect(self.import_bundle)
        self.fix_download = QPushButton("Download backbone")
        self.fix_download.clicked.connect(self.download)
        self.fix_heads = QPushButton("Install heads…")
        self.fix_heads.clicked.connect(self.install_heads)
        for button in (self.fix_heads, self.fix_import, self.fix_bundle, self.fix_download):
            fix_buttons.addWidget(button)
        fix_buttons.addStretch(1)
        fix_layout.addLayout(fix_buttons)
        layout.addWidget(self.fix_box)

        self.report = QTextBrowser()
        layout.addWidget(self.report, 1)

        form = QFormLayout()
        self.heads = QgsFileWidget()
        self.heads.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.heads.setFilePath(settings.heads)
        self.heads.fileChanged.connect(lambda _: self.refresh())
        self.clip = QgsFileWidget()
        self.clip.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.clip.setFilePath(settings.clip)
        self.clip.fileChanged.connect(lambda _: self.refresh())
        self.precision = QComboBox()
        for value, label in (
            ("auto", "Automatic"),
            ("fp32", "fp32 (exact, slowest)"),
            ("bf16", "bf16"),
            ("fp16", "fp16 (GPU)"),
        ):
            self.precision.addItem(label, value)
        self.precision.setCurrentIndex(max(self.precision.findData(settings.precision), 0))
        self.decode_workers = QSpinBox()
        self.decode_workers.setRange(0, 64)
        self.decode_workers.setSpecialValueText("Automatic")
        self.decode_workers.setValue(settings.decode_workers)
        self.decode_workers.setToolTip("Threads that read and decode photos while the model works (0: automatic)")
        form.addRow("Heads folder (empty: automatic)", self.heads)
        form.addRow("CLIP folder (empty: automatic)", self.clip)
        form.addRow("Precision", self.precision)
        form.addRow("Photo decoding threads", self.decode_workers)
        self.remember = QCheckBox("Remember photos' CLIP features on disk (faster reruns)")
        self.remember.setToolTip(
            "Keeps each answered photo's sha256 and CLIP embedding (no name, no pixels) in the cache folder,\n"
            "so a rerun skips the vision tower. Off: nothing about the photos is stored."
        )
        self.remember.setChecked(settings.embedding_cache)
        form.addRow("", self.remember)
        layout.addLayout(form)
        actions = QHBoxLayout()
        for text, slot in (
            ("Import folder…", self.import_folder),
            ("Import bundle…", self.import_bundle),
            ("Export bundle…", self.export_bundle),
            ("Download backbone", self.download),
            ("Fine-tune…", self.finetune),
            ("Clear caches…", self.clear_caches),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            actions.addWidget(button)
        layout.addLayout(actions)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        self.diagnostics_button = buttons.addButton("Diagnostics…", QDialogButtonBox.ButtonRole.ActionRole)
        self.diagnostics_button.setToolTip("Versions, folders, caches and the last errors, to paste in a bug report")
        self.diagnostics_button.clicked.connect(self.show_diagnostics)
        layout.addWidget(buttons)
        self._download = None
        self._versions_text = ""
        self.refresh()
        QTimer.singleShot(0, self._load_versions)

    def chosen(self) -> EngineSettings:
        return replace(
            load_settings(),
            heads=self.heads.filePath(),
            clip=self.clip.filePath(),
            precision=self.precision.currentData(),
            decode_workers=self.decode_workers.value(),
            embedding_cache=self.remember.isChecked(),
        )

    def refresh(self) -> None:
        missing = deps.missing()
        if missing:
            self.fix_box.setVisible(False)
            self.report.setPlainText(deps.explanation(missing))
            return
        try:
            self.state = current_state(self.chosen())
        except Exception as exc:
            self.fix_box.setVisible(False)
            self.report.setPlainText(f"The weights could not be checked: {exc}")
            return
        self._show_fix()
        self._render()
        paths = [
            row["path"]
            for part in self.state.parts
            for row in weight_files(part.path, part.key)
            if row["path"] not in self.checksums
        ]
        if paths:
            self.checksums_done = False
            self._checksum_worker.start(paths)
        else:
            self.checksums_done = True

    def _load_versions(self) -> None:
        """torch's and transformers' versions for the report: importing torch takes seconds, so it happens
        once the dialog is on screen, under a busy cursor, not before it opens."""
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            import torch
            import transformers

            cuda = "available" if torch.cuda.is_available() else "not available"
            self._versions_text = f"torch {torch.__version__} (CUDA {cuda}), transformers {transformers.__version__}"
        except Exception:  # not installed or broken: the report says what it can without them
            self._versions_text = ""
        finally:
            QApplication.restoreOverrideCursor()
        if self.state is not None:
            self._render()

    def _render(self) -> None:
        self.report.setHtml(state_html(self.state, self.checksums, self._versions_text))

    def _show_fix(self) -> None:
        problems = self.state.problems
        focused = self.state.problem(self.focus_code) if self.focus_code else None
        problem = focused or (problems[0] if problems else None)
        self.fix_box.setVisible(problem is not None)
        if problem is None:
            return
        self.fix_text.setText(f"<b>{html.escape(problem.text)}</b><br>{html.escape(problem.fix_in_models_dialog())}")
        self.fix_download.setVisible(problem.code in (ProblemCode.BACKBONE_MISSING, ProblemCode.NOT_VIT_L14))
        heads_missing = problem.code is ProblemCode.HEADS_MISSING
        self.fix_heads.setVisible(heads_missing)
        (self.fix_heads if heads_missing else self.fix_import).setFocus()

    def _checksums_ready(self, sums: dict) -> None:
        self.checksums.update(sums)
        self.checksums_done = True
        if self.state is not None:
            self._render()

    def save(self) -> None:
        save_settings(self.chosen())
        self.accept()

    def _import(self, path: str) -> None:
        from ..backend.store import bundles, weights

        try:
            imported = bundles.import_models(path)
        except Exception as exc:
            show_message(self, "GeoCLIP", str(exc), warning=True)
            self.refresh()
            return
        # A folder chosen above that cannot be used would hide what was just imported: use the models folder.
        if self.clip.filePath() and weights.backbone_problem(Path(self.clip.filePath())):
            self.clip.setFilePath("")
        if self.heads.filePath() and weights.heads_problem(Path(self.heads.filePath())):
            self.heads.setFilePath("")
        save_settings(self.chosen())
        show_message(self, "GeoCLIP", weights.imported_message(imported))
        self.refresh()

    def install_heads(self) -> None:
        """GeoCLIP's release (heads and gallery) into the plugin's folder, online or from wheels."""
        from ..install.install_dialog import InstallDialog

        dialog = InstallDialog(self, heads_only=True)
        dialog.installed.connect(self.refresh)
        dialog.installed.connect(self.headsInstalled)
        dialog.exec()

    def import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A heads folder, a CLIP folder, or both", dialog_folder())
        if folder:
            self._import(folder)

    def import_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "A GeoCLIP model bundle", dialog_folder(), "Bundle (*.zip)")
        if path:
            self._import(path)

    def export_bundle(self) -> None:
        from ..backend.store import bundles

        default = str(Path(dialog_folder()) / "geoclip-models.zip")
        path, _ = QFileDialog.getSaveFileName(self, "Write a model bundle", default, "Bundle (*.zip)")
        if path:
            try:
                bundles.export_bundle(path, self.heads.filePath() or None, self.clip.filePath() or None)
                show_message(self, "GeoCLIP", f"Wrote {path}")
            except Exception as exc:
                show_message(self, "GeoCLIP", str(exc), warning=True)

    def clear_caches(self) -> None:
        from ..backend.store.cache import cache_dir, clear_caches

        answer = QMessageBox.question(
            self,
            "GeoCLIP",
            f"Delete everything in the cache folder {cache_dir()}?\n\nThe photos' CLIP embeddings go (photos are "
            "encoded again next time), and the location features of the gallery and rasters (computed again on "
            "first use). Your outputs and models are not touched.",
        )
        if answer == QMessageBox.StandardButton.Yes:
            drop_engines()
            removed = clear_caches()
            QMessageBox.information(self, "GeoCLIP", "Removed: " + (", ".join(removed) or "nothing, it was empty"))

    def show_diagnostics(self) -> None:
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # importing torch takes a moment
        try:
            text = diagnostics.report(self.chosen())
        finally:
            QApplication.restoreOverrideCursor()
        DiagnosticsDialog(text, self).exec()

    def finetune(self) -> None:
        """Processing's own dialog for the fine-tune algorithm: parameters, a background run with
        progress, a log and Cancel. The new heads folder is then chosen above."""
        import processing

        processing.execAlgorithmDialog("geoclip:finetune_heads", {})
        self.refresh()

    def download(self) -> None:
        running = (QgsTask.TaskStatus.Queued, QgsTask.TaskStatus.OnHold, QgsTask.TaskStatus.Running)
        try:
            busy = self._download is not None and self._download.status() in running
        except RuntimeError:  # the task manager already deleted the finished task
            busy = False
        if busy:
            QMessageBox.information(self, "GeoCLIP", "The backbone is already downloading (see QGIS's task bar).")
            return
        answer = QMessageBox.question(
            self,
            "GeoCLIP",
            "Download the CLIP ViT-L/14 backbone (about 1.7 GB) from the Hugging Face Hub?\n"
            "This is the only time GeoCLIP uses the network, through the proxy set in QGIS's options. "
            "If it is cancelled or interrupted, Download backbone continues where it stopped.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        task = self._download = DownloadTask(DownloadTask.proxies_from_settings())
        task.taskCompleted.connect(self._downloaded)

        def stopped():
            if task.cancelled or not task.error:  # cancelled while running, or before it started
                text = task.error or "download cancelled"
                show_message(self, "GeoCLIP", text[:1].upper() + text[1:])
            else:
                QgsMessageLog.logMessage(f"CLIP backbone download failed: {task.error}", LOG_TAG)
                show_message(self, "GeoCLIP", f"The download failed: {task.error}", warning=True)

        task.taskTerminated.connect(stopped)
        QgsApplication.taskManager().addTask(task)

    def _downloaded(self) -> None:
        if self.clip.filePath():  # the download went to the models folder: let the lookup find it
            self.clip.setFilePath("")
            save_settings(self.chosen())
        QgsMessageLog.logMessage("CLIP backbone downloaded", LOG_TAG)
        self.refresh()


class DiagnosticsDialog(QDialog):
    """The diagnostics report, read-only, with a button that copies it for a bug report."""

    def __init__(self, text: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("GeoCLIP diagnostics")
        self.resize(720, 560)  # fits a 1366x768 screen with QGIS's title bar and taskbar
        self.text = text
        layout = QVBoxLayout(self)
        layout.addWidget(
            QLabel("Paste this into a bug report. It names folders and files on this computer: read it before sharing.")
        )
        self.view = QPlainTextEdit()
        self.view.setReadOnly(True)
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)  # long paths wrap: nothing hidden
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.view.setPlainText(text)
        layout.addWidget(self.view, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton("Copy report", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.text)
