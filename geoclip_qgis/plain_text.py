"""Text from outside (photo names, EXIF, place and region names, received files) in Qt widgets: shown
as text, never as markup. Qt guesses that a label or tooltip string is rich text when it looks like HTML
(``Qt::mightBeRichText``), so a photo named ``<img src=…>.png`` would otherwise become live markup."""

from __future__ import annotations

import html


def as_html(value) -> str:
    """``value`` escaped for a rich-text label, with characters that act instead of showing (terminal
    escapes, bidi overrides) written out."""
    from .backend.shown_text import visible_text

    return html.escape(visible_text(value))


def tooltip(value) -> str:
    """A tooltip that shows ``value`` literally: escaped, inside a tag so Qt treats it as rich text and
    turns the entities back into the characters."""
    return f"<span>{as_html(value)}</span>"
