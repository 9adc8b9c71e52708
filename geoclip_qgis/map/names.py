"""What a run and its answers are called: the QGIS expression that names an answer on the map (labels,
map tips, the identify list), its Python twin for the layer tree's groups, a run's title, and a place's
radius in words.

Kept apart from the styles and the layer tree, which both name answers the same way."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsVectorLayer

from ..backend.results import AnswerKind

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


def radius_text(radius_km: float | None) -> str:
    """A place's radius as the panel and the report say it: '± 7 km', '± 3.3 km'; '' for a gallery point."""
    if radius_km is None:
        return ""
    return f"± {radius_km:.1f} km" if radius_km < 10 else f"± {radius_km:,.0f} km"
