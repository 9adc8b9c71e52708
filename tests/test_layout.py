"""The code's layout keeps its shape: small modules, the engine in subpackages by role, no import circle,
and the engine never reaching the plugin, Qt or QGIS.

Imports are read from the source with ``ast`` (those inside functions too: a lazy import is still a
dependency), so the rules hold for code no test happens to run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 600  # lines a module may have


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for the engine (imported as geoclip_qgis.backend) and the plugin."""
    found = {}
    for base, prefix in ((ROOT / "backend", "geoclip_qgis.backend"), (ROOT / "geoclip_qgis", "geoclip_qgis")):
        for path in base.rglob("*.py"):
            if "backend" in path.relative_to(base).parts[:1] and base.name == "geoclip_qgis":
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], annotations: bool = True) -> set[str]:
    """Modules of ours that ``name`` imports, anywhere in its file; without those imported for
    annotations only (under ``if TYPE_CHECKING:``) when ``annotations`` is false."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    if not annotations:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skipped |= {id(inner) for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not _is_parent(target, name):
                found.add(target)
    return found


def _is_parent(package: str, name: str) -> bool:
    """Importing from one's own package's __init__ (``from . import x``) names the package, not a cycle."""
    return name.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_module_is_longer_than_the_limit():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > LIMIT}
    assert not long, f"modules over {LIMIT} lines: {long}"


def test_the_engine_is_laid_out_in_subpackages_by_role():
    roles = {p.name for p in (ROOT / "backend").iterdir() if (p / "__init__.py").is_file()}
    assert {"store", "photos", "model", "earth", "output", "pipeline", "workbench", "location", "cli"} <= roles
    flat = sorted(p.stem for p in (ROOT / "backend").glob("*.py") if not p.stem.startswith("__"))
    # only what every part shares stays at the top
    assert len(flat) <= 10, flat
    plugin = {p.name for p in (ROOT / "geoclip_qgis").iterdir() if (p / "__init__.py").is_file()}
    assert {"core", "map", "ui", "processing", "install"} <= plugin


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


# The layers, lowest first: a module imports only from its own layer or lower ones. The packages'
# entry points (backend/__init__, backend/__main__, the plugin's __init__ and plugin.py) sit above all.
LAYERS = [
    ["backend"],  # what every part shares: errors, progress, results, geo, filelock, ...
    ["backend.store"],
    ["backend.photos"],
    ["backend.model"],
    ["backend.earth"],
    ["backend.output"],
    ["backend.pipeline"],
    ["backend.workbench", "backend.location"],
    ["backend.cli"],
    ["plugin"],  # what the plugin's parts share: compat, icon
    ["core"],
    ["install"],
    ["map"],
    ["ui", "processing"],
]
ENTRY_POINTS = {"geoclip_qgis.backend", "geoclip_qgis.backend.__main__", "geoclip_qgis", "geoclip_qgis.plugin"}


def _layer(name: str) -> int:
    parts = name.split(".")
    if parts[1:2] == ["backend"]:
        role = f"backend.{parts[2]}" if len(parts) > 3 or (ROOT / "backend" / parts[2]).is_dir() else "backend"
    else:
        role = parts[1] if len(parts) > 2 or (ROOT / "geoclip_qgis" / parts[1]).is_dir() else "plugin"
    return next(rank for rank, roles in enumerate(LAYERS) if role in roles)


def test_imports_go_down_the_layers():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if name in ENTRY_POINTS or name.endswith(".__main__"):
            continue
        for imported in _imports(name, path, modules, annotations=False):
            if imported not in ENTRY_POINTS and _layer(imported) > _layer(name):
                upward.append(f"{name} -> {imported}")
    assert upward == []


def test_the_engine_never_imports_the_plugin_qt_or_qgis():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("geoclip_qgis.backend"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for imported in names:
                assert not imported.startswith(("qgis", "PyQt", "PySide")), (name, imported)
                assert not imported.startswith("geoclip_qgis.") or imported.startswith("geoclip_qgis.backend"), (
                    name,
                    imported,
                )
        for node in ast.walk(tree):  # relative imports climbing out of the engine
            if isinstance(node, ast.ImportFrom) and node.level:
                depth = name.count(".") - (0 if path.name == "__init__.py" else 1)
                assert node.level <= depth, (name, node.module, node.level)
