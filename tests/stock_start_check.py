"""Run by the stock-QGIS tests with QGIS's own Python (no venv, nothing added): the plugin as a user's
QGIS loads it, before anything is installed. Prints a JSON report."""

import json
import os
import sys

os.environ["QT_QPA_PLATFORM"] = "offscreen"
plugins = sys.argv[1]
sys.path.insert(0, plugins)  # the installed plugin, as QGIS puts it on the path
sys.path.insert(0, os.path.dirname(__file__))  # qgis_support (QGIS only)

from qgis.core import QgsApplication  # noqa: E402
from qgis_support import StandInInterface, qgis_app  # noqa: E402

qgis_app()
before = set(sys.modules)  # what QGIS itself has loaded (its Processing plugin brings NumPy)
import geoclip_qgis  # noqa: E402

iface = StandInInterface()
plugin = geoclip_qgis.classFactory(iface)
plugin.initGui()
report = {"error": ""}
# An exception in a Qt slot goes to sys.excepthook (QGIS shows it as a Python error dialog).
sys.excepthook = lambda kind, value, trace: report.update(error=f"{kind.__name__}: {value}")
plugin.action.setChecked(True)  # the toolbar button
dock = plugin.dock
report.update(
    dock=dock is not None,
    run_enabled=bool(dock and dock.run_button.isEnabled()),
    install_offered=bool(dock and not dock.install_button.isHidden()),
    says=dock.status.text() if dock else "",
    model_label=dock.model_label.text() if dock else "",
    output_hint=dock.output_hint.text() if dock else "",
    provider=QgsApplication.processingRegistry().providerById("geoclip") is not None,
    imported=sorted(
        name
        for name in set(sys.modules) - before
        if name.split(".")[0] in ("torch", "transformers", "PIL", "platformdirs", "numpy", "safetensors", "tqdm")
        and "." not in name
    ),
)
print("REPORT " + json.dumps(report))
