"""Install what a first answer needs into this QGIS: the engine's packages (CPU or CUDA build of torch)
and GeoCLIP's heads and gallery, online or from a local folder of wheels, with progress, a log and
Cancel; or, where the packages are already there, the heads alone. The work is
:func:`.installer.install` (or :func:`.installer.install_heads`) in a QgsTask. A failure is explained in
plain words above pip's own output (:mod:`.install_failures`)."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
)

from ..core import deps
from . import installer
from .install_failures import explain


class InstallTask(QgsTask):
    line = pyqtSignal(str)

    def __init__(self, build: str, wheels: str | None, heads_only: bool = False):
        what = "GeoCLIP's heads" if heads_only else "GeoCLIP's packages and heads"
        super().__init__(f"GeoCLIP: installing {what}", QgsTask.Flag.CanCancel)
        self.build, self.wheels, self.heads_only, self.error = build, wheels, heads_only, ""

    def run(self) -> bool:
        try:
            if self.heads_only:
                installer.install_heads(deps.plugin_python_dir(), self.wheels, self.line.emit, self.isCanceled)
            else:
                installer.install(deps.plugin_python_dir(), self.build, self.wheels, self.line.emit, self.isCanceled)
            return True
        except Exception as exc:  # shown in the dialog's log
            self.error = str(exc)
            return False


class InstallDialog(QDialog):
    installed = pyqtSignal()

    def __init__(self, parent=None, heads_only: bool = False):
        super().__init__(parent)
        self.heads_only = heads_only
        self.setWindowTitle("Install GeoCLIP's heads" if heads_only else "Install what GeoCLIP needs")
        self.resize(720, 480)
        layout = QVBoxLayout(self)
        missing = deps.missing()
        release = f"GeoCLIP's trained heads and GPS gallery ({deps.HEADS_RELEASE}, about 40 MB, checked by sha256)"
        intro = QLabel(
            f"This installs {release}.\n"
            if heads_only
            else f"Missing in this QGIS's Python: {', '.join(missing) or 'nothing'}.\n"
            f"This installs them, and {release}.\n"
        )
        intro.setText(
            intro.text() + f"Everything goes into {deps.plugin_python_dir()} — nothing else on the system changes.\n"
            "The CLIP backbone (about 1.7 GB) is the one step left after this: Models… › Download backbone, "
            "or Import folder/bundle."
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(intro)
        form = QFormLayout()
        self.cpu = QRadioButton("CPU build of torch (about 200 MB)")
        self.cuda = QRadioButton("CUDA build of torch (NVIDIA GPU; several GB)")
        group = QButtonGroup(self)
        group.addButton(self.cpu)
        group.addButton(self.cuda)
        (self.cuda if installer.has_nvidia_gpu() else self.cpu).setChecked(True)
        builds = QHBoxLayout()
        builds.addWidget(self.cpu)
        builds.addWidget(self.cuda)
        form.addRow("torch", builds)
        for button in (self.cpu, self.cuda):
            button.setVisible(not heads_only)
        form.labelForField(builds).setVisible(not heads_only)
        self.wheels = QgsFileWidget()
        self.wheels.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels.setToolTip("Offline: a folder made with `make wheelhouse` on a connected machine")
        form.addRow("From a folder of wheels (offline)", self.wheels)
        layout.addLayout(form)
        self.failure = QLabel()
        self.failure.setWordWrap(True)
        self.failure.setTextFormat(Qt.TextFormat.PlainText)  # pip's words hold "<...>"
        self.failure.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.failure.setStyleSheet("QLabel { border: 2px solid #b00; border-radius: 4px; padding: 6px; }")
        self.failure.setVisible(False)
        layout.addWidget(self.failure)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        layout.addWidget(self.log)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        layout.addWidget(self.progress)
        buttons = QHBoxLayout()
        self.start = QPushButton("Install")
        self.start.clicked.connect(self.begin)
        self.stop = QPushButton("Cancel")
        self.stop.setEnabled(False)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        for button in (self.start, self.stop, close):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.task = None
        self._output_from = 0
        self._loaded_before: list[str] = []

    def begin(self) -> None:
        self._loaded_before = deps.loaded_packages()
        self.task = InstallTask(
            "cuda" if self.cuda.isChecked() else "cpu", self.wheels.filePath() or None, self.heads_only
        )
        self.task.line.connect(self.log.appendPlainText)
        self.task.taskCompleted.connect(self._done)
        self.task.taskTerminated.connect(self._failed)
        self.stop.clicked.connect(self.task.cancel)
        self.start.setEnabled(False)
        self.stop.setEnabled(True)
        self.failure.setVisible(False)
        self._output_from = len(self.log.toPlainText())  # an earlier attempt's output is not this one's cause
        self.progress.setRange(0, 0)  # busy: pip does not say how far it is
        QgsApplication.taskManager().addTask(self.task)

    def _done(self) -> None:
        deps.add_plugin_python_dir()
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.stop.setEnabled(False)
        still = deps.missing()
        stale = self._loaded_before
        if still:
            self.log.appendPlainText(f"Still missing: {', '.join(still)}")
        elif stale:
            self.log.appendPlainText(
                f"Installed. QGIS had already loaded {', '.join(stale)} before: restart QGIS to use what was installed."
            )
        else:
            self.log.appendPlainText(
                "Installed: the dock and the Processing algorithms work now, no restart needed. Next: the CLIP "
                "backbone (Models… › Download backbone or Import)."
            )
        self.installed.emit()

    def _failed(self) -> None:
        self.progress.setRange(0, 1)
        self.start.setEnabled(True)
        self.stop.setEnabled(False)
        error = self.task.error or "cancelled"
        if error != "cancelled":  # pip's output is in the log above; the cause goes on top, in plain words
            words = explain(f"{self.log.toPlainText()[self._output_from :]}\n{error}")
            self.failure.setText(f"Not installed. {words}\n(pip's full output is below.)")
            self.failure.setVisible(True)
        self.log.appendPlainText(f"Not installed: {error}. Nothing was changed.")
