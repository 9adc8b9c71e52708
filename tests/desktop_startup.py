"""Runs inside the real QGIS desktop (as the profile's python/startup.py) for the end-to-end test.

Once QGIS has started: checks the plugin loaded, opens its dock, runs real photos through it, then
walks through the stages the test photographs, talking to the test through files in $GEOCLIP_E2E_DIR.
"""

import json
import os
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface

E2E = Path(os.environ["GEOCLIP_E2E_DIR"])
report = {"messages": [], "stages": []}
_keep = []


def log_message(message, tag, level):
    if level >= Qgis.MessageLevel.Warning or "error" in tag.lower():
        report["messages"].append(f"{tag}: {message}")


def save():
    (E2E / "report.json").write_text(json.dumps(report, indent=2, default=str))


def wait_for_file(name, then):
    def poll():
        if (E2E / name).exists():
            timer.stop()
            then()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(200)
    _keep.append(timer)


def start():
    import qgis.utils

    iface.mainWindow().setGeometry(0, 0, 1600, 1000)  # Xvfb has no window manager to maximise it
    world = QgsVectorLayer(
        os.path.join(QgsApplication.pkgDataPath(), "resources", "data", "world_map.gpkg") + "|layername=countries",
        "Countries",
        "ogr",
    )
    if world.isValid():
        QgsProject.instance().addMapLayer(world)
    plugin = qgis.utils.plugins.get("geoclip_qgis")
    report["plugin_loaded"] = plugin is not None
    if plugin is None:
        save()
        return
    plugin.action.trigger()  # the toolbar button
    dock = plugin.dock
    report["dock_visible"] = dock.isVisible()
    report["run_enabled"] = dock.run_button.isEnabled()
    dock.add_paths(json.loads(os.environ["GEOCLIP_E2E_PHOTOS"]))
    dock.output.setFilePath(str(E2E / "desktop_run.gpkg"))
    dock.rasters_check.setChecked(True)
    dock.runFinished.connect(finished)
    dock.run()


def finished(result):
    report["error"] = result.error
    report["answered"] = result.outcome.summary.answered if result.outcome else 0
    report["failures"] = result.outcome.failures if result.outcome else []
    report["layers"] = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
    report["stages"].append("run finished")
    save()
    QTimer.singleShot(3000, stage_one)  # let the canvas render


def stage_one():
    (E2E / "stage1.ready").write_text("dock and answers on the map")
    wait_for_file("stage1.done", stage_two)


def stage_two():
    import qgis.utils

    layers = qgis.utils.plugins["geoclip_qgis"].dock.last_layers
    top = [f.geometry().asPoint() for f in layers["points"].getFeatures() if f["rank"] == 1]
    locals_ = [r for r in layers["rasters"] if "_local" in r.name()]  # <photo>_local1, <photo>_local2...
    # a photo whose top-1 answer lies inside its local raster, so both show together
    local = next((r for r in locals_ if any(r.extent().contains(p) for p in top)), locals_[0] if locals_ else None)
    if local is not None:
        for raster in layers["rasters"]:  # show one photo's local raster with its points
            node = QgsProject.instance().layerTreeRoot().findLayer(raster.id())
            node.setItemVisibilityChecked(raster is local)
        node = QgsProject.instance().layerTreeRoot().findLayer(local.id())
        node.parent().setItemVisibilityChecked(True)
        box = QgsRectangle(local.extent())
        box.grow(0.3)
        iface.mapCanvas().setExtent(box)
        iface.mapCanvas().refresh()
        report["stage_two_raster"] = local.name()
    report["stages"].append("zoomed to a local raster")
    save()
    QTimer.singleShot(3000, lambda: (E2E / "stage2.ready").write_text("a photo's raster and points"))


QgsApplication.messageLog().messageReceived.connect(log_message)
iface.initializationCompleted.connect(lambda: QTimer.singleShot(1000, start))
