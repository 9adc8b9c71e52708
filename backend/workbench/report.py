"""A case report: one self-contained HTML file documenting how photos were geolocated.

Per photo (or text query, or fused set): the photo itself as an embedded JPEG thumbnail, its EXIF
(time, camera, GPS, direction), the ranked candidates with place names and their distance to the
EXIF position, the probability by region, the sizes of the confidence areas, any hypotheses the
analyst tested, and the provenance needed to repeat the work: model, sha256 of every weight file,
engine version, parameters, times and the photo's sha256.

The content is a plain :class:`ReportData` (dataclasses, no HTML), so the same content can feed
another layout. :func:`render_html` writes it as one HTML page with inline CSS and the images as
``data:`` URIs: the file can be mailed or archived alone and opens offline. Every string that comes
from data (photo names, EXIF text, place names, parameters) is escaped.

A report of a run's GeoPackage (which may come from someone else) embeds only a photo whose bytes have
the sha256 the run recorded (:func:`.run_file.photo_file`), and says what it left out of the file and
why. :func:`write_html_report` never overwrites a file it did not make (its ``generator`` mark) nor the
GeoPackage it reads.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..earth.confidence import ConfidenceArea
from ..earth.likelihood import Likelihood
from ..earth.places import PLACES_CREDIT, nearest_places
from ..earth.regions import COUNTRY, RegionRow
from ..errors import GeoCLIPError
from ..geo import haversine_km
from ..photos.exif import camera_label
from ..results import RADIUS_MASS, AnswerKind, Candidate, PhotoMetadata, PhotoResult
from ..shown_text import visible_text
from ..store.weights import backbone_provenance, not_vit_l14_warning, weight_checksums
from ..version import __version__

GEOCLIP_CREDIT = (
    "GeoCLIP: Vivanco Cepeda, Nayak, Shah. GeoCLIP: Clip-Inspired Alignment between Locations "
    "and Images for Effective Worldwide Geo-localization. NeurIPS 2023"
)
THUMBNAIL_SIDE = 480  # px, the longer side
REGION_ROWS = 10  # per level, in the report
GENERATOR = "GeoCLIP for QGIS"  # every report's <meta name="generator">: the mark of a file we may overwrite
PHOTO_NOT_AVAILABLE = (
    "the photo is not available: no file at the path the run recorded, nor under the GeoPackage's folder, "
    "has the bytes it answered (sha256)"
)


NOTES_SHOWN = 100  # rows left out that a report lists one by one (then how many more)


class ReportFileError(GeoCLIPError):
    """The report cannot be written where asked (a file it did not make, its own input, a folder)."""


@dataclass(frozen=True)
class ReportCandidate:
    rank: int
    probability: float  # 0..1
    lat: float
    lon: float
    place: str = ""  # nearest populated place
    region: str = ""  # its admin1 region
    country: str = ""
    place_km: float | None = None  # from the candidate to that place
    truth_km: float | None = None  # from the photo's EXIF position, when it has one
    radius_km: float | None = None  # a distinct place's circle holding 90 % of it (None: a gallery point)
    refined: bool = False  # moved from the gallery point it was found at (lat, lon are the refined point)


@dataclass
class ReportAnswer:
    """Everything the report says about one photo, text query or fused set."""

    photo: str  # as the run named it (a path, "text: ...", "fused: ...")
    candidates: list[ReportCandidate] = field(default_factory=list)
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)
    photo_sha256: str | None = None
    metadata: PhotoMetadata | None = None
    truth_place: str = ""  # the place nearest the EXIF position
    regions: list[RegionRow] = field(default_factory=list)
    confidence: list[ConfidenceArea] = field(default_factory=list)
    hypotheses: list[Likelihood] = field(default_factory=list)
    error: str | None = None  # why the photo has no answer
    notes: list[str] = field(default_factory=list)
    kind: AnswerKind = AnswerKind.PHOTO  # what the answer answers
    hint: str = ""  # the text hint the answer was steered by, with its weight, as words ("" for none)


@dataclass
class Provenance:
    model: str  # the engine's model name (heads, the backbone's folder, precision)
    weights: dict[str, str] = field(default_factory=dict)  # file -> sha256
    engine_version: str = __version__
    parameters: dict[str, str] = field(default_factory=dict)  # top-k, area, precision, cell sizes, ... in words
    run_at: str = ""  # when the answers were computed
    backbone: str = ""  # the CLIP backbone's architecture in words; "" when the run did not record it
    vit_l14: bool | None = None  # whether that backbone is ViT-L/14; None when not recorded

    @property
    def backbone_text(self) -> str:
        return self.backbone or "architecture not recorded"

    @property
    def warning(self) -> str | None:
        """The not-ViT-L/14 warning (the same words as the dock's and the Models dialog's), when it applies."""
        if self.vit_l14 is not False:
            return None
        return not_vit_l14_warning(self.backbone or None, "The CLIP backbone these answers were computed with")

    def items(self) -> list[tuple[str, str]]:
        """The provenance as (item, value) rows, the same in every report."""
        rows = [
            ("Model (heads + backbone folder, precision)", self.model),
            ("CLIP backbone", self.backbone_text),
        ]
        if self.warning:
            rows.append(("Warning", self.warning))
        return rows + [("Engine version", self.engine_version), ("Answers computed", self.run_at)]


@dataclass
class ReportData:
    title: str
    answers: list[ReportAnswer]
    provenance: Provenance
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    credits: list[str] = field(default_factory=lambda: [GEOCLIP_CREDIT, PLACES_CREDIT])
    notes: list[str] = field(default_factory=list)  # what the file held that the report could not use, and why


# ------------------------------------------------------------------------------------ building data


def shown_notes(notes: Sequence[str], limit: int) -> list[str]:
    """The first ``limit`` notes, and how many more there are."""
    more = len(notes) - limit
    return list(notes[:limit]) + ([f"… and {more} more"] if more > 0 else [])


def setting_text(value) -> str:
    """A run setting in words: none, yes, no, numbers as numbers, lists and tables spelled out (never
    Python's None/False or JSON)."""
    if value is None or value == "" or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(setting_text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {setting_text(v)}" for k, v in value.items())
    return str(value)


def thumbnail_jpeg(photo, side: int = THUMBNAIL_SIDE, quality: int = 85) -> bytes:
    """A JPEG of the photo (a path or a PIL image), upright, at most ``side`` px on its longer side."""
    from ..photos.loader import open_photo

    image = open_photo(photo).image.copy()
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def report_candidates(
    candidates: Sequence[Candidate], truth: tuple[float, float] | None = None, min_population: int = 0
) -> list[ReportCandidate]:
    """Candidates with their nearest place and, given the photo's true (lat, lon), the distance to it."""
    if not candidates:
        return []
    found = nearest_places([c.lat for c in candidates], [c.lon for c in candidates], min_population)
    return [
        ReportCandidate(
            c.rank,
            c.probability,
            c.lat,
            c.lon,
            p.name,
            p.region,
            p.country,
            p.distance_km,
            float(haversine_km(truth[0], truth[1], c.lat, c.lon)) if truth else None,
            c.radius_km,
            c.gallery_lat is not None and (c.gallery_lat, c.gallery_lon) != (c.lat, c.lon),
        )
        for c, p in zip(candidates, found)
    ]


def answer_from_result(
    result: PhotoResult,
    thumbnail: bool = True,
    regions: Iterable[RegionRow] = (),
    confidence: Iterable[ConfidenceArea] = (),
    hypotheses: Iterable[Likelihood] = (),
) -> ReportAnswer:
    """A :class:`ReportAnswer` from an engine result; the thumbnail is read from the photo's file
    when there is one (text queries and fused sets have none)."""
    truth = (result.exif_lat, result.exif_lon) if result.exif_lat is not None else None
    answer = ReportAnswer(
        result.photo,
        report_candidates(result.candidates, truth),
        photo_sha256=result.sha256,
        metadata=result.metadata,
        regions=list(regions),
        confidence=list(confidence),
        hypotheses=list(hypotheses),
        error=result.error,
        kind=result.kind,
        hint=result.hint.shown if result.hint else "",
    )
    if truth:
        answer.truth_place = nearest_places([truth[0]], [truth[1]])[0].label()
    if thumbnail and result.kind is AnswerKind.PHOTO and os.path.isfile(result.photo):
        try:
            answer.thumbnail_jpeg = thumbnail_jpeg(result.photo)
        except Exception as exc:  # a photo that cannot be shown still gets its report
            answer.notes.append(f"no thumbnail: {exc}")
    return answer


def provenance_for(engine, parameters: dict | None = None, run_at: str = "") -> Provenance:
    """Provenance of answers made by ``engine`` (its model name and the checksums of its weights)."""
    backbone = backbone_provenance(engine.clip_dir)
    return Provenance(
        engine.model_name,
        weight_checksums(engine.heads_files, engine.clip_dir),
        parameters={str(k): setting_text(v) for k, v in (parameters or {}).items()},
        run_at=run_at,
        backbone=backbone.get("backbone", ""),
        vit_l14=bool(backbone["backbone_vit_l14"]) if backbone else None,
    )


def report_from_geopackage(
    path: str | os.PathLike, photos: Sequence[str] | None = None, title: str | None = None
) -> ReportData:
    """The report of a run's GeoPackage (all its answers, or those of ``photos``): candidates, regions,
    confidence areas and provenance as the file keeps them; thumbnails of the photos found on disk with
    the bytes the run answered (:func:`.run_file.photo_file`). Rows the report cannot use are left out
    and listed in ``notes``."""
    from .run_file import photo_file, read_answers, read_provenance

    skipped: list[str] = []
    answers, found = [], read_answers(path, list(photos) if photos else None, skipped)
    for stored in found:
        answer = answer_from_result(stored.result, thumbnail=False, regions=stored.regions, confidence=stored.areas)
        if stored.result.kind is AnswerKind.PHOTO:
            photo = photo_file(stored)
            if photo is None:
                answer.notes.append(PHOTO_NOT_AVAILABLE)
            else:
                try:
                    answer.thumbnail_jpeg = thumbnail_jpeg(photo)
                except Exception as exc:  # a photo that cannot be shown still gets its report
                    answer.notes.append(f"no thumbnail: {exc}")
        answers.append(answer)
    run_times = {stored.run_at for stored in found}
    record = read_provenance(path, run_times.pop() if len(run_times) == 1 else None, skipped)  # the answers' run
    provenance = Provenance(
        record.get("model", ""),
        dict(record.get("weights_sha256", {})),
        record.get("engine_version") or __version__,
        {str(k): setting_text(v) for k, v in record.get("parameters", {}).items()},
        record.get("run_at", ""),
        record.get("backbone", ""),
        record.get("backbone_vit_l14"),
    )
    data = ReportData(title or f"GeoCLIP case report: {Path(path).name}", answers, provenance)
    data.notes = skipped
    return data


# ------------------------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-top: 2px solid #444; padding-top: .6em; word-break: break-all; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .4em 0; font-size: .9em; }
th, td { border: 1px solid #bbb; padding: .2em .5em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.photo { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.photo img { max-width: 480px; border: 1px solid #888; }
.code { font-family: monospace; font-size: .85em; word-break: break-all; }
.error { color: #a00; } .muted { color: #666; font-size: .85em; }
"""


def _e(value) -> str:
    return html.escape(visible_text(value), quote=True)


def _num(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}{suffix}"


def _percent(share: float | None, digits: int = 2) -> str:
    """A share as a percentage; tiny and near-certain values say so instead of rounding to 0 or 100."""
    if share is None or share != share:
        return ""
    floor = 10.0**-digits
    if 0 < 100 * share < floor:
        return f"< {floor:g} %"
    if 100 - floor < 100 * share < 100:
        return f"> {100 - floor:g} %"
    return f"{100 * share:.{digits}f} %"


def _table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _exif(metadata: PhotoMetadata | None, truth_place: str) -> str:
    if metadata is None:
        return '<p class="muted">No EXIF read.</p>'
    gps = ""
    if metadata.has_gps:
        gps = f"{metadata.latitude:.6f}, {metadata.longitude:.6f}"
        if truth_place:
            gps += f" (near {truth_place})"
    camera = camera_label(metadata.camera_make, metadata.camera_model)
    rows = [
        ("Time (camera clock)", metadata.timestamp or ""),
        ("Camera", camera),
        ("GPS", gps or "none"),
        ("Altitude", _num(metadata.altitude, 1, " m")),
        ("Direction", _num(metadata.direction, 1, "°")),
    ]
    return _table(("EXIF", "value"), rows)


def _answer_html(answer: ReportAnswer) -> str:
    parts = [f"<h2>{_e(answer.photo)}</h2>", '<div class="photo">']
    if answer.thumbnail_jpeg:
        encoded = base64.b64encode(answer.thumbnail_jpeg).decode("ascii")
        parts.append(f'<img alt="{_e(answer.photo)}" src="data:image/jpeg;base64,{encoded}">')
    parts.append(f"<div>{_exif(answer.metadata, answer.truth_place)}")
    if answer.photo_sha256:
        parts.append(f'<p class="code">sha256 {_e(answer.photo_sha256)}</p>')
    parts.append("</div></div>")
    if answer.error:
        parts.append(f'<p class="error">Not answered: {_e(answer.error)}</p>')
    if answer.hint:
        parts.append(f"<p>Hint: {_e(answer.hint)}</p>")
    if answer.candidates:
        truth = any(c.truth_km is not None for c in answer.candidates)
        radius = any(c.radius_km is not None for c in answer.candidates)  # distinct places, not gallery points
        headers = ["rank", "probability", "lat", "lon", "nearest place", "km to place", "region", "country"]
        headers += [f"radius km ({100 * RADIUS_MASS:.0f} %)", "refined from its gallery point"] if radius else []
        headers += ["km to EXIF position"] if truth else []
        rows = []
        for c in answer.candidates:
            row = [
                c.rank,
                _percent(c.probability),
                f"{c.lat:.5f}",
                f"{c.lon:.5f}",
                c.place,
                _num(c.place_km, 1),
                c.region,
                c.country,
            ]
            row += [_num(c.radius_km, 1), "yes" if c.refined else "no"] if radius else []
            rows.append(row + ([_num(c.truth_km, 1)] if truth else []))
        numeric = (0, 1, 2, 3, 5) + ((8,) if radius else ()) + ((len(headers) - 1,) if truth else ())
        parts += ["<h3>Candidates</h3>", _table(headers, rows, numeric=numeric)]
    if answer.regions:
        parts.append("<h3>Probability by region</h3>")
        for level in dict.fromkeys(r.level for r in answer.regions):
            chosen = [r for r in answer.regions if r.level == level][:REGION_ROWS]
            if level == COUNTRY:
                parts.append(
                    _table(
                        ("rank", "country", "probability"),
                        [(r.rank, r.region, _percent(r.probability)) for r in chosen],
                        numeric=(0, 2),
                    )
                )
            else:
                parts.append(
                    _table(
                        ("rank", level, "country", "probability"),
                        [(r.rank, r.region, r.country, _percent(r.probability)) for r in chosen],
                        numeric=(0, 3),
                    )
                )
    if answer.confidence:
        rows = [
            (f"{100 * a.level:g} %", _num(a.area_km2, 1), _percent(a.mass), a.parts, "yes" if a.refined else "no")
            for a in answer.confidence
        ]
        parts += [
            "<h3>Confidence areas</h3>",
            _table(
                ("level", "area km²", "probability inside", "separate parts", "local rasters used"),
                rows,
                numeric=(1, 2, 3),
            ),
        ]
    if answer.hypotheses:
        radii = list(answer.hypotheses[0].masses)
        headers = ["hypothesis", "lat", "lon"] + [f"within {r:g} km" for r in radii]
        headers += ["density vs best", "cell rank", "smallest confidence area holding it"]
        rows = []
        for h in answer.hypotheses:
            masses = [_percent(h.masses.get(r, 0.0)) for r in radii]
            rank = f"{h.rank:,} of {h.cells:,}" if h.rank is not None else "outside the area"
            rows.append(
                [
                    h.id,
                    f"{h.lat:.5f}",
                    f"{h.lon:.5f}",
                    *masses,
                    f"{h.density_ratio:.3g}",
                    rank,
                    _percent(h.credible_level, 1),
                ]
            )
        parts += ["<h3>How likely here?</h3>", _table(headers, rows, numeric=range(1, len(headers)))]
    for note in answer.notes:
        parts.append(f'<p class="muted">{_e(note)}</p>')
    return "\n".join(parts)


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string (no external files)."""
    p = data.provenance
    provenance = [
        "<h2>Provenance</h2>",
        _table(("item", "value"), [*p.items(), ("Report written", data.created_at)]),
    ]
    if p.parameters:
        provenance.append(_table(("parameter", "value"), sorted(p.parameters.items())))
    if p.weights:
        provenance.append(_table(("weight file", "sha256"), sorted(p.weights.items())))
    credits = "".join(f"<li>{_e(c)}</li>" for c in data.credits)
    warning = f'<p class="error"><b>⚠ {_e(p.warning)}</b></p>\n' if p.warning else ""
    if data.notes:
        items = "".join(f"<li>{_e(note)}</li>" for note in shown_notes(data.notes, NOTES_SHOWN))
        warning += f'<p class="error">What this report leaves out of the file, and why:</p><ul>{items}</ul>\n'
    body = "\n".join(_answer_html(a) for a in data.answers)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{GENERATOR} {_e(__version__)}">\n<title>{_e(data.title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{_e(data.title)}</h1>\n"
        f'<p class="muted">{len(data.answers)} answer(s); written {_e(data.created_at)} by GeoCLIP for QGIS '
        f"{_e(p.engine_version)}.</p>\n{warning}{body}\n{''.join(provenance)}\n<h2>Credits</h2><ul>{credits}</ul>\n"
        "</body>\n</html>\n"
    )


def _made_by_us(path: Path) -> bool:
    """Whether an existing file is a report we wrote (its generator mark; an earlier version's opening and
    signature line), or empty: the only files a report may replace."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return False
    if not head:
        return True
    if f'<meta name="generator" content="{GENERATOR} ' in head:
        return True
    legacy = '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>'
    return head.startswith(legacy) and f"by {GENERATOR} " in head


def check_report_path(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Refuse, with a :class:`ReportFileError`, a report path that is a symbolic link, a folder, the file the
    report is made from, or an existing file that is not a report we wrote."""
    path = Path(path)
    if path.is_symlink():  # a report is never a link: nothing is written through one, nor replaces one
        raise ReportFileError(f"{path} is a symbolic link; a report neither follows nor replaces one: name a file")
    if path.is_dir():
        raise ReportFileError(f"cannot write the report to {path}: it is a folder; name a file")
    if not path.exists():
        return path
    if source is not None:
        try:
            same = os.path.samefile(path, source)
        except OSError:
            same = False
        if same:
            raise ReportFileError(f"{path} is the file the report is made from; name another file for the report")
    if not _made_by_us(path):
        raise ReportFileError(
            f"{path} exists and is not a report GeoCLIP wrote; refusing to overwrite it (name another file)"
        )
    return path


def write_html_report(data: ReportData, path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Write the report; the file is complete or absent (written beside, then renamed). It never replaces
    ``source`` (the GeoPackage it was made from) nor a file that is not a report we wrote
    (:func:`check_report_path`)."""
    import tempfile

    path = check_report_path(path, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render_html(data))
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    return path
