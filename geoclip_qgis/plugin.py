"""Plugin entry: a toolbar button and a Plugins-menu entry for the dock, and the Processing provider."""

from __future__ import annotations

import logging

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from .compat import QAction
from .core import deps
from .core.session import load_dock_settings, save_dock_settings
from .icon import icon_path
from .ui import diagnostics

MENU = "&GeoCLIP"


class _MessageLogHandler(logging.Handler):
    """The engine's warnings (a cache it cannot use, say) in the GeoCLIP tab of QGIS's message log."""

    def emit(self, record: logging.LogRecord) -> None:
        from qgis.core import Qgis, QgsMessageLog

        level = Qgis.MessageLevel.Warning if record.levelno >= logging.WARNING else Qgis.MessageLevel.Info
        QgsMessageLog.logMessage(record.getMessage(), "GeoCLIP", level)


class GeoCLIPPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.action = None
        self.results_action = None
        self.dock = None
        self.results = None
        self.provider = None
        deps.add_plugin_python_dir()  # packages installed for this QGIS by the plugin
        self.log_handler = _MessageLogHandler()
        logging.getLogger("geoclip_qgis").addHandler(self.log_handler)
        diagnostics.watch()  # the last errors, for Models… → Diagnostics…

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        self.action = QAction(QIcon(icon_path()), "GeoCLIP photo geolocation", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.toggle_dock)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)
        self.results_action = QAction("GeoCLIP results panel", self.iface.mainWindow())
        self.results_action.triggered.connect(lambda: self.show_results(""))
        self.iface.addPluginToMenu(MENU, self.results_action)
        self.initProcessing()
        if load_dock_settings().dock_open:  # it was open when QGIS last closed
            self.action.setChecked(True)
        self.action.toggled.connect(self._remember_open)
        QgsProject.instance().readProject.connect(self._project_opened)
        QgsProject.instance().cleared.connect(self._project_opened)

    def _project_opened(self, *_args) -> None:
        """A project opened (or a new one): its runs come back with its layers, in the dock and the panel."""
        from .map.layers import project_runs

        runs = project_runs(QgsProject.instance())
        if self.dock is not None:
            self.dock.show_project_runs(runs)
        if self.results is not None and runs:
            self.results.show_run(runs[0])
        elif self.results is not None:
            self.results.clear_run()

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API: also called by qgis_process, without a GUI
        if self.provider is not None or deps.missing():
            return  # the algorithms need the engine; the dock explains what to install
        from .processing.provider import GeoCLIPProvider

        provider = GeoCLIPProvider()
        # A registry that already has a "geoclip" provider deletes this one and says False: keep no
        # reference to a deleted object (unload would remove it).
        if QgsApplication.processingRegistry().addProvider(provider):
            self.provider = provider

    def toggle_dock(self, checked: bool) -> None:
        if self.dock is None:
            from .ui.dock import GeoCLIPDock

            self.dock = GeoCLIPDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
            # closed or opened by the user; a dock that is merely tabbed away (behind the results panel) stays on
            self.dock.closedStateChanged.connect(lambda closed: self.action.setChecked(not closed))
            self.dock.resultsWanted.connect(self.show_results)
            self.dock.resultsUpdated.connect(self._follow_run)
            self.dock.dependenciesInstalled.connect(self.initProcessing)  # no restart needed
            from .map.layers import project_runs

            self.dock.show_project_runs(project_runs(QgsProject.instance()))
        self.dock.setUserVisible(checked)

    def show_results(self, gpkg: str) -> None:
        """The results panel, on a run's GeoPackage (or as it was, for an empty path)."""
        if self.results is None:
            from .ui.results_panel import ResultsPanel

            self.results = ResultsPanel(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.results)
            if self.dock is not None and self.iface.mainWindow() is not None:  # tabs beside the dock: full height
                self.iface.mainWindow().tabifyDockWidget(self.dock, self.results)
        if not gpkg and not self.results.gpkg:  # opened from the menu: the project's latest run, if any
            from .map.layers import project_runs

            gpkg = next(iter(project_runs(QgsProject.instance())), "")
        if gpkg:
            self.results.show_run(gpkg)
        self.results.setUserVisible(True)

    def _follow_run(self, gpkg: str) -> None:
        if self.results is not None and self.results.isUserVisible():
            self.results.show_run(gpkg)

    def _remember_open(self, checked: bool) -> None:
        from dataclasses import replace

        save_dock_settings(replace(load_dock_settings(), dock_open=checked))

    def unload(self) -> None:
        for signal in (QgsProject.instance().readProject, QgsProject.instance().cleared):
            try:
                signal.disconnect(self._project_opened)
            except (TypeError, RuntimeError):  # initGui never ran
                pass
        if self.action is not None:
            self.action.toggled.disconnect(self._remember_open)  # closing QGIS hides the dock: not the user's choice
        logging.getLogger("geoclip_qgis").removeHandler(self.log_handler)
        diagnostics.unwatch()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
        if self.dock is not None:
            if self.dock.task is not None:
                self.dock.task.cancel()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
        if self.results is not None:
            self.results.likely_button.setChecked(False)  # gives the map its tool back
            self.iface.removeDockWidget(self.results)
            self.results.deleteLater()
        if self.results_action is not None:
            self.iface.removePluginMenu(MENU, self.results_action)
        self.iface.removePluginMenu(MENU, self.action)
        self.iface.removeToolBarIcon(self.action)
