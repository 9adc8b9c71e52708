"""The dialogs the dock opens: the installer of the missing Python packages ("Install dependencies…")
and the weights' dialog ("Models…" or "Fix…"), opened at the problem that keeps Run off. Each dialog's
module is imported only when it is opened, so importing the dock does not import them."""

from __future__ import annotations

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QApplication


def open_install_dialog(dock) -> None:
    from ..install.install_dialog import InstallDialog

    dialog = InstallDialog(dock)
    dialog.installed.connect(dock._installed)
    dialog.exec()


def open_models_dialog(dock) -> None:
    """The dialog stays ``dock.models_dialog`` after it closes; the dock's state is read again then."""
    from .models_dialog import ModelsDialog

    focus = dock.model_problem.code if dock.model_problem else None
    if focus is None and dock.state and dock.state.problems:
        focus = dock.state.problems[0].code
    QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # it reads the weight folders before it shows
    try:
        dock.models_dialog = ModelsDialog(dock, focus=focus)
    finally:
        QApplication.restoreOverrideCursor()
    dock.models_dialog.headsInstalled.connect(dock.dependenciesInstalled)
    dock.models_dialog.exec()
    dock.refresh_model_state()
