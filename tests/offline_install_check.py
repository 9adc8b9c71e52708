"""Run by test_offline_install with QGIS's own Python (no venv), offline: install the engine's packages
from a folder of wheels into the plugin's own folder, then use the plugin. Prints a JSON report."""

import json
import os
import sys

os.environ["QT_QPA_PLATFORM"] = "offscreen"
plugins, wheels, torch_spec, photo = sys.argv[1:5]
sys.path.insert(0, plugins)  # the deployed plugin, as QGIS puts it on the path

from qgis.testing import start_app  # noqa: E402

app = start_app(cleanup=False)
from geoclip_qgis import deps, installer  # noqa: E402

report = {"missing_before": deps.missing()}
installer.install(deps.plugin_python_dir(), "cpu", wheels, log=lambda line: None, torch=torch_spec)
deps.add_plugin_python_dir()
report["missing_after"] = deps.missing()
import numpy  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from osgeo import gdal_array  # noqa: E402,F401 - GDAL's bindings still load with the installed NumPy

report["torch"] = torch.__file__
report["transformers"] = transformers.__version__
report["numpy"] = numpy.__version__
sys.path.insert(0, os.path.join(os.path.dirname(__file__)))
from qgis_support import StandInInterface, wait_for  # noqa: E402

from geoclip_qgis.plugin import GeoCLIPPlugin  # noqa: E402

iface = StandInInterface()
plugin = GeoCLIPPlugin(iface)
plugin.initGui()
plugin.action.setChecked(True)
dock = plugin.dock
report["run_enabled"] = dock.run_button.isEnabled()
dock.add_paths([photo])
dock.output.setFilePath(os.path.join(os.environ["GEOCLIP_CACHE_DIR"], "..", "offline.gpkg"))
outcomes = []
dock.runFinished.connect(outcomes.append)
dock.run()
wait_for(lambda: outcomes, 600)
report["answered"] = outcomes[0].outcome.summary.answered if outcomes[0].outcome else 0
report["error"] = outcomes[0].error
print("REPORT " + json.dumps(report))
