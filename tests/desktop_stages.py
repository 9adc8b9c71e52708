"""What both desktop startup scripts share (imported inside the real QGIS desktop, from the tests folder the
test names in $GEOCLIP_E2E_TESTS): the report written for the test, timers that wait for a condition, and
stages the test photographs (``<stage>.ready`` when the screen shows it, ``<stage>.done`` once taken)."""

import faulthandler
import json
import os
from pathlib import Path

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QTimer

E2E = Path(os.environ["GEOCLIP_E2E_DIR"])
WIDTH, HEIGHT = (int(v) for v in os.environ.get("GEOCLIP_E2E_SCREEN", "1366x768").split("x"))
report = {"messages": [], "stages": []}
_faults = open(E2E / "faults.log", "w")
faulthandler.enable(_faults)
kept = []


def log_message(message, tag, level):
    if level >= Qgis.MessageLevel.Warning or "error" in tag.lower():
        report["messages"].append(f"{tag}: {message}")


QgsApplication.messageLog().messageReceived.connect(log_message)


def save():
    (E2E / "report.json").write_text(json.dumps(report, indent=2, default=str))


def later(ms, then):
    QTimer.singleShot(ms, then)


def poll(condition, then, every=200):
    def check():
        if condition():
            timer.stop()
            then()

    timer = QTimer()
    timer.timeout.connect(check)
    timer.start(every)
    kept.append(timer)


def stage(name, then):
    """The screen shows this stage: let the test photograph it, then go on."""
    report["stages"].append(name)
    save()
    (E2E / f"{name}.ready").write_text(name)
    poll(lambda: (E2E / f"{name}.done").exists(), then)


def plugin():
    import qgis.utils

    return qgis.utils.plugins.get("geoclip_qgis")


def dock():
    return plugin().dock
