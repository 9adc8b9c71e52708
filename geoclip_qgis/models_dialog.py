"""Models and settings: where each weight file was found, device and versions; choose folders,
import a folder or bundle, export a bundle, download the backbone (the only network use)."""

from __future__ import annotations

import html
from dataclasses import replace

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QMessageBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from . import deps
from .session import drop_engines, load_settings, save_settings


def status_html(heads: str, clip: str) -> str:
    """The engine's own report of what was found where, as HTML for the dialog."""
    from .backend import weights

    report = weights.status(heads or None, clip or None, checksums=False)
    parts = [
        f"<p>Models folder: <code>{html.escape(report['models_dir'])}</code><br>"
        f"Cache folder: <code>{html.escape(report['cache_dir'])}</code></p>"
    ]
    for key, title in (("heads", "GeoCLIP heads"), ("backbone", "CLIP backbone (ViT-L/14)")):
        entry = report[key]
        if entry["found"]:
            total = sum(row["bytes"] for row in entry["files"])
            parts.append(
                f"<p><b>{title}</b>: found in {html.escape(entry['source'])} — "
                f"<code>{html.escape(entry['path'])}</code> ({weights.human_size(total)})</p><ul>"
            )
            parts += [
                f"<li>{html.escape(row['file'])} — {weights.human_size(row['bytes'])}</li>"
                for row in entry["files"][:12]
            ]
            parts.append("</ul>")
        else:
            parts.append(f"<p><b>{title}</b>: <span style='color:#b00'>not found</span></p>")
        if entry["tried"]:
            parts.append(
                "<ul>"
                + "".join(
                    f"<li>passed over {html.escape(s)}: <code>{html.escape(p)}</code> ({html.escape(r)})</li>"
                    for s, p, r in entry["tried"]
                )
                + "</ul>"
            )
    import torch
    import transformers

    parts.append(
        f"<p>torch {torch.__version__} (CUDA {'available' if torch.cuda.is_available() else 'not available'}), "
        f"transformers {transformers.__version__}</p>"
    )
    return "".join(parts)


class DownloadTask(QgsTask):
    def __init__(self):
        super().__init__("GeoCLIP: downloading the CLIP backbone", QgsTask.Flag.CanCancel)
        self.error = ""

    def run(self) -> bool:
        from .backend import weights

        try:
            weights.download_backbone()
            return True
        except Exception as exc:
            self.error = str(exc)
            return False


class ModelsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("GeoCLIP models")
        self.resize(720, 560)
        settings = load_settings()
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.heads = QgsFileWidget()
        self.heads.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.heads.setFilePath(settings.heads)
        self.clip = QgsFileWidget()
        self.clip.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.clip.setFilePath(settings.clip)
        self.precision = QComboBox()
        for value in ("auto", "fp32", "bf16", "fp16"):
            self.precision.addItem(value, value)
        self.precision.setCurrentIndex(max(self.precision.findData(settings.precision), 0))
        form.addRow("Heads folder (empty: automatic)", self.heads)
        form.addRow("CLIP folder (empty: automatic)", self.clip)
        form.addRow("Precision", self.precision)
        self.remember = QCheckBox("Remember photos' CLIP features on disk (faster reruns)")
        self.remember.setToolTip(
            "Keeps each answered photo's sha256 and CLIP embedding (no name, no pixels) in the cache folder,\n"
            "so a rerun skips the vision tower. Off: nothing about the photos is stored."
        )
        self.remember.setChecked(settings.embedding_cache)
        form.addRow("", self.remember)
        layout.addLayout(form)
        self.report = QTextBrowser()
        layout.addWidget(self.report)
        actions = QHBoxLayout()
        for text, slot in (
            ("Refresh", self.refresh),
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
        layout.addWidget(buttons)
        self._download = None
        self.refresh()

    def refresh(self) -> None:
        missing = deps.missing()
        if missing:
            self.report.setPlainText(deps.explanation(missing))
            return
        try:
            self.report.setHtml(status_html(self.heads.filePath(), self.clip.filePath()))
        except Exception as exc:
            self.report.setPlainText(str(exc))

    def save(self) -> None:
        save_settings(
            replace(
                load_settings(),
                heads=self.heads.filePath(),
                clip=self.clip.filePath(),
                precision=self.precision.currentData(),
                embedding_cache=self.remember.isChecked(),
            )
        )
        self.accept()

    def _import(self, path: str) -> None:
        from .backend import bundles, weights

        try:
            imported = bundles.import_models(path)
            QMessageBox.information(self, "GeoCLIP", f"Imported {', '.join(imported)} into {weights.models_dir()}")
        except Exception as exc:
            QMessageBox.warning(self, "GeoCLIP", str(exc))
        self.refresh()

    def import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A heads folder, a CLIP folder, or both")
        if folder:
            self._import(folder)

    def import_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "A GeoCLIP model bundle", "", "Bundle (*.zip)")
        if path:
            self._import(path)

    def export_bundle(self) -> None:
        from .backend import bundles

        path, _ = QFileDialog.getSaveFileName(self, "Write a model bundle", "geoclip-models.zip", "Bundle (*.zip)")
        if path:
            try:
                bundles.export_bundle(path, self.heads.filePath() or None, self.clip.filePath() or None)
                QMessageBox.information(self, "GeoCLIP", f"Wrote {path}")
            except Exception as exc:
                QMessageBox.warning(self, "GeoCLIP", str(exc))

    def clear_caches(self) -> None:
        from .backend.cache import cache_dir, clear_caches

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

    def finetune(self) -> None:
        """Processing's own dialog for the fine-tune algorithm: parameters, a background run with
        progress, a log and Cancel. The new heads folder is then chosen above."""
        import processing

        processing.execAlgorithmDialog("geoclip:finetune_heads", {})
        self.refresh()

    def download(self) -> None:
        answer = QMessageBox.question(
            self,
            "GeoCLIP",
            "Download the CLIP ViT-L/14 backbone (about 1.7 GB) from the Hugging Face Hub?\n"
            "This is the only time GeoCLIP uses the network.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self._download = DownloadTask()
        self._download.taskCompleted.connect(self.refresh)
        self._download.taskTerminated.connect(
            lambda: QMessageBox.warning(self, "GeoCLIP", self._download.error or "download cancelled")
        )
        QgsApplication.taskManager().addTask(self._download)
