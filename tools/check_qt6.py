"""Find Qt5-only usages in the plugin: what QGIS's pyqt5_to_pyqt6 migration flags.

    .venv/bin/python tools/check_qt6.py [PATH ...]     (default: geoclip_qgis/)

Checks, file by file:
  - imports of PyQt5 (or PyQt6) instead of qgis.PyQt, and compiled resources (resources_rc);
  - APIs removed in Qt6: QRegExp, QDesktopWidget, QtWebKit, exec_(), QAction from QtWidgets without a
    QtGui fallback;
  - unscoped enum values (``Qt.AlignLeft`` instead of ``Qt.AlignmentFlag.AlignLeft``), found by asking
    the installed PyQt5/QGIS whether ``Class.Name`` is an enum member rather than an enum type.
Exit status 1 when anything is found.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOVED = {
    r"\bQRegExp\b": "QRegExp is gone in Qt6: use QRegularExpression",
    r"\bQDesktopWidget\b": "QDesktopWidget is gone in Qt6: use QScreen",
    r"\bQtWebKit\w*\b": "QtWebKit is gone in Qt6",
    r"\.exec_\(": "exec_() is gone in Qt6: use exec()",
    r"\bresources_rc\b": "compiled resources are not available in Qt6 builds: load files by path",
    r"^\s*(from|import)\s+PyQt[56]\b": "import from qgis.PyQt, never PyQt5/PyQt6 directly",
}
ENUM_MODULES = ("qgis.PyQt.QtCore", "qgis.PyQt.QtGui", "qgis.PyQt.QtWidgets", "qgis.core", "qgis.gui")


def _imported_classes(tree: ast.AST) -> dict[str, object]:
    """Names imported from Qt/QGIS modules in this file, resolved to the installed classes."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ENUM_MODULES:
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                continue
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if isinstance(value, type):
                    found[alias.asname or alias.name] = value
    return found


def _is_enum_member(owner: type, name: str) -> bool:
    value = getattr(owner, name, None)
    if value is None or isinstance(value, type):
        return False  # an enum type (scoped access goes through it), a class, or nothing
    enum_type = type(value)
    nested = getattr(owner, enum_type.__name__, None) is enum_type
    return nested and enum_type.__name__ != name


def check_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, message in REMOVED.items():
            if re.search(pattern, line):
                problems.append(f"{path}:{number}: {message}")
    tree = ast.parse(text, filename=str(path))
    classes = _imported_classes(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in classes
            and _is_enum_member(classes[node.value.id], node.attr)
        ):
            enum_name = type(getattr(classes[node.value.id], node.attr)).__name__
            problems.append(
                f"{path}:{node.lineno}: unscoped enum {node.value.id}.{node.attr}: "
                f"write {node.value.id}.{enum_name}.{node.attr}"
            )
    if re.search(r"from\s+qgis\.PyQt\.QtWidgets\s+import[^\n]*\bQAction\b", text) and "QtGui" not in text:
        problems.append(f"{path}: QAction moved to QtGui in Qt6: import it with a QtGui fallback")
    return problems


def main(paths: list[str]) -> int:
    targets = [Path(p) for p in paths] or [ROOT / "geoclip_qgis"]
    files = [f for t in targets for f in ([t] if t.is_file() else sorted(t.rglob("*.py")))]
    problems = [p for f in files for p in check_file(f)]
    for problem in problems:
        print(problem)
    print(f"{len(files)} files checked, {len(problems)} Qt5-only usages", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
