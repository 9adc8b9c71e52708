"""The case report of one answer as a PDF, through a QGIS print layout, and the same content as a
self-contained HTML file (the engine's :mod:`.backend.report`).

Page 1: the map (the answer's candidates, each place's radius and the confidence areas over a world
basemap), the photo, the candidate table with place names and radii, the region ranking, the EXIF and the
hint the answer was steered by. Page 2: provenance (model, engine
version, parameters, time, the sha256 of every weight file and of the photo). The map shows copies of
the run's own layers filtered to the answer; the run's file is only read.

The photo shown is the file :func:`.backend.run_file.photo_file` finds (its bytes have the sha256 the run
recorded; a received GeoPackage cannot name any other file), embedded in the layout from memory: no copy
of it is written anywhere, not even a temporary one.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsExpression,
    QgsFeatureRequest,
    QgsLayoutExporter,
    QgsLayoutItemLabel,
    QgsLayoutItemMap,
    QgsLayoutItemPage,
    QgsLayoutItemPicture,
    QgsLayoutMeasurement,
    QgsLayoutPoint,
    QgsLayoutSize,
    QgsPrintLayout,
    QgsProject,
    QgsRectangle,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtGui import QColor, QFont

from ..backend.results import RADIUS_MASS, AnswerKind, answer_name
from .names import radius_text

PAGE_W, PAGE_H, MARGIN = 297.0, 210.0, 10.0  # A4 landscape, mm
MAP_H = 91.0  # the map's height under the title, mm; its key fills the rest down to the candidates
CANDIDATE_COLUMNS = (
    ("rank", "Rank"),
    ("probability", "Probability"),
    ("place", "Nearest place"),
    ("region", "Region"),
    ("country", "Country"),
    ("lat", "Latitude"),
    ("lon", "Longitude"),
    ("error_km", "km from EXIF"),
)
REGION_COLUMNS = (("level", "Level"), ("rank", "Rank"), ("region", "Region"), ("probability", "Probability"))


class ReportError(Exception):
    """The report could not be made; the message says why."""


# What a layout label evaluates in its text: "[% expression %]" and "$CURRENT_DATE". Text from outside (a photo's
# name, its EXIF) must print as written, never run: each opening becomes an expression that gives it back.
_ACTIVE = re.compile(r"\[%|\$CURRENT_DATE")


def _literal(text: str) -> str:
    """Text for a layout label that prints exactly as given: QGIS evaluates "[% … %]" (and replaces
    "$CURRENT_DATE") in every label, so each such opening is replaced by an expression whose value is the
    opening itself; characters that would act (ESC, bidi overrides) are written out first."""
    from ..backend.shown_text import visible_text

    return _ACTIVE.sub(lambda m: "[% '[%' %]" if m[0] == "[%" else "[% '$' %]CURRENT_DATE", visible_text(text))


def _layer(gpkg: str, name: str, title: str, photo: str) -> QgsVectorLayer | None:
    """One answer's rows of a run layer, copied into a memory layer (the report never changes the run's
    file, and a copy avoids provider-side filters on a file other layers have open)."""
    source = QgsVectorLayer(f"{gpkg}|layername={name}", title, "ogr")
    if not source.isValid():
        return None
    kind = QgsWkbTypes.displayString(source.wkbType()) if source.isSpatial() else "None"
    layer = QgsVectorLayer(f"{kind}?crs={source.crs().authid()}" if source.isSpatial() else "None", title, "memory")
    layer.dataProvider().addAttributes(source.fields().toList())
    layer.updateFields()
    request = QgsFeatureRequest().setFilterExpression(f'"photo" = {QgsExpression.quotedString(photo)}')
    features = [f for f in source.getFeatures(request) if f["photo"] == photo]
    if source.fields().indexOf("run_at") >= 0 and features:  # the latest answer only, as the report's text
        latest = max(f["run_at"] or "" for f in features)
        features = [f for f in features if (f["run_at"] or "") == latest]
    from ..backend.shown_text import visible_text

    for feature in features:  # the map's labels print these: escapes and bidi overrides written out
        for index, value in enumerate(feature.attributes()):
            if isinstance(value, str):
                feature.setAttribute(index, visible_text(value))
    layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    return layer if layer.featureCount() else None


def _label(
    layout, text: str, x: float, y: float, w: float, h: float, size: float = 8, bold: bool = False, mono: bool = False
):
    label = QgsLayoutItemLabel(layout)
    label.setText(_literal(text))  # shown as written: never evaluated, whatever the photo or its EXIF say
    font = QFont("DejaVu Sans Mono") if mono else QFont()
    if mono:
        font.setStyleHint(QFont.StyleHint.Monospace)
    font.setPointSizeF(size)
    font.setBold(bold)
    label.setFont(font)
    layout.addLayoutItem(label)
    label.attemptMove(QgsLayoutPoint(x, y, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    label.attemptResize(QgsLayoutSize(w, h, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    return label


def _text_table(headers: tuple[str, ...], rows: list[tuple]) -> str:
    """Rows as aligned plain text for a monospaced label (a QGIS attribute-table item over a filtered
    memory layer proved unstable next to a map item on QGIS 3.22; text prints the same everywhere)."""
    cells = [tuple(str(c) for c in headers)] + [tuple("" if c is None else str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _thumbnail(path: str) -> str | None:
    """The photo at most 900 px on its longer side, as a picture item's embedded ("base64:") source: the
    layout holds it in memory, so nothing of the photo is left on disk."""
    from ..backend.workbench.report import thumbnail_jpeg

    try:
        data = thumbnail_jpeg(path, side=900)
    except Exception:
        return None
    return "base64:" + base64.b64encode(data).decode("ascii")


def _extent(layers) -> QgsRectangle:
    """The layers' joint extent with a margin, kept within the world."""
    boxes = [layer.extent() for layer in layers if not layer.extent().isEmpty()]
    if not boxes:
        return QgsRectangle(-180, -90, 180, 90)
    west, south = min(b.xMinimum() for b in boxes), min(b.yMinimum() for b in boxes)
    east, north = max(b.xMaximum() for b in boxes), max(b.yMaximum() for b in boxes)
    pad = max(2.0, 0.15 * max(east - west, north - south))
    return QgsRectangle(max(west - pad, -180), max(south - pad, -90), min(east + pad, 180), min(north + pad, 90))


def _fit(extent: QgsRectangle, ratio: float) -> QgsRectangle:
    """The extent widened (never cut) to the map frame's width/height ratio, around its centre."""
    width, height = extent.width(), extent.height()
    if width / height < ratio:
        width = height * ratio
    else:
        height = width / ratio
    x, y = extent.center().x(), extent.center().y()
    return QgsRectangle(x - width / 2, y - height / 2, x + width / 2, y + height / 2)


def build_layout(gpkg: str, photo: str, project: QgsProject | None = None) -> tuple[QgsPrintLayout, list]:
    """A two-page print layout for one answer of a run's GeoPackage, and the layers it shows (in the
    project but not in its layer tree: remove them when the layout is done with)."""
    from ..backend.workbench.report import report_from_geopackage
    from ..backend.workbench.run_file import photo_file, read_answers
    from .styles import style_basemap, style_confidence_areas, style_place_radii, style_points

    project = project or QgsProject.instance()
    data = report_from_geopackage(gpkg, [photo])
    if not data.answers:
        raise ReportError(f"{gpkg} holds no answer for {photo}")
    answer = data.answers[0]
    points = _layer(gpkg, "predictions", "Candidates", photo)
    if points is None:
        raise ReportError(f"{photo} has no candidates in {gpkg} (it failed: {answer.error or 'unknown reason'})")
    style_points(points)
    radii = _layer(gpkg, "place_radii", "Places and their radius", photo)
    if radii is not None:
        style_place_radii(radii)
    areas = _layer(gpkg, "confidence_areas", "Confidence areas", photo)
    basemap = QgsVectorLayer(
        str(Path(QgsApplication.pkgDataPath()) / "resources" / "data" / "world_map.gpkg") + "|layername=countries",
        "Countries",
        "ogr",
    )
    if areas is not None:
        style_confidence_areas(areas)
    style_basemap(basemap)
    keep = [layer for layer in (points, radii, areas, basemap) if layer is not None and layer.isValid()]
    for layer in keep:
        project.addMapLayer(layer, False)  # owned by the project while the layout lives; not in the tree

    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    layout.setName(f"GeoCLIP report: {Path(answer.photo).name}")
    page = layout.pageCollection().page(0)
    page.setPageSize(QgsLayoutSize(PAGE_W, PAGE_H, QgsUnitTypes.LayoutUnit.LayoutMillimeters))

    name = answer_name(answer.photo, answer.kind)
    _label(layout, f"GeoCLIP case report — {name}", MARGIN, MARGIN, PAGE_W - 2 * MARGIN, 9, 14, True)
    if data.provenance.warning:
        warning = _label(layout, f"⚠ {data.provenance.warning}", MARGIN, 16.2, PAGE_W - 2 * MARGIN, 5.6, 6, True)
        warning.setFontColor(QColor("#a00000"))
    map_item = QgsLayoutItemMap(layout)
    map_item.setLayers([layer for layer in (points, radii, areas, basemap) if layer is not None])
    map_item.setKeepLayerSet(True)  # these layers, not the project's visible ones
    layout.addLayoutItem(map_item)
    map_item.attemptMove(QgsLayoutPoint(MARGIN, 22, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    map_item.attemptResize(QgsLayoutSize(170, MAP_H, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    map_item.setCrs(points.crs())
    map_item.setExtent(_fit(_extent([layer for layer in (points, radii, areas) if layer is not None]), 170 / MAP_H))
    # two lines of room under the map: a key naming places' radii and both confidence areas wraps
    _label(layout, _legend(answer, radii is not None), MARGIN, 22 + MAP_H + 1, 170, 120 - 22 - MAP_H - 1, 6)
    map_item.setFrameEnabled(True)
    map_item.setFrameStrokeWidth(QgsLayoutMeasurement(0.3))

    stored = read_answers(gpkg, [photo])[0]  # the photo's exact path, also when its name is not UTF-8
    found = photo_file(stored)  # only a file with the bytes the run answered
    picture = _thumbnail(found) if found else None
    if picture:
        item = QgsLayoutItemPicture(layout)
        item.setPicturePath(picture, QgsLayoutItemPicture.Format.FormatRaster)
        layout.addLayoutItem(item)
        item.attemptMove(QgsLayoutPoint(188, 22, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
        item.attemptResize(QgsLayoutSize(PAGE_W - 188 - MARGIN, 60, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
        item.setResizeMode(QgsLayoutItemPicture.ResizeMode.Zoom)
    about = "\n".join(filter(None, (_exif_text(answer), _steering_text(stored, data.provenance.parameters))))
    _label(layout, about, 188, 85, PAGE_W - 188 - MARGIN, 35, 7)
    _label(layout, "Candidates", MARGIN, 121, 80, 5, 9, True)
    radius = {c.rank: radius_text(c.radius_km) for c in stored.result.candidates}
    rows = [
        (
            c.rank,
            f"{100 * c.probability:.2f} %",
            ", ".join(v for v in (c.place, c.region, c.country) if v),
            radius.get(c.rank, ""),
            f"{c.lat:.5f}",
            f"{c.lon:.5f}",
            "" if c.truth_km is None else f"{c.truth_km:,.1f}",
        )
        for c in answer.candidates
    ]
    headers = ("Rank", "Probability", "Nearest place", "Radius", "Latitude", "Longitude", "km from EXIF")
    _label(layout, _text_table(headers, rows), MARGIN, 127, 170, PAGE_H - 127 - MARGIN, 7, mono=True)
    if answer.regions:
        _label(layout, "Probability by region", 188, 121, 80, 5, 9, True)
        rows = [(r.level, r.rank, r.region, f"{100 * r.probability:.1f} %") for r in answer.regions if r.rank <= 5]
        _label(
            layout,
            _text_table(("Level", "Rank", "Region", "Share"), rows),
            188,
            127,
            PAGE_W - 188 - MARGIN,
            PAGE_H - 127 - MARGIN,
            7,
            mono=True,
        )

    second = QgsLayoutItemPage(layout)
    second.setPageSize(QgsLayoutSize(PAGE_W, PAGE_H, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    layout.pageCollection().addPage(second)
    top = PAGE_H + 10  # layout units run on from page to page
    _label(layout, "Provenance", MARGIN, top + MARGIN, 100, 8, 12, True)
    _label(layout, _provenance_text(data, answer), MARGIN, top + 22, PAGE_W - 2 * MARGIN, PAGE_H - 40, 7)
    return layout, keep


# What the map draws for each confidence level (the styles of :func:`.styles.style_confidence_areas`).
AREA_LEGEND = {0.5: "solid red outline: 50 % confidence area", 0.9: "dashed orange outline: 90 % confidence area"}


def _legend(answer, radii: bool = False) -> str:
    """The map's key: only what this answer's map holds (its places' radii and confidence areas when the
    run made them)."""
    parts = ["Red star: top-1 answer"]
    if len(answer.candidates) > 1:
        parts.append("orange dots: other candidates")
    if radii:
        parts.append(f"circles: each place's radius, holding {100 * RADIUS_MASS:.0f} % of its probability")
    levels = {round(area.level, 6) for area in answer.confidence}
    parts += [text for level, text in AREA_LEGEND.items() if level in levels]
    return " · ".join(parts)


def _exif_text(answer) -> str:
    from ..backend.photos.exif import camera_label

    meta = answer.metadata
    lines = []
    if answer.kind is AnswerKind.TEXT:
        lines.append("A text query, answered by CLIP's text tower in place of a photo.")
    if meta is not None:
        if meta.timestamp:
            lines.append(f"Taken: {meta.timestamp}")
        camera = camera_label(meta.camera_make, meta.camera_model)
        if camera:
            lines.append(f"Camera: {camera}")
        if meta.has_gps:
            lines.append(
                f"EXIF position: {meta.latitude:.5f}, {meta.longitude:.5f}"
                + (f" (near {answer.truth_place})" if answer.truth_place else "")
            )
        if meta.direction is not None:
            lines.append(f"Camera facing: {meta.direction:.0f}°")
    if answer.confidence:
        sizes = ", ".join(f"{a.level:.0%} in {a.area_km2:,.0f} km²" for a in answer.confidence)
        lines.append(f"Confidence areas: {sizes}")
    return "\n".join(lines) or "No EXIF in this photo."


def _steering_text(stored, parameters: dict) -> str:
    """What shaped the answer besides the photo: the hint, and the kind of candidates (refined places'
    coordinates are moved off the gallery point each was found at)."""
    lines = []
    hint = stored.result.hint
    if hint is not None:
        lines.append(f"Hint: {hint.shown}")
    if parameters.get("candidates"):
        lines.append(f"Candidates: {parameters['candidates']}")
    if parameters.get("refined") == "yes":
        lines.append("Each place's coordinates are refined from the gallery point it was found at.")
    return "\n".join(lines)


def _provenance_text(data, answer) -> str:
    p = data.provenance
    lines = [
        *[f"{item}: {value}" for item, value in p.items()],
        f"Report made: {data.created_at}",
        f"Photo: {answer.photo}",
        f"Photo sha256: {answer.photo_sha256 or '—'}",
        "",
        "Parameters:",
        *[f"    {k}: {v}" for k, v in sorted(p.parameters.items())],
        "",
        "Weight files (sha256):",
        *[f"    {name}: {digest}" for name, digest in sorted(p.weights.items())],
        "",
        *data.credits,
    ]
    return "\n".join(lines)


def export_case_report(gpkg: str, photo: str, pdf: str, html: str | None = None) -> tuple[Path, Path]:
    """Write the PDF (print layout) and the HTML (engine) report of one answer; returns both paths. A file
    that cannot be read as a run, or an HTML path holding a file the report did not make, is a
    :class:`ReportError`."""
    from ..backend.errors import GeoCLIPError

    try:
        return _export(gpkg, photo, pdf, html)
    except GeoCLIPError as exc:
        raise ReportError(str(exc)) from None


def _export(gpkg: str, photo: str, pdf: str, html: str | None) -> tuple[Path, Path]:
    from ..backend.workbench.report import check_report_path, report_from_geopackage, write_html_report

    html_path = Path(html) if html else Path(pdf).with_suffix(".html")
    check_report_path(html_path, gpkg)  # before the PDF is made
    if Path(pdf).exists() and Path(pdf).resolve() == Path(gpkg).resolve():
        raise ReportError(f"{pdf} is the run the report is made from; name another file for the report")
    layout, layers = build_layout(gpkg, photo)
    pdf_path = Path(pdf)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        settings = QgsLayoutExporter.PdfExportSettings()
        # Text as text, not outlines (newer QGIS defaults to outlines): the report stays searchable and
        # its names and coordinates can be copied into a case file.
        settings.textRenderFormat = Qgis.TextRenderFormat.AlwaysText
        result = QgsLayoutExporter(layout).exportToPdf(str(pdf_path), settings)
    finally:
        for layer in layers:
            QgsProject.instance().removeMapLayer(layer.id())
    if result != QgsLayoutExporter.ExportResult.Success:
        raise ReportError(f"cannot write {pdf_path} (QGIS's layout exporter said {result})")
    write_html_report(report_from_geopackage(gpkg, [photo]), html_path, source=gpkg)
    return pdf_path, html_path
