"""Run by test_stock_qgis with QGIS's own Python (no venv, nothing added to it), offline: the plugin from
its ZIP, then only what it offers, in the order a new user meets it — the dock opens and offers Install
dependencies…; the installer brings the packages and GeoCLIP's heads from a folder of wheels; Processing
appears without a restart; Models… › Import folder… takes a CLIP folder; Run answers a folder of JPEG,
PNG and HEIC photos. Prints a JSON report (``REPORT {...}``)."""

import json
import os
import sys
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"
plugins, wheels, clip, photos, output = sys.argv[1:6]
sys.path.insert(0, plugins)  # the installed plugin, as QGIS puts it on the path
sys.path.insert(0, os.path.dirname(__file__))  # qgis_support (QGIS only)

from qgis.core import QgsApplication, QgsProject  # noqa: E402
from qgis.PyQt.QtCore import QTimer  # noqa: E402
from qgis.PyQt.QtWidgets import QApplication  # noqa: E402
from qgis_support import StandInInterface, qgis_app, wait_for  # noqa: E402

qgis_app()
import geoclip_qgis  # noqa: E402
from geoclip_qgis.core import deps  # noqa: E402

report = {"steps": []}
said = []


def step(name, **facts):
    report["steps"].append(name)
    report[name] = facts


def in_modal(action):
    """Do ``action(dialog)`` once the modal dialog a button opens is showing (its exec() is running)."""

    def check():
        dialog = QApplication.activeModalWidget()
        if dialog is None:
            QTimer.singleShot(100, check)
        else:
            action(dialog)

    QTimer.singleShot(100, check)


iface = StandInInterface()
plugin = geoclip_qgis.classFactory(iface)
plugin.initGui()
plugin.action.setChecked(True)  # the toolbar button
dock = plugin.dock
registry = QgsApplication.processingRegistry()
step(
    "opened",
    install_offered=not dock.install_button.isHidden(),
    run_enabled=dock.run_button.isEnabled(),
    provider=registry.providerById("geoclip") is not None,
)


def install(dialog):
    dialog.wheels.setFilePath(wheels)
    dialog.start.click()

    def finished(outcome):
        # after the dialog's own handlers (they run first: connected first) have said what happened
        QTimer.singleShot(
            300, lambda: (step("installed", outcome=outcome, log=dialog.log.toPlainText()[-3000:]), dialog.accept())
        )

    dialog.task.taskCompleted.connect(lambda: finished("completed"))
    dialog.task.taskTerminated.connect(lambda: finished("failed"))


in_modal(install)
started = time.monotonic()
dock.install_button.click()  # returns when the dialog is closed
state = dock.state
step(
    "after_install",
    seconds=round(time.monotonic() - started, 1),
    missing=deps.missing(),
    provider=registry.providerById("geoclip") is not None,
    algorithms=sorted(a.id() for a in registry.providerById("geoclip").algorithms())
    if registry.providerById("geoclip")
    else [],
    heads_source=state.heads.source if state else None,
    problems=[p.code.value for p in state.problems] if state else [],
    model_label=dock.model_label.text(),
    fix_button=dock.models_button.text(),
)


def import_clip(dialog):
    from geoclip_qgis.ui import models_dialog

    models_dialog.show_message = lambda parent, title, text, warning=False: said.append(text)  # "Imported …"
    dialog._import(clip)  # what Import folder… does with the folder chosen
    dialog.save()


in_modal(import_clip)
dock.models_button.click()
step(
    "after_import",
    said=said,
    problems=[p.code.value for p in dock.state.problems] if dock.state else [],
    run_enabled=dock.run_button.isEnabled(),
)

dock.add_paths([photos])
wait_for(lambda: dock.photo_list.total() is not None, 60)
dock.output.setFilePath(output)
outcomes = []
dock.runFinished.connect(outcomes.append)
dock.run()
wait_for(lambda: outcomes, 900)
result = outcomes[0]
outcome = result.outcome
step(
    "answered",
    error=result.error,
    answered=outcome.summary.answered if outcome else 0,
    failures=[list(f) for f in outcome.failures] if outcome else [],
    layers=sorted(layer.name() for layer in QgsProject.instance().mapLayers().values()),
    pillow_heif_loaded="pillow_heif" in sys.modules,
)
import numpy  # noqa: E402
import torch  # noqa: E402

report["torch"] = torch.__file__
report["numpy"] = numpy.__version__
print("REPORT " + json.dumps(report, default=str))
