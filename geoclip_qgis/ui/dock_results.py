"""The dock's Results tab (ResultsTab): the last run's summary with a link to its folder, "Look at each
answer…", the photos not answered with their reasons, and the top-1 error when photos carried GPS.
It only shows what it is given; the dock's Runner fills it when a run ends."""

from __future__ import annotations

import html
from pathlib import Path

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QEvent, QObject, Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.plain_text import tooltip
from ..core.tasks import LOG_TAG


class _WidthWatcher(QObject):
    """Calls ``changed`` whenever ``widget`` gets a new width."""

    def __init__(self, widget, changed):
        super().__init__(widget)
        self.changed = changed
        widget.installEventFilter(self)

    def eventFilter(self, watched, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Resize and event.size().width() != event.oldSize().width():
            self.changed()
        return False


class ResultsTab(QWidget):
    """The Results tab's page: its widgets, and the methods that fill them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.summary = QLabel("No run yet.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.summary.setOpenExternalLinks(False)
        self.summary.linkActivated.connect(lambda link: QDesktopServices.openUrl(QUrl(link)))
        layout.addWidget(self.summary)
        self.judge_button = QPushButton("Look at each answer…")
        self.judge_button.setToolTip(
            "The results panel: each photo with its EXIF, candidates and place names, regions, confidence areas; "
            "how likely a spot is; a PDF case report"
        )
        self.judge_button.setEnabled(False)
        layout.addWidget(self.judge_button)

        self.failures_box = QGroupBox("Photos not answered")
        failures_layout = QVBoxLayout(self.failures_box)
        self.failures = QTableWidget(0, 2)
        self.failures.setHorizontalHeaderLabels(["Photo", "Reason"])
        self.failures.verticalHeader().setVisible(False)
        self.failures.setWordWrap(True)
        self.failures.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.failures.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.failures.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.failures.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.failures.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.failures.horizontalHeader().sectionResized.connect(lambda *_: self.fit_failures())
        # A stretched column gets its width when the hidden Results tab is first shown or the dock is
        # resized, without sectionResized: re-wrap the reasons then too.
        self._failures_width = _WidthWatcher(self.failures.viewport(), self.fit_failures)
        failures_layout.addWidget(self.failures)
        self.failures_box.setVisible(False)
        layout.addWidget(self.failures_box)
        self.accuracy_box = QGroupBox("Top-1 error")
        accuracy_layout = QVBoxLayout(self.accuracy_box)
        self.accuracy = QTableWidget(0, 2)
        self.accuracy.setHorizontalHeaderLabels(["Top-1 answer", "Photos"])
        self.accuracy.verticalHeader().setVisible(False)
        self.accuracy.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.accuracy.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.accuracy.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        accuracy_layout.addWidget(self.accuracy)
        self.accuracy_box.setVisible(False)
        layout.addWidget(self.accuracy_box)

        layout.addStretch(1)

    def show_run(self, title: str, result, output: str) -> None:
        """A finished run: ``title`` names it, ``output`` is its GeoPackage ("" if none)."""
        outcome, summary = result.outcome, result.outcome.summary
        lines = [f"<b>{html.escape(title)}</b>"]
        answered = f"{summary.answered} of {outcome.total} answered"
        if summary.failed_count:
            answered += f", {summary.failed_count} not answered (below)"
        lines.append(answered + ".")
        for reason, count in summary.skipped.most_common():
            lines.append(f"Skipped {count}: {html.escape(reason)}.")
        lines += [html.escape(note) for note in summary.notes]
        per_answer = summary.seconds_per_answer
        if per_answer:
            lines.append(
                f"Took {summary.seconds:.1f} s: {summary.load_seconds:.1f} s loading the model and caches, "
                f"then {per_answer:.2f} s per answer."
            )
        if output:
            folder = QUrl.fromLocalFile(str(Path(output).parent)).toString()
            lines.append(f"Written to {html.escape(Path(output).name)} (<a href='{folder}'>open its folder</a>).")
        self.summary.setText("<br>".join(lines))
        self.summary.setToolTip(tooltip(output))
        self.show_accuracy(summary.accuracy())
        self.show_failures(outcome.failures)

    def show_project_runs(self, paths: list[str]) -> None:
        """A reopened project's runs, the latest first (none: "No run yet.")."""
        if not paths:
            self.summary.setText("No run yet.")
            self.judge_button.setEnabled(False)
            return
        more = f" (and {len(paths) - 1} earlier)" if len(paths) > 1 else ""
        self.summary.setText(
            f"This project holds the run <b>{html.escape(Path(paths[0]).name)}</b>{html.escape(more)}. "
            "Look at each answer… opens it in the results panel."
        )
        self.summary.setToolTip(tooltip(paths[0]))
        self.judge_button.setEnabled(True)

    def show_accuracy(self, table) -> None:
        self.accuracy_box.setVisible(bool(table))
        if not table:
            return
        from ..backend.geo import THRESHOLDS_KM

        rows = [(f"within {km} km", f"{table[f'acc_{km}km']:.1f} %") for km in THRESHOLDS_KM]
        rows.append(("median error", f"{table['median_km']:,.0f} km"))
        if table.get("acc_country") is not None:
            rows.append(("right country", f"{table['acc_country']:.1f} %"))
        self.accuracy_box.setTitle(f"Top-1 error ({table['photos']} photos with GPS)")
        self.accuracy.setRowCount(len(rows))
        for row, (label, value) in enumerate(rows):
            self.accuracy.setItem(row, 0, QTableWidgetItem(label))
            cell = QTableWidgetItem(value)
            cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.accuracy.setItem(row, 1, cell)
        self.accuracy.resizeRowsToContents()
        height = self.accuracy.horizontalHeader().height() + sum(self.accuracy.rowHeight(r) for r in range(len(rows)))
        self.accuracy.setFixedHeight(height + 2 * self.accuracy.frameWidth())

    def show_failures(self, failures) -> None:
        """The photos not answered, each with its reason; each is written to the GeoCLIP log too."""
        self.failures.setRowCount(len(failures))
        for row, (photo, reason) in enumerate(failures):
            name = QTableWidgetItem(Path(photo).name or photo)
            name.setToolTip(tooltip(photo))
            why = QTableWidgetItem(reason)
            why.setToolTip(tooltip(reason))
            self.failures.setItem(row, 0, name)
            self.failures.setItem(row, 1, why)
            QgsMessageLog.logMessage(f"not answered: {photo}: {reason}", LOG_TAG, Qgis.MessageLevel.Warning)
        self.failures_box.setTitle(f"Photos not answered ({len(failures)})")
        self.failures_box.setVisible(bool(failures))
        self.fit_failures()

    def fit_failures(self) -> None:
        """Reasons wrap over as many lines as they need; the table is as tall as its first ten rows."""
        self.failures.resizeRowsToContents()
        rows = min(self.failures.rowCount(), 10)
        shown = sum(self.failures.rowHeight(r) for r in range(rows))
        self.failures.setFixedHeight(self.failures.horizontalHeader().height() + shown + 2 * self.failures.frameWidth())
