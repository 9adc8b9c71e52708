"""Result layers on the map: the run's GeoPackage and rasters, styled, grouped, zoomed to.

Layers are made from a run's outputs by their kind (:class:`..backend.results.OutputKind`), never from
file names. Each run gets one group named after what was run (a folder, a photo, a query); the time and
the output file go in its layers' descriptions (their tooltips in the layer tree). Running again into the
same GeoPackage refreshes that group; earlier runs are folded and hidden. Main thread only.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsAction,
    QgsApplication,
    QgsColorRampShader,
    QgsCoordinateTransform,
    QgsEditorWidgetSetup,
    QgsExpressionContextUtils,
    QgsFeatureRequest,
    QgsField,
    QgsFillSymbol,
    QgsGeometryGeneratorSymbolLayer,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsLineSymbol,
    QgsMapLayerLegendUtils,
    QgsMarkerLineSymbolLayer,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProject,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsRuleBasedLabeling,
    QgsRuleBasedRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsSymbol,
    QgsSymbolLayer,
    QgsTemplatedLineSymbolLayerBase,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

from ..backend.results import AnswerKind, OutputFile, OutputKind, RasterFacts
from ..core.inputs import WGS84

# -- names -------------------------------------------------------------------------------------------

# A row's answer in a few words, from the kind the engine stored with it ("kind": photo, text or fused):
# the photo's name without folder and extension, the text query quoted (its label is "text: <the text>"),
# or the fused set's label.
SHORT_NAME = (
    "CASE WHEN \"kind\" = 'text' THEN '“' || left(substr(\"photo\", 7), 28) "
    "|| CASE WHEN length(\"photo\") > 34 THEN '…' ELSE '' END || '”' "
    'WHEN "kind" = \'fused\' THEN "photo" ELSE base_file_name("photo") END'
)
IS_FILE = "\"kind\" = 'photo'"
# Layers without the column (truth lines, which only photos have; runs written before it existed)
PHOTO_NAME, ALWAYS = 'base_file_name("photo")', "true"


def short_name_of(layer: QgsVectorLayer) -> str:
    """:data:`SHORT_NAME`, or for a layer without a ``kind`` column every row named as a photo."""
    return SHORT_NAME if layer.fields().indexOf("kind") >= 0 else PHOTO_NAME


def short_name(answer: str, kind: AnswerKind = AnswerKind.PHOTO) -> str:
    """What :data:`SHORT_NAME` says, in Python: 'IMG_0001', '“a harbour with fishing…”', 'fused: 4 photos'."""
    if kind is AnswerKind.TEXT:
        text = answer.partition(": ")[2]
        return f"“{text[:28]}{'…' if len(text) > 28 else ''}”"
    if kind is AnswerKind.FUSED:
        return answer
    return Path(answer).stem or answer


def run_title(items, texts=(), photos: int | None = None) -> str:
    """A run named after what it answers: 'holiday — 20 photos', 'IMG_0001.jpg', '“a tropical beach…”',
    'IMG_0001.jpg and 2 more — 7 photos'."""
    names = [Path(str(item)).name or str(item) for item in items]
    names += [short_name(f"text: {text}", AnswerKind.TEXT) for text in texts]
    if not names:
        return "GeoCLIP"
    title = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
    single_photo = len(names) == 1 and items and Path(str(items[0])).is_file()
    if photos is not None and not single_photo and items:
        title += f" — {photos} photo{'s' if photos != 1 else ''}"
    return title


# -- styles ------------------------------------------------------------------------------------------


def html_escaped(expression: str) -> str:
    """A QGIS expression giving ``expression``'s text escaped for HTML (map tips are HTML, and QGIS 3.22
    renders them in a web view with JavaScript on: a photo named like markup must stay text)."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        expression = f"replace({expression}, '{char.replace(chr(39), chr(39) * 2)}', '{entity}')"
    return expression


_PHOTO_ESCAPED = html_escaped('"photo"')


def map_tip(with_kind: bool = True) -> str:
    """The answers layer's map tip (HTML): the answer's name, rank and probability, and the photo when
    the row is one (``with_kind``: the layer has the ``kind`` column; without it, every row is a photo)."""
    name, is_file = (SHORT_NAME, IS_FILE) if with_kind else (PHOTO_NAME, ALWAYS)
    return (
        f"<b>[% {html_escaped(name)} %]</b><br>"
        'rank [% "rank" %] · [% format_number("probability" * 100, 2) %] %'
        '[% CASE WHEN "error_km" IS NOT NULL '
        "THEN '<br>EXIF truth: ' || format_number(\"error_km\", 1) || ' km away' END %]"
        f"[% CASE WHEN {is_file} THEN '<br><img src=\"file:///' || {_PHOTO_ESCAPED} || '\" width=\"240\">' END %]"
    )


TOP_COLOUR, OTHER_COLOUR, TRUTH_COLOUR = "#d7191c", "#fdae61", "#2c7bb6"
# Probability rasters: the confidence areas of 90, 75, 50 and 25 % (the levels band the engine writes), in
# blues (the points are red and orange, so they stay visible on them); the rest is not drawn.
MASS_SHARES = ((0.9, "#74a9cf"), (0.75, "#2b8cbe"), (0.5, "#045a8d"), (0.25, "#023858"))
RASTER_LEGEND_TITLE = "most likely areas, holding"
CLASSES_PROPERTY = "geoclip/confidence_classes"  # a raster drawn in confidence classes
FIELD_FORMATS = {  # field: (decimals shown, alias)
    "lat": (5, "latitude"),
    "lon": (5, "longitude"),
    "exif_lat": (5, "EXIF latitude"),
    "exif_lon": (5, "EXIF longitude"),
    "error_km": (1, "distance to EXIF position (km)"),
    "place_km": (1, "distance to the place (km)"),
    "altitude": (1, "altitude (m)"),
    "direction": (1, "direction (°)"),
}
PERCENT_FIELD = "probability_pct"


def _text_format(size: float, colour: str = "#202020", bold: bool = False) -> QgsTextFormat:
    text = QgsTextFormat()
    font = QFont()
    font.setBold(bold)
    text.setFont(font)
    text.setSize(size)
    text.setColor(QColor(colour))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    buffer.setColor(QColor("white"))
    text.setBuffer(buffer)
    return text


def _labels(expression: str, text: QgsTextFormat, priority: int, placement) -> QgsPalLayerSettings:
    labels = QgsPalLayerSettings()
    labels.isExpression = True
    labels.fieldName = expression
    labels.setFormat(text)
    labels.placement = placement
    labels.dist = 1.2
    labels.priority = priority
    return labels


def label_with(layer: QgsVectorLayer, expression: str) -> None:
    """One label expression for every feature (tables and simple layers)."""
    labels = _labels(expression, _text_format(8), 5, QgsPalLayerSettings.Placement.AroundPoint)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)


def _double_field(name: str) -> QgsField:
    try:
        from qgis.PyQt.QtCore import QVariant

        return QgsField(name, QVariant.Type.Double)
    except (ImportError, AttributeError):  # Qt6: QVariant has no type enum
        from qgis.PyQt.QtCore import QMetaType

        return QgsField(name, QMetaType.Type.Double)


def format_fields(layer: QgsVectorLayer) -> None:
    """Identify and forms show coordinates to 5 decimals, distances to 0.1 km and probability in %."""
    for name, (decimals, alias) in FIELD_FORMATS.items():
        index = layer.fields().indexOf(name)
        if index >= 0:
            layer.setEditorWidgetSetup(index, QgsEditorWidgetSetup("Range", {"Precision": decimals}))
            layer.setFieldAlias(index, alias)
    probability = layer.fields().indexOf("probability")
    if probability >= 0 and layer.fields().indexOf(PERCENT_FIELD) < 0:
        layer.addExpressionField('"probability" * 100', _double_field(PERCENT_FIELD))
        index = layer.fields().indexOf(PERCENT_FIELD)
        layer.setEditorWidgetSetup(index, QgsEditorWidgetSetup("Range", {"Precision": 3}))
        layer.setFieldAlias(index, "probability (%)")
        layer.setEditorWidgetSetup(probability, QgsEditorWidgetSetup("Hidden", {}))  # shown in % instead


def style_points(layer: QgsVectorLayer) -> None:
    """Top-1 answers as large red stars drawn above every other rank; other ranks as orange dots; size
    grows with probability. Top-1 labelled with the photo's name and probability, ranks 2 and 3 with
    theirs when there is room."""
    top = QgsMarkerSymbol.createSimple(
        {"name": "star", "color": TOP_COLOUR, "outline_color": "white", "outline_width": "0.5", "size": "6"}
    )
    top.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertySize,
        QgsProperty.fromExpression('scale_linear("probability", 0, maximum("probability"), 5, 9)'),
    )
    other = QgsMarkerSymbol.createSimple(
        {"name": "circle", "color": OTHER_COLOUR, "outline_color": "#3d1f00", "outline_width": "0.35", "size": "3"}
    )
    other.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertySize,
        QgsProperty.fromExpression('scale_linear("probability", 0, maximum("probability"), 2.5, 6)'),
    )
    root = QgsRuleBasedRenderer.Rule(None)
    for symbol, expression, label in ((other, '"rank" > 1', "other candidates"), (top, '"rank" = 1', "top-1 answer")):
        root.appendChild(QgsRuleBasedRenderer.Rule(symbol, 0, 0, expression, label))
    renderer = QgsRuleBasedRenderer(root)
    # Top-1 stars last, above every other photo's dots at the same place; other ranks largest first, so a
    # smaller dot on the same spot stays visible on a larger one.
    clause = QgsFeatureRequest.OrderByClause
    order = [clause('"rank" = 1', True), clause('"probability"', False)]
    renderer.setOrderBy(QgsFeatureRequest.OrderBy(order))
    renderer.setOrderByEnabled(True)
    layer.setRenderer(renderer)

    percent = "format_number(\"probability\" * 100, 1) || ' %'"
    rules = QgsRuleBasedLabeling.Rule(None)
    placement = QgsPalLayerSettings.Placement.OrderedPositionsAroundPoint
    name = short_name_of(layer)
    top_labels = _labels(f"{name} || '\\n' || {percent}", _text_format(9, bold=True), 10, placement)
    other_labels = _labels(f"'#' || \"rank\" || ' · ' || {percent}", _text_format(7, "#505050"), 2, placement)
    rules.appendChild(QgsRuleBasedLabeling.Rule(top_labels, 0, 0, '"rank" = 1', "top-1: photo and probability"))
    rules.appendChild(QgsRuleBasedLabeling.Rule(other_labels, 0, 0, '"rank" IN (2, 3)', "ranks 2 and 3"))
    layer.setLabeling(QgsRuleBasedLabeling(rules))
    layer.setLabelsEnabled(True)

    layer.setMapTipTemplate(map_tip(layer.fields().indexOf("kind") >= 0))
    layer.setDisplayExpression(name)
    format_fields(layer)
    action = QgsAction(
        QgsAction.ActionType.OpenUrl, "Open photo", '[% "photo" %]', "", False, "Open photo", {"Feature", "Canvas"}
    )
    layer.actions().addAction(action)


def style_truth_lines(layer: QgsVectorLayer) -> None:
    """A dashed blue line from the EXIF position (a blue dot) to the top-1 answer, labelled with the
    photo's name and the distance."""
    line = QgsLineSymbol.createSimple({"color": TRUTH_COLOUR, "width": "0.6", "line_style": "dash"})
    start = QgsMarkerLineSymbolLayer()
    start.setPlacement(QgsTemplatedLineSymbolLayerBase.Placement.FirstVertex)
    start.setSubSymbol(
        QgsMarkerSymbol.createSimple(
            {"name": "circle", "color": TRUTH_COLOUR, "outline_color": "white", "outline_width": "0.4", "size": "2.8"}
        )
    )
    line.appendSymbolLayer(start)
    renderer = QgsSingleSymbolRenderer(line)
    layer.setRenderer(renderer)
    labels = _labels(
        f"{short_name_of(layer)} || ': ' || format_number(\"error_km\", 0) || ' km'",
        _text_format(8, TRUTH_COLOUR, bold=True),
        8,
        QgsPalLayerSettings.Placement.Line,
    )
    labels.placementFlags = (
        QgsPalLayerSettings.LinePlacementFlags.AboveLine | QgsPalLayerSettings.LinePlacementFlags.OnLine
    )
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)
    layer.setDisplayExpression(short_name_of(layer))
    format_fields(layer)


def style_raster(layer: QgsRasterLayer, facts: RasterFacts | None = None) -> None:
    """A world raster: the confidence areas of 90, 75, 50 and 25 %, lighter to darker blue, drawn from
    the confidence levels the engine wrote as its second band — the very cells of the run's confidence
    polygons; the rest is not drawn. A local raster (0.01°, around a likely place): its probability per
    cell on a blue ramp, darker where more likely — a window usually lies inside one confidence class
    (all of it within the 25 % area, say), so classes would show nothing of what varies inside it. A
    raster not written by a run keeps QGIS's look. ``facts``: what the run that wrote it says; else they
    are read from the file (a raster of an earlier run, a received one)."""
    if facts is None:
        from ..backend.output.geotiff import read_raster_facts

        facts = read_raster_facts(layer.source())
    if facts.kind == "local" and facts.peak is not None:
        renderer = _probability_ramp(layer, facts.peak)
    elif facts.levels_band is not None:
        renderer = _confidence_classes(layer, facts.levels_band)
        layer.setCustomProperty(CLASSES_PROPERTY, True)
    else:
        return
    renderer.setOpacity(0.85)
    layer.setRenderer(renderer)
    if facts.peak is not None:
        layer.setCustomProperty("geoclip/peak", facts.peak)


def _confidence_classes(layer: QgsRasterLayer, band: int):
    items = []
    for share, colour in reversed(MASS_SHARES):  # ascending levels: a cell takes the first class it is below
        label = f"{100 * share:g} % of the probability" if share == MASS_SHARES[0][0] else f"{100 * share:g} %"
        items.append(QgsColorRampShader.ColorRampItem(share, QColor(colour), label))
    items.append(QgsColorRampShader.ColorRampItem(1.0, QColor(0, 0, 0, 0), "less likely: not drawn"))
    shader = QgsColorRampShader(0.0, 1.0)
    shader.setColorRampType(QgsColorRampShader.Type.Discrete)
    shader.setColorRampItemList(items)
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, raster_shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    return renderer


def _probability_ramp(layer: QgsRasterLayer, peak: float):
    """Band 1 from 0 (see-through) to the window's most probable cell (darkest blue)."""
    light, _, mid, dark = (QColor(colour) for _, colour in MASS_SHARES)
    clear = QColor(light)
    clear.setAlpha(0)
    items = [
        QgsColorRampShader.ColorRampItem(0.0, clear, "0"),
        QgsColorRampShader.ColorRampItem(peak / 3, light, ""),
        QgsColorRampShader.ColorRampItem(2 * peak / 3, mid, ""),
        QgsColorRampShader.ColorRampItem(peak, dark, f"{100 * peak:.2g} % (most probable cell)"),
    ]
    shader = QgsColorRampShader(0.0, peak)
    shader.setColorRampType(QgsColorRampShader.Type.Interpolated)
    shader.setColorRampItemList(items)
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(peak)
    return renderer


def style_basemap(layer: QgsVectorLayer) -> None:
    fill = QgsFillSymbol.createSimple({"color": "#f1eee8", "outline_color": "#a39d93", "outline_width": "0.2"})
    layer.setRenderer(QgsSingleSymbolRenderer(fill))


CONFIDENCE_PROPERTY = "geoclip/confidence_areas"  # a confidence-area layer styled here
ANSWER_VARIABLE = "geoclip_answer"  # its layer variable: the answer whose areas are drawn
ALL_ANSWERS = "*"  # ...or every answer's
SHOWN_ANSWER = f"(coalesce(@{ANSWER_VARIABLE}, '{ALL_ANSWERS}') = '{ALL_ANSWERS}' OR \"photo\" = @{ANSWER_VARIABLE})"


def style_confidence_areas(layer: QgsVectorLayer, answer: str | None = None) -> None:
    """Confidence areas as outlines, no fill (the map stays readable under them): the 50 % area solid
    dark red, the 90 % area dashed orange. Only one answer's areas are drawn (a run's areas on top of
    each other hide the map): ``answer``, by default the first of the layer's latest run, until the
    results panel chooses another (:func:`show_confidence_areas_of`)."""
    root = QgsRuleBasedRenderer.Rule(None)
    for level, colour, width, style, label in (
        (0.9, "#ef8a62", "0.45", "dash", "90 % confidence area"),
        (0.5, "#b2182b", "0.7", "solid", "50 % confidence area"),
    ):
        symbol = QgsFillSymbol.createSimple(
            {"style": "no", "outline_color": colour, "outline_width": width, "outline_style": style}
        )
        root.appendChild(QgsRuleBasedRenderer.Rule(symbol, 0, 0, f'"level" = {level} AND {SHOWN_ANSWER}', label))
    layer.setRenderer(QgsRuleBasedRenderer(root))
    layer.setDisplayExpression(
        f"{short_name_of(layer)} || ': ' || format_number(\"level\" * 100, 0) || ' % in ' "
        "|| format_number(\"area_km2\", 0) || ' km²'"
    )
    format_fields(layer)
    layer.setCustomProperty(CONFIDENCE_PROPERTY, True)
    show_confidence_areas_of([layer], answer if answer is not None else first_answer(layer))


def first_answer(layer: QgsVectorLayer) -> str | None:
    """The first answer written in the layer's latest run (the results panel lists it first), or None."""
    if layer.fields().indexOf("photo") < 0:
        return None
    request = QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry)
    request.setSubsetOfAttributes([n for n in ("photo", "run_at") if layer.fields().indexOf(n) >= 0], layer.fields())
    firsts: dict[str, str] = {}
    with_run = layer.fields().indexOf("run_at") >= 0
    for feature in layer.getFeatures(request):
        if feature["photo"]:
            firsts.setdefault(str(feature["run_at"] or "") if with_run else "", str(feature["photo"]))
    return firsts[max(firsts)] if firsts else None


def show_confidence_areas_of(layers, answer: str | None) -> None:
    """Draw only ``answer``'s areas in those of ``layers`` that are confidence-area layers styled here
    (None: every answer's). The choice is a layer variable, kept in the project."""
    for layer in layers:
        if isinstance(layer, QgsVectorLayer) and layer.customProperty(CONFIDENCE_PROPERTY):
            QgsExpressionContextUtils.setLayerVariable(layer, ANSWER_VARIABLE, answer or ALL_ANSWERS)
            layer.triggerRepaint()


def confidence_answer(layer: QgsVectorLayer) -> str | None:
    """The answer whose areas the layer draws; None for every answer's."""
    value = QgsExpressionContextUtils.layerScope(layer).variable(ANSWER_VARIABLE)
    return None if value in (None, "", ALL_ANSWERS) else str(value)


FACING = '"rank" = 1 AND "direction" IS NOT NULL AND "exif_lat" IS NOT NULL AND "exif_lon" IS NOT NULL'


def add_time_and_direction(layer: QgsVectorLayer) -> None:
    """Photo time and direction: the answers play in QGIS's temporal controller by EXIF time, and a
    photo whose EXIF says where the camera faced gets an arrow at its EXIF position."""
    properties = layer.temporalProperties()
    properties.setMode(Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromExpressions)
    properties.setStartExpression('to_datetime("timestamp")')
    properties.setEndExpression('to_datetime("timestamp")')
    properties.setIsActive(
        layer.fields().indexOf("timestamp") >= 0
        and layer.featureCount() > 0
        and any(f["timestamp"] for f in layer.getFeatures(QgsFeatureRequest().setLimit(200)))
    )
    renderer = layer.renderer()
    if not isinstance(renderer, QgsRuleBasedRenderer) or not has_direction(layer):
        return  # no arrow, and no empty "camera direction" entry in the legend
    arrow = QgsMarkerSymbol.createSimple(
        {
            "name": "arrowhead",
            "color": TRUTH_COLOUR,
            "outline_color": TRUTH_COLOUR,
            "outline_width": "0.6",
            "size": "4",
            "angle": "0",
        }
    )
    arrow.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertyAngle, QgsProperty.fromExpression('"direction"')
    )
    generator = QgsGeometryGeneratorSymbolLayer.create({"geometryModifier": 'make_point("exif_lon", "exif_lat")'})
    generator.setSymbolType(QgsSymbol.SymbolType.Marker)
    generator.setSubSymbol(arrow)
    symbol = QgsMarkerSymbol()
    symbol.changeSymbolLayer(0, generator)
    renderer.rootRule().appendChild(QgsRuleBasedRenderer.Rule(symbol, 0, 0, FACING, "camera direction (EXIF)"))


def has_direction(layer: QgsVectorLayer) -> bool:
    """Whether some answer's photo says, in its EXIF, where the camera faced (and where it stood)."""
    names = layer.fields().names()
    if not all(name in names for name in ("rank", "direction", "exif_lat", "exif_lon")):
        return False
    request = QgsFeatureRequest().setFilterExpression(FACING).setFlags(QgsFeatureRequest.Flag.NoGeometry).setLimit(1)
    return any(True for _ in layer.getFeatures(request))


LAYER_NAMES = {
    OutputKind.POINTS: "GeoCLIP answers",
    OutputKind.TRUTH_LINES: "EXIF truth → top-1",
    OutputKind.ERRORS: "Photos not answered",
    OutputKind.CONFIDENCE_AREAS: "Confidence areas (50 %, 90 %)",
}
VECTOR_KINDS = (OutputKind.POINTS, OutputKind.TRUTH_LINES, OutputKind.ERRORS, OutputKind.CONFIDENCE_AREAS)
RASTER_KINDS = (OutputKind.COMBINED_RASTER, OutputKind.WORLD_RASTER, OutputKind.LOCAL_RASTER)
ORDER = {  # top to bottom in a run's group
    OutputKind.POINTS: 0,
    OutputKind.TRUTH_LINES: 1,
    OutputKind.CONFIDENCE_AREAS: 2,
    OutputKind.ERRORS: 3,
    OutputKind.COMBINED_RASTER: 4,
    OutputKind.WORLD_RASTER: 5,
    OutputKind.LOCAL_RASTER: 6,
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
        "lines": None,
        "errors": None,
        "areas": None,
        "rasters": [],
        "group": group,
        "basemap": None,
    }
    keys = {
        OutputKind.POINTS: "points",
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
