"""Result layers on the map: the run's GeoPackage and rasters made into layers, grouped, zoomed to.

Layers are made from a run's outputs by their kind (:class:`..backend.results.OutputKind`), never from
file names, and drawn as :mod:`.styles` says. Each run gets one group named after what was run (a folder,
a photo, a query); the time and the output file go in its layers' descriptions (their tooltips in the
layer tree). Running again into the same GeoPackage refreshes that group; earlier runs are folded and
hidden. Main thread only.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsMapLayerLegendUtils,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from ..backend.results import AnswerKind, OutputFile, OutputKind
from ..core.inputs import WGS84
from .names import short_name
from .styles import (
    CLASSES_PROPERTY,
    MASS_SHARES,
    RASTER_LEGEND_TITLE,
    add_time_and_direction,
    style_basemap,
    style_confidence_areas,
    style_place_radii,
    style_points,
    style_raster,
    style_truth_lines,
)

LAYER_NAMES = {
    OutputKind.POINTS: "GeoCLIP answers",
    OutputKind.TRUTH_LINES: "EXIF truth → top-1",
    OutputKind.ERRORS: "Photos not answered",
    OutputKind.CONFIDENCE_AREAS: "Confidence areas (50 %, 90 %)",
    OutputKind.PLACE_RADII: "Places and their radius",
}
VECTOR_KINDS = (
    OutputKind.POINTS,
    OutputKind.PLACE_RADII,
    OutputKind.TRUTH_LINES,
    OutputKind.ERRORS,
    OutputKind.CONFIDENCE_AREAS,
)
RASTER_KINDS = (OutputKind.COMBINED_RASTER, OutputKind.WORLD_RASTER, OutputKind.LOCAL_RASTER)
ORDER = {  # top to bottom in a run's group
    OutputKind.POINTS: 0,
    OutputKind.PLACE_RADII: 1,  # just under the answers they belong to
    OutputKind.TRUTH_LINES: 2,
    OutputKind.CONFIDENCE_AREAS: 3,
    OutputKind.ERRORS: 4,
    OutputKind.COMBINED_RASTER: 5,
    OutputKind.WORLD_RASTER: 6,
    OutputKind.LOCAL_RASTER: 7,
}
PER_PHOTO_GROUP = "Rasters per photo"


def layer_name(file: OutputFile) -> str:
    if file.kind in LAYER_NAMES:
        return LAYER_NAMES[file.kind]
    return Path(file.path).stem


def style_layer(layer, file: OutputFile) -> None:
    """The same look wherever a run's layer is loaded (the dock, Processing), from what the run says of it."""
    kind = file.kind
    if kind == OutputKind.POINTS:
        style_points(layer)
        add_time_and_direction(layer)
    elif kind == OutputKind.PLACE_RADII:
        style_place_radii(layer)
    elif kind == OutputKind.CONFIDENCE_AREAS:
        style_confidence_areas(layer)
    elif kind == OutputKind.TRUTH_LINES:
        style_truth_lines(layer)
    elif kind in RASTER_KINDS:
        style_raster(layer, file.raster)


def make_layer(file: OutputFile, styled: bool = True):
    """A QGIS layer for one output of a run (styled unless Processing styles it later on the main thread),
    or None for outputs that are not layers (or cannot be read)."""
    if file.kind in VECTOR_KINDS:
        uri = f"{file.path}|layername={file.layer}" if file.layer else file.path
        layer = QgsVectorLayer(uri, layer_name(file), "ogr")
    elif file.kind in RASTER_KINDS:
        layer = QgsRasterLayer(file.path, layer_name(file))
    else:
        return None
    if not layer.isValid():
        return None
    if styled:
        style_layer(layer, file)
    return layer


# -- the layer tree ----------------------------------------------------------------------------------

RUN_PROPERTY, OUTPUT_PROPERTY, ORDER_PROPERTY = "geoclip/run", "geoclip/output", "geoclip/order"
ANSWER_PROPERTY = "geoclip/answer"  # a raster's answer (photo, query or joint answer), for the results panel


def _output_of(group) -> str:
    return group.customProperty(OUTPUT_PROPERTY) or ""


BASEMAP_PROPERTY = "geoclip/basemap"


def _runs(root) -> list:
    return [node for node in root.children() if node.customProperty(RUN_PROPERTY)]


def project_runs(project: QgsProject) -> list[str]:
    """The GeoPackages of the runs whose groups this project holds, the latest first (each run's group
    goes on top), those still on disk; what a reopened project brings back besides its layers."""
    found = []
    for group in _runs(project.layerTreeRoot()):
        path = _output_of(group)
        if path and path not in found and os.path.isfile(path):
            found.append(path)
    return found


APART_PROPERTY = "geoclip/apart"  # a group of layers that belong to no run (the location tools')


def place_apart(project: QgsProject, layer, title: str, order: int = 0):
    """Put a layer that belongs to no run (the location tools' outputs) in a group of its own, ``title``,
    at the top level of the layer tree: never inside a run's group, where Processing's insertion point
    may have put it. Layers of one group sort by ``order``, lowest on top. Returns the group, or None
    when the layer is not in the project."""
    if project.mapLayer(layer.id()) is None:
        return None
    root = project.layerTreeRoot()
    group = next(
        (
            node
            for node in root.children()
            if isinstance(node, QgsLayerTreeGroup) and node.customProperty(APART_PROPERTY) == title
        ),
        None,
    )
    if group is None:
        group = root.insertGroup(0, title)
        group.setCustomProperty(APART_PROPERTY, title)
    old = root.findLayer(layer.id())
    if old is not None and old.parent() is group:
        return group
    _insert_sorted(group, layer, order)
    if old is not None and old.parent() is not None:
        old.parent().removeChildNode(old)  # the layer stays in the project: it has its node in the group
    return group


def run_group(project: QgsProject, title: str, output: str, run_at: str):
    """The group for a run: a new one at the top of the layer tree, or, for a run into a GeoPackage
    already on the map, that group emptied, renamed and moved to the top. Earlier runs are folded and
    hidden."""
    root = project.layerTreeRoot()
    key = os.path.abspath(output) if output else ""
    for group in _runs(root):
        if key and group.customProperty(OUTPUT_PROPERTY) == key:
            for node in group.findLayers():
                if node.layer() is not None:
                    project.removeMapLayer(node.layer().id())
            root.removeChildNode(group)
            break
    for group in _runs(root):
        group.setItemVisibilityChecked(False)
        group.setExpanded(False)
    group = root.insertGroup(0, title)
    group.setCustomProperty(RUN_PROPERTY, run_at or datetime.now().isoformat(timespec="seconds"))
    group.setCustomProperty(OUTPUT_PROPERTY, key)
    group.setExpanded(True)
    return group


def _insert_sorted(group, layer, order: int, legend_title: str = ""):
    """Add a layer to a group before the first node of a higher order (Processing loads in any order).
    A raster's legend gets its title and loses the 'not drawn' class before the node is in the tree."""
    index = len(group.children())
    for position, child in enumerate(group.children()):
        if int(child.customProperty(ORDER_PROPERTY, 99)) > order:
            index = position
            break
    node = QgsLayerTreeLayer(layer)
    node.setCustomProperty(ORDER_PROPERTY, order)
    if legend_title:
        QgsMapLayerLegendUtils.setLegendNodeUserLabel(node, 0, legend_title)
        QgsMapLayerLegendUtils.setLegendNodeOrder(node, [0, *range(len(MASS_SHARES), 0, -1)])  # 90 % first
    group.insertChildNode(index, node)
    return node


def _photo_group(group, answer: str, kind: AnswerKind = AnswerKind.PHOTO):
    """The folded group of one answer's rasters, inside the run's folded 'Rasters per photo'."""
    per_photo = group.findGroup(PER_PHOTO_GROUP)
    if per_photo is None:
        per_photo = group.addGroup(PER_PHOTO_GROUP)
        per_photo.setCustomProperty(ORDER_PROPERTY, 9)
        per_photo.setExpanded(False)
    name = short_name(answer, kind) if answer else "answer"
    sub = per_photo.findGroup(name)
    if sub is None:
        sub = per_photo.addGroup(name)
        sub.setExpanded(False)
    return sub


def place_layer(project: QgsProject, group, layer, file: OutputFile, answers: int, run_at: str = ""):
    """Put one of a run's layers in its place in the run's group, with its legend and description."""
    own_group = file.kind == OutputKind.LOCAL_RASTER or (file.kind == OutputKind.WORLD_RASTER and answers > 1)
    target = _photo_group(group, file.answer, file.answer_kind) if own_group else group
    classes = file.kind in RASTER_KINDS and bool(layer.customProperty(CLASSES_PROPERTY))
    node = _insert_sorted(target, layer, ORDER[file.kind], RASTER_LEGEND_TITLE if classes else "")
    layer.setCustomProperty(RUN_PROPERTY, run_at or "yes")
    layer.setCustomProperty(OUTPUT_PROPERTY, os.path.abspath(_output_of(group)))
    if file.answer:
        layer.setCustomProperty(ANSWER_PROPERTY, file.answer)
    about = f"GeoCLIP run {_local_time(run_at)}: {group.name()}\nWritten to {file.path}"
    if file.kind in RASTER_KINDS and layer.customProperty("geoclip/peak") is not None:
        peak = float(layer.customProperty("geoclip/peak"))
        about += f"\nMost probable cell: {100 * peak:.2g} % of the world's probability"
    layer.setAbstract(about)
    if file.kind in RASTER_KINDS:
        node.setExpanded(target is group)
        if file.kind == OutputKind.WORLD_RASTER and answers > 1:
            node.setItemVisibilityChecked(False)  # one world raster at a time; the run's mean is on top
    return node


def _local_time(run_at: str) -> str:
    try:
        return datetime.fromisoformat(run_at).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def answers_in(outcome_files) -> int:
    return len({f.answer for f in outcome_files if f.kind in (OutputKind.WORLD_RASTER, OutputKind.LOCAL_RASTER)})


def world_map_path() -> str:
    return os.path.join(QgsApplication.pkgDataPath(), "resources", "data", "world_map.gpkg")


def add_basemap(project: QgsProject):
    """QGIS's own offline world map (Natural Earth countries) at the bottom of the layer tree, when the
    project has no layer of its own to put the answers on; None otherwise."""
    own = [layer for layer in project.mapLayers().values() if not layer.customProperty(RUN_PROPERTY)]
    if own or not os.path.isfile(world_map_path()):
        return None
    layer = QgsVectorLayer(world_map_path() + "|layername=countries", "World (QGIS's offline map)", "ogr")
    if not layer.isValid():
        return None
    style_basemap(layer)
    layer.setCustomProperty(BASEMAP_PROPERTY, True)
    project.addMapLayer(layer, False)
    project.layerTreeRoot().addLayer(layer)
    return layer


def add_run(outcome, title: str, canvas=None, basemap: bool = True, output: str = "") -> dict:
    """Add a run's layers (from its outcome's files, by kind) in its group at the top of the layer tree;
    add a world map when the project has none; zoom the canvas to the answers."""
    project = QgsProject.instance()
    output = output or next((f.path for f in outcome.files if f.kind == OutputKind.POINTS), "")
    group = run_group(project, title, output, outcome.run_at)
    added = {
        "points": None,
        "radii": None,
        "lines": None,
        "errors": None,
        "areas": None,
        "rasters": [],
        "group": group,
        "basemap": None,
    }
    keys = {
        OutputKind.POINTS: "points",
        OutputKind.PLACE_RADII: "radii",
        OutputKind.TRUTH_LINES: "lines",
        OutputKind.ERRORS: "errors",
        OutputKind.CONFIDENCE_AREAS: "areas",
    }
    answers = answers_in(outcome.files)
    for file in outcome.files:
        if file.kind == OutputKind.ERRORS and not outcome.failures:
            continue  # failures of earlier runs into this file: not this run's news
        layer = make_layer(file)
        if layer is None:
            continue
        project.addMapLayer(layer, False)
        place_layer(project, group, layer, file, answers, outcome.run_at)
        if file.kind in keys:
            added[keys[file.kind]] = layer
        else:
            added["rasters"].append(layer)
    if basemap:
        added["basemap"] = add_basemap(project)
    points = added["points"]
    if canvas is not None and points is not None and points.featureCount():
        zoom_to(canvas, points.extent())
    return added


def padded(extent_wgs84: QgsRectangle) -> QgsRectangle:
    """The answers' extent with room around it for symbols and labels: a quarter of its size on each
    side, and at least 4° across."""
    extent = QgsRectangle(extent_wgs84)
    margin = max(2.0, 0.25 * max(extent.width(), extent.height()))
    extent.grow(margin)
    return extent


def zoom_to(canvas, extent_wgs84: QgsRectangle) -> None:
    extent = padded(extent_wgs84)
    transform = QgsCoordinateTransform(WGS84, canvas.mapSettings().destinationCrs(), QgsProject.instance())
    try:
        canvas.setExtent(transform.transformBoundingBox(extent))
    except Exception:  # outside the map projection's domain: leave the view as it is
        return
    canvas.refresh()


class RunPlacement:
    """Processing loads a run's layers one by one once the algorithm ends (on the main thread, wherever
    the layer tree's insertion point is): this moves each into the run's group as the dock places it,
    styles it, and once all are in adds the world map and zooms, when QGIS's window is there."""

    def __init__(self, title: str, output: str, run_at: str, files: list[OutputFile], basemap: bool = True):
        self.title, self.output, self.run_at, self.files, self.basemap = title, output, run_at, files, basemap
        self.answers = answers_in(files)
        self.group = None
        self.placed = 0
        self.points = None

    def place(self, layer, file: OutputFile) -> None:
        project = QgsProject.instance()
        if self.group is None:
            self.group = run_group(project, self.title, self.output, self.run_at)
        old = project.layerTreeRoot().findLayer(layer.id())
        style_layer(layer, file)
        place_layer(project, self.group, layer, file, self.answers, self.run_at)
        if old is not None and old.parent() is not None:
            old.parent().removeChildNode(old)  # the layer stays: it has its node in the run's group
        if file.kind == OutputKind.POINTS:
            self.points = layer
        self.placed += 1
        if self.placed == len(self.files):
            self.finish(project)

    def finish(self, project: QgsProject) -> None:
        if self.basemap:
            add_basemap(project)
        try:
            from qgis.utils import iface
        except ImportError:
            iface = None
        if iface is not None and self.points is not None and self.points.featureCount():
            zoom_to(iface.mapCanvas(), self.points.extent())
