"""How a run's layers are drawn: the answers' stars and dots, each place's radius, the truth lines, the
confidence areas (one answer's at a time), the rasters' confidence classes or probability ramp, the world
map; with their labels, map tips, field formats, photo time and camera direction.

Labels and map tips name fields, never values: what a row holds (a photo's or a place's name) is shown as
text, never read as part of an expression.

Only the look: making layers from a run's outputs and placing them in the layer tree is :mod:`.layers`.
Main thread only.
"""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsAction,
    QgsColorRampShader,
    QgsEditorWidgetSetup,
    QgsExpressionContextUtils,
    QgsFeatureRequest,
    QgsField,
    QgsFillSymbol,
    QgsGeometryGeneratorSymbolLayer,
    QgsLineSymbol,
    QgsMarkerLineSymbolLayer,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
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

from ..backend.results import RasterFacts
from .names import ALWAYS, IS_FILE, PHOTO_NAME, SHORT_NAME, short_name_of


def html_escaped(expression: str) -> str:
    """A QGIS expression giving ``expression``'s text escaped for HTML (map tips are HTML, and QGIS 3.22
    renders them in a web view with JavaScript on: a photo named like markup must stay text)."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        expression = f"replace({expression}, '{char.replace(chr(39), chr(39) * 2)}', '{entity}')"
    return expression


_PHOTO_ESCAPED = html_escaped('"photo"')
_PLACE_ESCAPED = html_escaped('"place"')


def map_tip(with_kind: bool = True, with_places: bool = False) -> str:
    """The answers layer's map tip (HTML): the answer's name, rank and probability, the place and its radius
    (``with_places``: the layer has the ``place`` and ``radius_km`` columns), and the photo when the row is
    one (``with_kind``: the layer has the ``kind`` column; without it, every row is a photo)."""
    name, is_file = (SHORT_NAME, IS_FILE) if with_kind else (PHOTO_NAME, ALWAYS)
    place = (
        f"[% CASE WHEN \"place\" IS NOT NULL THEN ' · near ' || {_PLACE_ESCAPED} END %]"
        "[% CASE WHEN \"radius_km\" IS NOT NULL THEN ' ± ' || format_number(\"radius_km\", 0) || ' km' END %]"
        if with_places
        else ""
    )
    return (
        f"<b>[% {html_escaped(name)} %]</b><br>"
        f'rank [% "rank" %] · [% format_number("probability" * 100, 2) %] %{place}'
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
    "radius_km": (1, "radius holding most of the place's probability (km)"),
    "gallery_lat": (5, "gallery point's latitude"),
    "gallery_lon": (5, "gallery point's longitude"),
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

    # the place's name from its field, when the layer has one (runs before it did not)
    place = "coalesce(\"place\" || ' · ', '') || " if layer.fields().indexOf("place") >= 0 else ""
    share = f"{place}format_number(\"probability\" * 100, 1) || ' %'"
    rules = QgsRuleBasedLabeling.Rule(None)
    placement = QgsPalLayerSettings.Placement.OrderedPositionsAroundPoint
    name = short_name_of(layer)
    top_labels = _labels(f"{name} || '\\n' || {share}", _text_format(9, bold=True), 10, placement)
    other_labels = _labels(f"'#' || \"rank\" || ' · ' || {share}", _text_format(7, "#505050"), 2, placement)
    rules.appendChild(QgsRuleBasedLabeling.Rule(top_labels, 0, 0, '"rank" = 1', "top-1: photo, place and probability"))
    rules.appendChild(QgsRuleBasedLabeling.Rule(other_labels, 0, 0, '"rank" IN (2, 3)', "ranks 2 and 3"))
    layer.setLabeling(QgsRuleBasedLabeling(rules))
    layer.setLabelsEnabled(True)

    names = layer.fields().names()
    layer.setMapTipTemplate(map_tip("kind" in names, "place" in names and "radius_km" in names))
    layer.setDisplayExpression(name)
    format_fields(layer)
    action = QgsAction(
        QgsAction.ActionType.OpenUrl, "Open photo", '[% "photo" %]', "", False, "Open photo", {"Feature", "Canvas"}
    )
    layer.actions().addAction(action)


def style_place_radii(layer: QgsVectorLayer) -> None:
    """Each distinct place's circle, the radius holding most of its probability: an outline over a faint
    fill in its answer's colours (the top-1 place's red, the others' orange), the top-1 circle drawn last;
    the map stays readable under them."""
    root = QgsRuleBasedRenderer.Rule(None)
    for fill, outline, expression, label in (
        (OTHER_COLOUR, "#e6550d", '"rank" > 1', "other places: their radius"),
        (TOP_COLOUR, TOP_COLOUR, '"rank" = 1', "top-1 place: its radius"),
    ):
        faint = QColor(fill)
        faint.setAlpha(45)
        symbol = QgsFillSymbol.createSimple(
            {"color": ",".join(str(v) for v in faint.getRgb()), "outline_color": outline, "outline_width": "0.45"}
        )
        root.appendChild(QgsRuleBasedRenderer.Rule(symbol, 0, 0, expression, label))
    renderer = QgsRuleBasedRenderer(root)
    clause = QgsFeatureRequest.OrderByClause
    renderer.setOrderBy(QgsFeatureRequest.OrderBy([clause('"rank" = 1', True), clause('"radius_km"', False)]))
    renderer.setOrderByEnabled(True)
    layer.setRenderer(renderer)
    layer.setDisplayExpression(
        f"{short_name_of(layer)} || ': #' || \"rank\" || coalesce(' ' || \"place\", '') "
        "|| ' ± ' || format_number(\"radius_km\", 0) || ' km'"
    )
    format_fields(layer)


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
