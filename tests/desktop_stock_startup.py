"""Runs inside the real QGIS desktop (as startup.py) for the stock-QGIS end-to-end test: a QGIS with
nothing added to its Python, the plugin from its ZIP, then only what the plugin offers. Stages the test
photographs (``<stage>.ready`` when the screen shows it, ``<stage>.done`` once photographed):

1. stock-dock: the toolbar button opens the dock; it says what is missing and offers Install dependencies….
2. stock-installer: the installer, its folder of wheels chosen (offline).
3. stock-installed: the installer done: packages and GeoCLIP's heads, no restart needed.
4. stock-models: Fix… opens Models: the heads are there, the CLIP backbone is the one step left.
5. stock-answers: a folder of JPEG, PNG and HEIC photos answered on the map.
Then QGIS quits.
"""

import os
import sys
import time

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QMessageBox
from qgis.utils import iface

sys.path.insert(0, os.environ["GEOCLIP_E2E_TESTS"])  # desktop_stages, shared with the other script
from desktop_stages import E2E, HEIGHT, WIDTH, dock, kept, later, plugin, poll, report, save, stage


def modal():
    return QApplication.activeModalWidget()


def start():
    iface.mainWindow().setGeometry(0, 0, WIDTH, HEIGHT)  # Xvfb has no window manager to maximise it
    report["plugin_loaded"] = plugin() is not None
    report["torch_before"] = "torch" in sys.modules
    if plugin() is None:
        save()
        return
    plugin().action.trigger()  # the toolbar button
    later(2000, dock_shown)


def dock_shown():
    d = dock()
    report["dock"] = {
        "visible": d.isVisible(),
        "install_offered": d.install_button.isVisible(),
        "run_enabled": d.run_button.isEnabled(),
        "model": d.model_label.text(),
        "says": d.status.text(),
        "width": d.width(),
    }
    report["provider_before"] = QgsApplication.processingRegistry().providerById("geoclip") is not None
    stage("stock-dock", open_installer)


def open_installer():
    poll(lambda: modal() is not None, installer_shown)
    dock().install_button.click()  # modal: the timers keep running in its loop
    # the dialog is closed: the dock has been told what was installed
    report["after_install"] = {
        "install_offered": dock().install_button.isVisible(),
        "model": dock().model_label.text(),
        "fix_button": dock().models_button.text(),
        "provider": QgsApplication.processingRegistry().providerById("geoclip") is not None,
    }
    later(1000, open_models)


def installer_shown():
    dialog = modal()
    dialog.wheels.setFilePath(os.environ["GEOCLIP_E2E_WHEELS"])  # what choosing the folder with "…" does
    report["installer"] = {"title": dialog.windowTitle()}
    stage("stock-installer", lambda: press_install(dialog))


def press_install(dialog):
    dialog.start.click()
    outcome = []
    dialog.task.taskCompleted.connect(lambda: outcome.append("completed"))
    dialog.task.taskTerminated.connect(lambda: outcome.append("failed"))
    report["install_started"] = time.time()
    poll(lambda: outcome, lambda: later(1000, lambda: installed(dialog, outcome[0])), every=500)


def installed(dialog, outcome):
    report["installer"].update(
        outcome=outcome,
        seconds=round(time.time() - report["install_started"]),
        log_tail=dialog.log.toPlainText()[-2000:],
        failure=dialog.failure.text() if dialog.failure.isVisible() else "",
    )
    dialog.log.verticalScrollBar().setValue(dialog.log.verticalScrollBar().maximum())
    stage("stock-installed", dialog.accept)


def open_models():
    poll(lambda: modal() is not None, models_shown)
    dock().models_button.click()  # Fix…
    report["after_models"] = {"run_enabled": dock().run_button.isEnabled(), "model": dock().model_label.text()}
    later(1000, run_photos)


def models_shown():
    dialog = modal()
    later(1500, lambda: models_ready(dialog))


def models_ready(dialog):
    report["models"] = {
        "fix": dialog.fix_text.text(),
        "install_heads_visible": dialog.fix_heads.isVisible(),
        "report": dialog.report.toPlainText(),
    }
    stage("stock-models", lambda: import_clip(dialog))


def import_clip(dialog):
    # Import folder… with the CLIP folder chosen: then the notice that says what was imported.
    poll(lambda: isinstance(modal(), QMessageBox), lambda: close_notice(dialog))
    dialog._import(os.environ["GEOCLIP_E2E_CLIP"])


def close_notice(dialog):
    box = modal()
    report["models"]["imported"] = box.text()
    box.accept()
    later(500, dialog.save)


def run_photos():
    d = dock()
    d.add_paths([os.environ["GEOCLIP_E2E_PHOTOS"]])
    d.output.setFilePath(str(E2E / "first.gpkg"))
    d.runFinished.connect(run_finished)
    poll(lambda: d.photo_list.total() is not None, d.run_button.click)


def run_finished(result):
    d = dock()
    outcome = result.outcome
    report["answered"] = {
        "error": result.error,
        "answered": outcome.summary.answered if outcome else 0,
        "failures": outcome.failures if outcome else [],
        "layers": sorted(layer.name() for layer in QgsProject.instance().mapLayers().values()),
        "status": d.status.text(),
        "pillow_heif_loaded": "pillow_heif" in sys.modules,
        "torch": sys.modules["torch"].__file__ if "torch" in sys.modules else "",
    }
    later(3000, lambda: stage("stock-answers", quit_qgis))


def quit_qgis():
    save()
    watcher = QTimer()  # a question about the unsaved project: discard it
    watcher.timeout.connect(answer_boxes)
    watcher.start(250)
    kept.append(watcher)
    iface.actionExit().trigger()


def answer_boxes():
    box = modal()
    if isinstance(box, QMessageBox) and not getattr(box, "_answered", False):
        box._answered = True
        button = box.button(QMessageBox.StandardButton.Discard) or box.button(QMessageBox.StandardButton.No)
        (button or box.buttons()[-1]).click()


iface.initializationCompleted.connect(lambda: QTimer.singleShot(1000, start))
