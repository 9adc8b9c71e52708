"""Text from outside (photo names, EXIF, place and region names, received files) in Qt widgets: shown
as text, never as markup. Qt guesses that a label or tooltip string is rich text when it looks like HTML
(``Qt::mightBeRichText``), so a photo named ``<img src=…>.png`` would otherwise become live markup."""

from __future__ import annotations

import html

from qgis.PyQt.QtCore import Qt


def as_html(value) -> str:
    """``value`` escaped for a rich-text label, with characters that act instead of showing (terminal
    escapes, bidi overrides) written out."""
    from ..backend.shown_text import visible_text

    return html.escape(visible_text(value), quote=False)  # element text only, never an attribute


def tooltip(value) -> str:
    """A tooltip that shows ``value`` literally: escaped, inside a tag so Qt treats it as rich text and
    turns the entities back into the characters."""
    return f"<span>{as_html(value)}</span>"


def show_message(parent, title: str, text: str, warning: bool = False) -> None:
    """A modal message box whose text is plain text (QMessageBox guesses rich text from the look of it,
    and these texts quote file names, errors and what received files hold)."""
    from qgis.PyQt.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Warning if warning else QMessageBox.Icon.Information, title, "", parent=parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    box.exec()


def bar_text(value) -> str:
    """Text for QGIS's message bar, which shows HTML: outside text escaped."""
    return as_html(value)
