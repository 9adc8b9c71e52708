"""Result layers on the map: the run's GeoPackage and rasters, styled, grouped, zoomed to.

Main thread only (called from a task's ``finished``).
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsAction,
    QgsColorRampShader,
    QgsCoordinateTransform,
    QgsLineSymbol,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProject,
    QgsProperty,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsRuleBasedRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsStyle,
    QgsSymbolLayer,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)

from .backend.results import OutputFile, OutputKind
from .inputs import WGS84

MAP_TIP = (
    '<b>[% base_file_name("photo") %]</b><br>'
    'rank [% "rank" %] · [% format_number("probability" * 100, 2) %] %'
    '[% CASE WHEN "error_km" IS NOT NULL '
    "THEN '<br>EXIF truth: ' || format_number(\"error_km\", 1) || ' km away' END %]"
    '<br><img src="file:///[% "photo" %]" width="240">'
)
NEGLIGIBLE = 0.02  # raster cells below this share of the peak are drawn transparent


def label_with(layer: QgsVectorLayer, expression: str) -> None:
    labels = QgsPalLayerSettings()
    labels.isExpression = True
    labels.fieldName = expression
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)


def style_points(layer: QgsVectorLayer) -> None:
    """Top-1 answers as large red stars, other ranks as orange dots; size grows with probability."""
    size = QgsProperty.fromExpression('scale_linear("probability", 0, maximum("probability"), 2.5, 7)')
    top = QgsMarkerSymbol.createSimple(
        {"name": "star", "color": "#d7191c", "outline_color": "white", "outline_width": "0.4", "size": "6"}
    )
    top.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertySize,
        QgsProperty.fromExpression('scale_linear("probability", 0, maximum("probability"), 5, 9)'),
    )
    other = QgsMarkerSymbol.createSimple(
        {"name": "circle", "color": "#fdae61", "outline_color": "#7f3b08", "outline_width": "0.2", "size": "3"}
    )
    other.symbolLayer(0).setDataDefinedProperty(QgsSymbolLayer.Property.PropertySize, size)
    root = QgsRuleBasedRenderer.Rule(None)
    for symbol, expression, label in ((other, '"rank" > 1', "other candidates"), (top, '"rank" = 1', "top-1 answer")):
        root.appendChild(QgsRuleBasedRenderer.Rule(symbol, 0, 0, expression, label))
    layer.setRenderer(QgsRuleBasedRenderer(root))

    label_with(layer, "concat(\"rank\", ' · ', format_number(\"probability\" * 100, 1), '%')")
    layer.setMapTipTemplate(MAP_TIP)
    layer.setDisplayExpression('base_file_name("photo")')
    action = QgsAction(
        QgsAction.ActionType.OpenUrl, "Open photo", '[% "photo" %]', "", False, "Open photo", {"Feature", "Canvas"}
    )
    layer.actions().addAction(action)


def style_truth_lines(layer: QgsVectorLayer) -> None:
    line = QgsLineSymbol.createSimple({"color": "#2c7bb6", "width": "0.6", "line_style": "dash"})
    layer.setRenderer(QgsSingleSymbolRenderer(line))
    label_with(layer, "format_number(\"error_km\", 1) || ' km'")


def style_raster(layer: QgsRasterLayer) -> None:
    """Pseudocolour from a negligible share of the peak up to the peak; below that, transparent."""
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Stats.Max)
    peak = stats.maximumValue if stats.maximumValue > 0 else 1.0
    ramp = QgsStyle.defaultStyle().colorRamp("YlOrRd")  # pale for little belief, deep red for the peak
    shader = QgsColorRampShader(peak * NEGLIGIBLE, peak, ramp, QgsColorRampShader.Type.Interpolated)
    shader.classifyColorRamp(8, -1, QgsRectangle(), None)
    shader.setClip(True)  # values under the minimum are not drawn
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
    renderer.setClassificationMin(peak * NEGLIGIBLE)
    renderer.setClassificationMax(peak)
    renderer.setOpacity(0.75)
    layer.setRenderer(renderer)


LAYER_NAMES = {
    OutputKind.POINTS: "GeoCLIP answers",
    OutputKind.TRUTH_LINES: "EXIF truth → top-1",
    OutputKind.ERRORS: "Photos not answered",
}
VECTOR_KINDS = (OutputKind.POINTS, OutputKind.TRUTH_LINES, OutputKind.ERRORS)
RASTER_KINDS = (OutputKind.COMBINED_RASTER, OutputKind.WORLD_RASTER, OutputKind.LOCAL_RASTER)


def layer_name(file: OutputFile) -> str:
    if file.kind in LAYER_NAMES:
        return LAYER_NAMES[file.kind]
    return Path(file.path).stem


def style_layer(layer, kind: OutputKind) -> None:
    """The same look wherever a run's layer is loaded (the dock, Processing)."""
    if kind == OutputKind.POINTS:
        style_points(layer)
    elif kind == OutputKind.TRUTH_LINES:
        style_truth_lines(layer)
    elif kind in RASTER_KINDS:
        style_raster(layer)


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
        style_layer(layer, file.kind)
    return layer


def add_run(outcome, title: str, canvas=None) -> dict:
    """Add a run's layers (from its outcome's files, by kind) in a new group at the top of the layer tree;
    zoom the canvas to the answers."""
    project = QgsProject.instance()
    group = project.layerTreeRoot().insertGroup(0, title)
    added = {"points": None, "lines": None, "errors": None, "rasters": []}
    keys = {OutputKind.POINTS: "points", OutputKind.TRUTH_LINES: "lines", OutputKind.ERRORS: "errors"}
    local_group = None
    for file in outcome.files:
        layer = make_layer(file)
        if layer is None:
            continue
        project.addMapLayer(layer, False)
        if file.kind == OutputKind.LOCAL_RASTER:  # zoomed-in rasters in their own folded group
            if local_group is None:
                local_group = group.addGroup("local rasters (0.01°)")
                local_group.setExpanded(False)
            local_group.addLayer(layer)
        else:
            group.addLayer(layer)
        if file.kind in keys:
            added[keys[file.kind]] = layer
        else:
            added["rasters"].append(layer)
    points = added["points"]
    if canvas is not None and points is not None and points.featureCount():
        zoom_to(canvas, points.extent())
    return added


def zoom_to(canvas, extent_wgs84: QgsRectangle) -> None:
    extent = QgsRectangle(extent_wgs84)
    extent.grow(max(0.5, 0.1 * max(extent.width(), extent.height())))  # a single point still shows context
    transform = QgsCoordinateTransform(WGS84, canvas.mapSettings().destinationCrs(), QgsProject.instance())
    try:
        canvas.setExtent(transform.transformBoundingBox(extent))
    except Exception:  # outside the map projection's domain: leave the view as it is
        return
    canvas.refresh()
