"""The plugin has none of the Qt5-only usages that QGIS's pyqt5_to_pyqt6 migration flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCAN = [sys.executable, str(ROOT / "tools" / "check_qt6.py")]


def test_plugin_is_qt6_ready():
    out = subprocess.run([*SCAN, str(ROOT / "geoclip_qgis")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout


def test_the_scan_finds_qt5_only_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from PyQt5.QtCore import QRegExp\n"
        "from qgis.PyQt.QtCore import Qt\n"
        "from qgis.PyQt.QtWidgets import QMessageBox\n"
        "from qgis.core import Qgis\n"
        "a = Qt.AlignLeft\n"
        "b = Qt.AlignmentFlag.AlignLeft\n"
        "c = QMessageBox.Yes\n"
        "d = Qgis.Info\n"
        "e = Qgis.MessageLevel.Info\n"
        "dialog.exec_()\n"
    )
    out = subprocess.run([*SCAN, str(bad)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    found = out.stdout
    for expected in (
        "bad.py:1: QRegExp",
        "bad.py:1: import from qgis.PyQt",
        "bad.py:10: exec_()",
        "bad.py:5: unscoped enum Qt.AlignLeft",
        "bad.py:7: unscoped enum QMessageBox.Yes",
        "bad.py:8: unscoped enum Qgis.Info",
    ):
        assert expected in found, expected
    assert ":6:" not in found and ":9:" not in found  # scoped forms pass
