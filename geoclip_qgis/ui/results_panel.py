"""The results panel: judge one answer at a time.

A dock listing a run's answers (photos, text queries, the joint answer) with thumbnails; selecting one
shows the photo, its EXIF, its candidates with place names and distance to the EXIF position, its
region ranking and confidence areas. A candidate zooms and flashes on the map; buttons copy its
coordinates, open the photo, show only this answer's layers, export the case report (PDF + HTML) and
switch on the "How likely here?" map tool. Everything shown is read back from the run's GeoPackage
(:mod:`.backend.run_file`); the numbers come from the engine.
"""

from __future__ import annotations

import os
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMessageLog,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsMapToolEmitPoint, QgsVertexMarker
from qgis.PyQt.QtCore import QSize, Qt, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..backend.results import RADIUS_MASS, AnswerKind, answer_name
from ..core.inputs import WGS84
from ..core.plain_text import as_html, tooltip
from ..map.layers import ANSWER_PROPERTY, OUTPUT_PROPERTY
from ..map.names import radius_text
from ..map.styles import show_confidence_areas_of
from .likely import LikelyTask, likely_text

THUMBNAIL = 72  # px, list icons
PHOTO_HEIGHT = 220  # px, the selected photo


def _pixmap(path: str, side: int) -> QPixmap | None:
    """A thumbnail through the engine's one image loader (EXIF orientation, HEIC, odd modes)."""
    from ..backend.workbench.report import thumbnail_jpeg

    try:
        data = thumbnail_jpeg(path, side=side)
    except Exception:
        return None
    pixmap = QPixmap()
    return pixmap if pixmap.loadFromData(data, "JPEG") else None


class ResultsPanel(QgsDockWidget):
    """Judging one answer of a run at a time (see the module's docstring)."""

    likelyDone = pyqtSignal(object)  # noqa: N815 - Qt's naming for signals; the Likelihood, for listeners

    def __init__(self, iface, parent=None):
        super().__init__("GeoCLIP results", parent)
        self.setObjectName("GeoCLIPResults")
        self.iface = iface
        self.gpkg = ""
        self.answers = []
        self._parameters: dict[str, dict] = {}  # each run's recorded parameters, by its run_at
        self.only_this = False
        self.tool = None
        self.task = None
        self.marker = None  # where "How likely here?" was clicked
        self._thumbs: list[tuple[QListWidgetItem, str]] = []
        self._thumb_timer = QTimer(self)  # owned by the panel: it stops when the panel goes
        self._thumb_timer.setInterval(0)
        self._thumb_timer.timeout.connect(self._next_thumbnails)
        self._build()

    # -- layout ----------------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        top = QHBoxLayout()
        self.source = QLabel("No run loaded")
        self.source.setTextFormat(Qt.TextFormat.RichText)  # what it quotes goes through as_html
        self.source.setWordWrap(True)
        open_button = QPushButton("Open…")
        open_button.setToolTip("The answers of another GeoCLIP run (a GeoPackage it wrote)")
        open_button.clicked.connect(self._pick_file)
        top.addWidget(self.source, 1)
        top.addWidget(open_button, 0)
        layout.addLayout(top)

        self.list = QListWidget()
        self.list.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.list.setMinimumHeight(150)
        self.list.setMaximumHeight(220)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.currentRowChanged.connect(self._select)
        layout.addWidget(self.list)

        self.photo = QLabel()
        self.photo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.photo.setMinimumHeight(80)
        layout.addWidget(self.photo)
        self.info = QLabel()
        self.info.setTextFormat(Qt.TextFormat.RichText)  # built by _info_html, outside text escaped
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.info)

        self.candidates = QTableWidget(0, 5)
        self.candidates.setHorizontalHeaderLabels(["#", "Prob.", "Nearest place", "Radius", "km off"])
        self.candidates.horizontalHeaderItem(3).setToolTip(
            f"Around the place, the radius holding {100 * RADIUS_MASS:.0f} % of its probability (distinct places)"
        )
        self.candidates.horizontalHeaderItem(4).setToolTip("Distance from the photo's EXIF position, when it has one")
        header = self.candidates.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.candidates.verticalHeader().setVisible(False)
        self.candidates.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.candidates.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.candidates.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.candidates.setWordWrap(False)
        self.candidates.setMinimumHeight(140)
        self.candidates.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.candidates.itemSelectionChanged.connect(self._candidate_chosen)
        layout.addWidget(self.candidates)

        self.regions = QLabel()
        self.regions.setTextFormat(Qt.TextFormat.RichText)  # built by _regions_text, names escaped
        self.regions.setWordWrap(True)
        layout.addWidget(self.regions)

        buttons = QGridLayout()  # two columns: the panel stays usable at a laptop's dock width
        self.copy_button = QPushButton("Copy coordinates")
        self.copy_button.clicked.connect(self.copy_coordinates)
        self.open_button = QPushButton("Open photo")
        self.open_button.clicked.connect(self.open_photo)
        self.only_button = QPushButton("Only this answer")
        self.only_button.setCheckable(True)
        self.only_button.setToolTip("Show only this answer's points, areas and rasters on the map")
        self.only_button.toggled.connect(self.show_only_this)
        self.likely_button = QPushButton("How likely here?")
        self.likely_button.setCheckable(True)
        self.likely_button.setToolTip("Click the map: the probability near that spot, for this answer")
        self.likely_button.toggled.connect(self._likely_tool)
        self.report_button = QPushButton("Export report…")
        self.report_button.setToolTip("A PDF (QGIS print layout) and a self-contained HTML file of this answer")
        self.report_button.clicked.connect(self.export_report)
        buttons.addWidget(self.copy_button, 0, 0)
        buttons.addWidget(self.open_button, 0, 1)
        buttons.addWidget(self.only_button, 1, 0)
        buttons.addWidget(self.likely_button, 1, 1)
        buttons.addWidget(self.report_button, 2, 0, 1, 2)
        layout.addLayout(buttons)
        self.likely = QLabel()
        self.likely.setTextFormat(Qt.TextFormat.PlainText)
        self.likely.setWordWrap(True)
        self.likely.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.likely)
        layout.addStretch(1)

        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # widgets fit the dock
        scroll.setWidget(body)
        self.setWidget(scroll)
        self._enable(False)

    def _enable(self, on: bool) -> None:
        for button in (self.copy_button, self.open_button, self.only_button, self.likely_button, self.report_button):
            button.setEnabled(on)

    # -- loading a run ---------------------------------------------------------------------------

    def _pick_file(self) -> None:
        from ..core.session import dialog_folder

        start = dialog_folder(self.gpkg)
        path, _ = QFileDialog.getOpenFileName(self, "Answers of a GeoCLIP run", start, "GeoPackage (*.gpkg)")
        if path:
            self.show_run(path)

    def show_run(self, gpkg: str) -> None:
        """List the answers of a run's GeoPackage (the latest of each photo), best known first."""
        from ..backend.errors import GeoCLIPError
        from ..backend.workbench.run_file import read_answers

        try:
            answers = read_answers(gpkg)
        except GeoCLIPError as exc:
            self.source.setText(as_html(exc))
            return
        self.gpkg, self.answers = gpkg, answers
        self._parameters = {}  # read again when one of its answers is first shown
        count = f"{len(answers)} answer{'s' if len(answers) != 1 else ''}"
        self.source.setText(f"<b>{as_html(Path(gpkg).name)}</b> — {count}")
        self.source.setToolTip(tooltip(gpkg))
        self.list.blockSignals(True)
        self.list.clear()
        self._thumbs = []
        for stored in answers:
            name = answer_name(stored.photo, stored.result.kind)
            top = stored.result.candidates[0] if stored.result.candidates else None
            detail = (
                f"{100 * top.probability:.1f} % · {top.place or ''}, {top.country or ''}".rstrip(", ")
                if top
                else f"failed: {stored.result.error}"
            )
            item = QListWidgetItem(f"{name}\n{detail}")
            item.setToolTip(tooltip(stored.path))
            self.list.addItem(item)
            if stored.result.kind is AnswerKind.PHOTO:
                self._thumbs.append((item, stored))  # its file is looked for (by sha256) when its turn comes
        self.list.blockSignals(False)
        if self._thumbs:
            self._thumb_timer.start()  # icons arrive a few at a time: the panel stays responsive
        if answers:
            self.list.setCurrentRow(0)

    def clear_run(self) -> None:
        """No run (a new project)."""
        self._thumb_timer.stop()
        self._thumbs = []
        self.gpkg, self.answers = "", []
        self.list.clear()
        self.source.setText("No run loaded")
        self.source.setToolTip("")
        self._select(-1)

    def _next_thumbnails(self) -> None:
        from ..backend.workbench.run_file import photo_file

        for _ in range(min(6, len(self._thumbs))):
            item, stored = self._thumbs.pop(0)
            path = photo_file(stored)  # only a file with the bytes the run answered
            pixmap = _pixmap(path, THUMBNAIL) if path else None
            if pixmap is not None:
                item.setIcon(QIcon(pixmap))
        if not self._thumbs:
            self._thumb_timer.stop()

    def current(self):
        row = self.list.currentRow()
        return self.answers[row] if 0 <= row < len(self.answers) else None

    # -- one answer ------------------------------------------------------------------------------

    def _select(self, row: int) -> None:
        stored = self.current()
        self.likely.clear()
        self._drop_marker()  # it belonged to the answer shown before
        if stored is None:
            self._enable(False)
            return
        show_confidence_areas_of(self._run_layers(), stored.photo)  # only this answer's areas on the map
        result = stored.result
        from ..backend.workbench.run_file import photo_file

        found = photo_file(stored)  # only a file with the bytes the run answered, never any path the file names
        pixmap = _pixmap(found, 900) if found else None
        if pixmap is not None:
            self.photo.setPixmap(
                pixmap.scaled(
                    QSize(self.width() - 40, PHOTO_HEIGHT),
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
        else:
            self.photo.setText(
                "(a text query)"
                if stored.result.kind is AnswerKind.TEXT
                else "(several photos)"
                if stored.result.kind is AnswerKind.FUSED
                else "(the photo is not available: no file has the bytes the run answered)"
            )
        parameters = self._run_parameters(stored.run_at)
        self.info.setText(self._info_html(stored, parameters))
        self.info.setToolTip(tooltip(stored.path))
        self.candidates.setRowCount(len(result.candidates))
        refined = parameters.get("refined") is True
        for index, c in enumerate(result.candidates):
            truth = result.error_km(c)
            place = ", ".join(v for v in (c.place, c.region, c.country) if v)
            radius = radius_text(c.radius_km)
            cells = (
                str(c.rank),
                f"{100 * c.probability:.2f} %",
                place,
                radius,
                "" if truth is None else f"{truth:,.1f}",
            )
            about = f"{c.lat:.5f}, {c.lon:.5f}" + (f" — {c.place_km:.1f} km from {c.place}" if c.place else "")
            if radius:
                about += f"\n{radius}: the radius holding {100 * RADIUS_MASS:.0f} % of this place's probability"
            if refined and c.gallery_lat is not None and c.gallery_lon is not None:
                about += f"\nRefined from the gallery point {c.gallery_lat:.5f}, {c.gallery_lon:.5f}"
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tooltip(about))  # the place's name is outside text
                if column in (0, 1, 3, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.candidates.setItem(index, column, item)
        self.regions.setText(self._regions_text(stored))
        has_photo = found is not None
        self._enable(bool(result.candidates))
        self.open_button.setEnabled(has_photo)
        self.likely_button.setEnabled(result.feature is not None)
        if self.only_this:
            self.show_only_this(True)

    def _run_parameters(self, run_at: str) -> dict:
        """What the answer's run recorded of its parameters (kind of candidates, refined...); {} if nothing."""
        if run_at not in self._parameters:
            from ..backend.errors import GeoCLIPError
            from ..backend.workbench.run_file import read_provenance

            try:
                parameters = read_provenance(self.gpkg, run_at or None).get("parameters") or {}
            except GeoCLIPError:
                parameters = {}
            self._parameters[run_at] = parameters if isinstance(parameters, dict) else {}
        return self._parameters[run_at]

    @staticmethod
    def _info_html(stored, parameters: dict | None = None) -> str:
        from ..backend.photos.exif import camera_label

        meta = stored.result.metadata
        name = answer_name(stored.photo, stored.result.kind)
        rows = [f"<b>{as_html(name)}</b>"]
        if stored.result.error:
            rows.append(f"Not answered: {as_html(stored.result.error)}")
        hint = stored.result.hint
        if hint is not None:
            rows.append(f"Hint: {as_html(hint.shown)}")
        if (parameters or {}).get("candidates"):
            rows.append(f"Candidates: {as_html(parameters['candidates'])}")
        if meta is not None:
            if meta.timestamp:
                rows.append(f"Taken {as_html(meta.timestamp)}")
            camera = camera_label(meta.camera_make, meta.camera_model)
            if camera:
                rows.append(f"Camera: {as_html(camera)}")
            if meta.has_gps:
                rows.append(f"EXIF position: {meta.latitude:.5f}, {meta.longitude:.5f}")
            if meta.direction is not None:
                rows.append(f"Facing {meta.direction:.0f}°")
        for area in stored.areas:
            rows.append(f"{100 * area.level:.0f} % confidence area: {area.area_km2:,.0f} km²")
        return "<br>".join(rows)

    @staticmethod
    def _regions_text(stored) -> str:
        parts = []
        for level, title in (("country", "Countries"), ("admin1", "Regions")):
            ranked = [r for r in stored.regions if r.level == level][:5]
            if ranked:
                named = ", ".join(f"{as_html(r.region)} {100 * r.probability:.0f} %" for r in ranked)
                parts.append(f"<b>{title}:</b> {named}")
        return "<br>".join(parts)

    def _candidate(self):
        stored = self.current()
        rows = self.candidates.selectionModel().selectedRows() if stored else []
        if not stored or not stored.result.candidates:
            return None
        return stored.result.candidates[rows[0].row() if rows else 0]

    def _candidate_chosen(self) -> None:
        candidate = self._candidate()
        if candidate is not None:
            self.zoom_to(candidate.lat, candidate.lon)

    def zoom_to(self, lat: float, lon: float, half_side: float = 1.0) -> None:
        """Centre the map on a place (a 2° box) and flash it."""
        canvas = self.iface.mapCanvas()
        crs = canvas.mapSettings().destinationCrs()
        transform = QgsCoordinateTransform(WGS84, crs, QgsProject.instance())
        box = QgsRectangle(  # kept on the Earth: a box past the poles or ±180° projects off the world
            max(lon - half_side, -180.0),
            max(lat - half_side, -90.0),
            min(lon + half_side, 180.0),
            min(lat + half_side, 90.0),
        )
        try:
            canvas.setExtent(transform.transformBoundingBox(box))
        except Exception:  # outside the map projection's domain: leave the view
            return
        canvas.refresh()
        canvas.flashGeometries([QgsGeometry.fromPointXY(QgsPointXY(lon, lat))], WGS84)

    def copy_coordinates(self) -> None:
        candidate = self._candidate()
        if candidate is not None:
            QApplication.clipboard().setText(f"{candidate.lat:.6f}, {candidate.lon:.6f}")

    def open_photo(self) -> None:
        stored = self.current()
        from ..backend.workbench.run_file import photo_file

        found = photo_file(stored) if stored is not None else None
        if found:
            QDesktopServices.openUrl(QUrl.fromLocalFile(found))

    # -- only this answer on the map -------------------------------------------------------------

    def _run_layers(self):
        """The layers of this run on the map: tagged with its output when the plugin added them, or read
        from its GeoPackage when someone added them by hand."""
        key = os.path.abspath(self.gpkg)
        for layer in QgsProject.instance().mapLayers().values():
            if layer.customProperty(OUTPUT_PROPERTY) == key or str(layer.source()).startswith(self.gpkg + "|"):
                yield layer

    def show_only_this(self, on: bool) -> None:
        """Filter the run's vector layers to this answer and hide other answers' rasters (or undo it)."""
        self.only_this = on
        stored = self.current()
        root = QgsProject.instance().layerTreeRoot()
        for layer in self._run_layers():
            if isinstance(layer, QgsVectorLayer) and layer.fields().indexOf("photo") >= 0:
                quoted = "'" + stored.photo.replace("'", "''") + "'" if stored else "''"
                layer.setSubsetString(f'"photo" = {quoted}' if on and stored else "")
            elif isinstance(layer, QgsRasterLayer):
                node = root.findLayer(layer.id())
                answer = layer.customProperty(ANSWER_PROPERTY)
                if node is not None and answer:
                    node.setItemVisibilityChecked(not on or stored is None or answer == stored.photo)
        self.iface.mapCanvas().refresh()

    # -- how likely here? ------------------------------------------------------------------------

    def _likely_tool(self, on: bool) -> None:
        canvas = self.iface.mapCanvas()
        if on:
            self.tool = QgsMapToolEmitPoint(canvas)
            self.tool.canvasClicked.connect(self.likely_at_map_point)
            canvas.setMapTool(self.tool)
            self.likely.setText("Click the map where you think the photo was taken.")
        else:
            if self.tool is not None:
                canvas.unsetMapTool(self.tool)
                self.tool = None
            self._drop_marker()

    def _drop_marker(self) -> None:
        if self.marker is not None:
            self.iface.mapCanvas().scene().removeItem(self.marker)
            self.marker = None

    def _mark(self, lat: float, lon: float) -> None:
        """A cross where the user clicked, until the tool is turned off or another answer is chosen."""
        canvas = self.iface.mapCanvas()
        crs = canvas.mapSettings().destinationCrs()
        point = QgsCoordinateTransform(WGS84, crs, QgsProject.instance()).transform(QgsPointXY(lon, lat))
        if self.marker is None:
            self.marker = QgsVertexMarker(canvas)
            self.marker.setIconType(QgsVertexMarker.IconType.ICON_CROSS)
            self.marker.setIconSize(18)
            self.marker.setPenWidth(3)
            self.marker.setColor(Qt.GlobalColor.magenta)
        self.marker.setCenter(point)

    def likely_at_map_point(self, point, button=None) -> None:
        crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        wgs84 = QgsCoordinateTransform(crs, WGS84, QgsProject.instance()).transform(point)
        self.likely_at(wgs84.y(), wgs84.x())

    def likely_at(self, lat: float, lon: float) -> None:
        """Judge a spot for the current answer, in a background task; the answer shows below the buttons."""
        from ..backend.workbench.run_file import read_provenance, run_area
        from ..core.session import load_settings

        stored = self.current()
        if stored is None or stored.result.feature is None:
            return
        self._mark(lat, lon)
        self._say_likely(f"Working out how likely {lat:.4f}, {lon:.4f} is…")
        area = run_area(read_provenance(self.gpkg))
        self.task = LikelyTask(load_settings(), stored.result, lat, lon, area)
        self.task.stage.connect(
            lambda event: self._say_likely(f"Working out how likely {lat:.4f}, {lon:.4f} is… {event.text()}")
        )
        self.task.taskCompleted.connect(self._likely_finished)
        self.task.taskTerminated.connect(self._likely_finished)
        QgsApplication.taskManager().addTask(self.task)

    def _likely_finished(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        if task.found is None:
            self._say_likely(f"Could not work it out: {task.error or 'cancelled'}")
            QgsMessageLog.logMessage(task.error, "GeoCLIP")
            return
        self._say_likely(likely_text(task.found))
        self.likelyDone.emit(task.found)

    def _say_likely(self, text: str) -> None:
        """The answer under the buttons, scrolled into view (the panel is often shorter than its content)."""
        self.likely.setText(text)
        QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(self.likely))

    # -- the report ------------------------------------------------------------------------------

    def export_report(self, path: str | None = None) -> tuple[Path, Path] | None:
        """The case report of the current answer: PDF through a print layout, and HTML beside it."""
        from ..map.case_report import ReportError, export_case_report

        stored = self.current()
        if stored is None:
            return None
        if not path:
            from ..core.session import dialog_folder

            name = Path(stored.photo).stem.replace(" ", "_") + "_report.pdf"
            default = str(Path(dialog_folder(self.gpkg)) / name)
            path, _ = QFileDialog.getSaveFileName(self, "Case report", default, "PDF (*.pdf)")
            if not path:
                return None
        try:
            made = export_case_report(self.gpkg, stored.photo, path)
        except (ReportError, OSError) as exc:
            self.iface.messageBar().pushWarning("GeoCLIP", f"No report: {as_html(exc)}")
            return None
        # the file names only: a whole path wraps out of the message bar; the log keeps where they are
        QgsMessageLog.logMessage(f"case report written: {made[0]} and {made[1]}", "GeoCLIP")
        self.iface.messageBar().pushSuccess(
            "GeoCLIP", f"Report written: {as_html(made[0].name)} and {as_html(made[1].name)}"
        )
        return made
