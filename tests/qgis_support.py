"""QGIS for headless tests: one QgsApplication per test process (offscreen), and a small stand-in for
the QGIS interface holding a real map canvas and message bar."""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_app = None


def qgis_app():
    """QGIS for this process: a throw-away profile, or the profile folder $GEOCLIP_QGIS_PROFILE names
    (where the stock-QGIS tests install, so qgis_process finds the same profile afterwards)."""
    global _app
    if _app is None:
        import sys

        from qgis.core import QgsApplication

        profile = os.environ.get("GEOCLIP_QGIS_PROFILE")
        if profile:
            _app = QgsApplication([b"qgis"], True, profile)
            QgsApplication.setPrefixPath("/usr", True)
            QgsApplication.initQgis()
        else:
            from qgis.testing import start_app

            _app = start_app(cleanup=False)

        sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))  # QGIS's Processing
        from processing.core.Processing import Processing

        Processing.initialize()
    return _app


_provider = None


def geoclip_provider():
    """The plugin's Processing provider registered as QGIS loads it, once per test process. Kept here:
    a provider whose Python object is collected leaves algorithms with empty ids behind."""
    global _provider
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    if registry.providerById("geoclip") is None:
        from geoclip_qgis.processing.provider import GeoCLIPProvider

        _provider = GeoCLIPProvider()
        assert registry.addProvider(_provider)
    return registry.providerById("geoclip")


class StandInInterface:
    """What the plugin uses of QgisInterface, backed by real widgets."""

    def __init__(self):
        from qgis.gui import QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.canvas = QgsMapCanvas(self.window)
        self.canvas.resize(800, 600)
        self.bar = QgsMessageBar(self.window)
        self.docks = []
        self.toolbar_actions = []
        self.menus = []
        from geoclip_qgis.compat import QAction

        self.exit_action = QAction("Exit", self.window)  # triggered: counted, QGIS's would quit
        self.exits = []
        self.exit_action.triggered.connect(lambda: self.exits.append(True))
        self.map_tips_action = QAction("Show Map Tips", self.window)
        self.map_tips_action.setCheckable(True)

    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar

    def actionExit(self):  # noqa: N802
        return self.exit_action

    def actionMapTips(self):  # noqa: N802
        return self.map_tips_action

    def addDockWidget(self, area, dock):  # noqa: N802
        self.docks.append(dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.docks.remove(dock)

    def addToolBarIcon(self, action):  # noqa: N802
        self.toolbar_actions.append(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self.toolbar_actions.remove(action)

    def addPluginToMenu(self, menu, action):  # noqa: N802
        self.menus.append((menu, action))

    def removePluginMenu(self, menu, action):  # noqa: N802
        self.menus.remove((menu, action))


def wait_for(condition, timeout: float = 300.0, tick=None) -> None:
    """Turn the Qt event loop until ``condition()`` holds."""
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for QGIS")
        QgsApplication.processEvents()
        time.sleep(0.01)
