"""The few names that moved between Qt5 (QGIS 3) and Qt6 (QGIS 4) builds."""

try:  # Qt6: QAction lives in QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:  # Qt5 / QGIS 3.x: in QtWidgets
    from qgis.PyQt.QtWidgets import QAction

__all__ = ["QAction"]
