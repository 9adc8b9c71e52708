"""What the reports say in words: the backbone by its architecture (with the not-ViT-L/14 warning), run
settings as words, the camera named once, a legend of only what the map holds, and text from outside
(photo names, EXIF) shown as written: never markup, never a terminal escape, never a QGIS expression."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import unicodedata

import numpy as np
import pytest
from PIL import ExifTags, Image


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


SECRET_VARIABLE = "GEOCLIP_REPORT_TEST_SECRET"
SECRET = "s3cret-value-42"
HOSTILE_MAKE = f"[% env('{SECRET_VARIABLE}') %]"
HOSTILE_NAME = "\x1b[31m<script>odd.jpg"  # a terminal colour escape and a tag in a real file name


# ------------------------------------------------------------------------------------------ words


@pytest.mark.parametrize(
    "make, model, shown",
    [
        ("Canon", "Canon EOS 40D", "Canon EOS 40D"),
        ("NIKON CORPORATION", "NIKON D70", "NIKON D70"),
        ("EASTMAN KODAK COMPANY", "KODAK EASYSHARE C340", "KODAK EASYSHARE C340"),
        ("Apple", "iPhone 12", "Apple iPhone 12"),
        ("X", "Xenon 3", "X Xenon 3"),  # a make that is only the start of the model's first word stays
        ("Canon", None, "Canon"),
        (None, "EOS 40D", "EOS 40D"),
        (None, None, ""),
    ],
)
def test_the_camera_is_named_once(make, model, shown):
    from geoclip_qgis.backend.photos.exif import camera_label

    assert camera_label(make, model) == shown


@pytest.mark.parametrize(
    "value, words",
    [
        (None, "none"),
        (False, "no"),
        (True, "yes"),
        (5, "5"),
        (0.25, "0.25"),
        (2.0, "2"),
        ("", "none"),
        ([10.5, -3, 20, 4.25], "10.5, -3, 20, 4.25"),
        ({"world_cell": 0.5, "regions": False, "world": None}, "world cell: 0.5; regions: no; world: none"),
        ("whole world", "whole world"),
    ],
)
def test_run_settings_are_words(value, words):
    from geoclip_qgis.backend.workbench.report import setting_text

    assert setting_text(value) == words


def test_characters_that_act_are_written_out():
    from geoclip_qgis.backend.shown_text import visible_text

    shown = visible_text("a\x1b[31mred\x07\r\u202egpj.exe\tb\nc")
    assert shown == "a\\x1b[31mred\\x07\\x0d\\u202egpj.exe\tb\nc"
    assert visible_text("Zürich 東京 👩\u200d💻") == "Zürich 東京 👩\u200d💻"  # letters and emoji stay


def test_the_import_message_names_the_backbone_by_its_architecture(tiny_clip, tmp_path):
    from geoclip_qgis.backend.model.model_state import ProblemCode, model_state
    from geoclip_qgis.backend.store import weights

    shutil.copytree(tiny_clip, tmp_path / weights.BACKBONE_FOLDER)
    said = weights.imported_message(["heads", weights.BACKBONE_FOLDER], into=tmp_path)
    architecture = weights.backbone_architecture(tiny_clip)
    assert not architecture.vit_l14
    assert said.startswith("Imported GeoCLIP's trained heads") and f"into {tmp_path}." in said
    assert f"a CLIP backbone ({architecture.description})" in said
    assert weights.BACKBONE_FOLDER not in said  # the folder's name says nothing about what it holds
    assert weights.not_vit_l14_warning(checkpoint="That backbone") in said
    # the dock's and the Models dialog's problem text is the same sentence
    problem = model_state(clip=tiny_clip).problem(ProblemCode.NOT_VIT_L14)
    assert problem.text == weights.not_vit_l14_warning(architecture.description)


# ----------------------------------------------------------------------------------- one real run


def _photo(path, make, model):
    image = Image.fromarray((np.random.default_rng(7).random((300, 400, 3)) * 255).astype("uint8"))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = model
    image.save(path, exif=exif)
    return str(path)


@pytest.fixture(scope="module")
def run_file(engine, tmp_path_factory):
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.results import Hint

    folder = tmp_path_factory.mktemp("report-text")
    hostile = _photo(folder / HOSTILE_NAME, HOSTILE_MAKE, "Model <b>9</b>")
    canon = _photo(folder / "canon.jpg", "Canon", "Canon EOS 40D")
    gpkg = folder / "run.gpkg"
    hint = Hint("a <b>harbour</b> town", 0.25)  # the analyst's own words, shown as text like any other
    execute(RunRequest(photos=[hostile, canon], top_k=3, output=str(gpkg), hint=hint), engine)
    return gpkg, hostile, canon


def test_the_run_records_what_its_backbone_is(run_file, tiny_clip):
    from geoclip_qgis.backend.store import weights
    from geoclip_qgis.backend.workbench.run_file import read_provenance

    record = read_provenance(run_file[0])
    assert record["backbone"] == weights.backbone_architecture(tiny_clip).description
    assert record["backbone"].startswith("a CLIP vision transformer with 2 layers")
    assert record["backbone_vit_l14"] is False


def _html_of(gpkg, photos=None) -> str:
    from geoclip_qgis.backend.workbench.report import render_html, report_from_geopackage

    return render_html(report_from_geopackage(gpkg, photos))


def _table(text: str, first_header: str) -> dict[str, str]:
    from test_workbench import _Tables

    page = _Tables()
    page.feed(text)
    return {row[0]: row[1] for row in next(t for t in page.tables if t[0][0] == first_header)[1:]}


def test_the_html_report_names_the_backbone_and_warns(run_file, tiny_clip):
    from geoclip_qgis.backend.store import weights
    from geoclip_qgis.backend.workbench.run_file import read_provenance

    gpkg, _, _ = run_file
    text = _html_of(gpkg)
    items = _table(text, "item")
    description = weights.backbone_architecture(tiny_clip).description
    assert items["CLIP backbone"] == description
    assert items["Warning"] == weights.not_vit_l14_warning(
        description, "The CLIP backbone these answers were computed with"
    )
    assert text.count("is not ViT-L/14 but") == 2  # at the top of the report and in its provenance
    sums = read_provenance(gpkg)["weights_sha256"]
    files = _table(text, "weight file")
    assert files == sums and any(name.startswith("clip/") for name in files)


def test_a_run_that_did_not_record_its_backbone_says_so(run_file, tmp_path):
    old = tmp_path / "old.gpkg"
    shutil.copy(run_file[0], old)
    with sqlite3.connect(old) as db:
        db.execute("UPDATE runs SET backbone = NULL, backbone_vit_l14 = NULL")
    text = _html_of(old)
    assert _table(text, "item")["CLIP backbone"] == "architecture not recorded"
    assert "Warning" not in _table(text, "item") and "ViT-L/14 but" not in text


def test_the_html_report_shows_settings_in_words(run_file):
    parameters = _table(_html_of(run_file[0]), "parameter")
    assert parameters["top_k"] == "3" and parameters["batch_size"] == "4"
    assert parameters["confidence_areas"] == "no" and parameters["fuse"] == "no"
    assert parameters["rasters"] == "none" and parameters["truth"] == "none"
    assert parameters["area"] == "whole world"
    assert not {"None", "False", "True", "null", "false", "true"} & set(parameters.values())


def test_the_html_report_shows_names_and_exif_only_as_text(run_file):
    gpkg, _, _ = run_file
    text = _html_of(gpkg)
    assert "\x1b" not in text and "\\x1b[31m&lt;script&gt;odd.jpg" in text
    assert "<script" not in text.lower() and "<b>9</b>" not in text and "Model &lt;b&gt;9&lt;/b&gt;" in text
    cameras = [v for k, v in _exif_rows(text) if k == "Camera"]
    assert "Canon EOS 40D" in cameras and not any("Canon Canon" in c for c in cameras)
    assert f"{HOSTILE_MAKE} Model <b>9</b>" in cameras  # parsed back from the page: the EXIF exactly


def _exif_rows(text: str):
    from test_workbench import _Tables

    page = _Tables()
    page.feed(text)
    return [tuple(row[:2]) for table in page.tables if table[0] == ["EXIF", "value"] for row in table[1:]]


@pytest.mark.qgis
def test_the_results_panel_names_the_camera_once(run_file):
    from qgis_support import qgis_app

    qgis_app()
    from geoclip_qgis.backend.workbench.run_file import read_answers
    from geoclip_qgis.ui.results_panel import ResultsPanel

    gpkg, _, canon = run_file
    info = ResultsPanel._info_html(read_answers(gpkg, [canon])[0])
    assert "Camera: Canon EOS 40D" in info and "Canon Canon" not in info


def _pdf_text(pdf, *options) -> str:
    if shutil.which("pdftotext") is None:
        pytest.fail("poppler-utils is missing; `make setup` installs it")
    text = subprocess.run(["pdftotext", *options, str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return unicodedata.normalize("NFKC", text)  # the PDF's "ﬁ" ligatures as letters


@pytest.mark.qgis
def test_the_pdf_prints_exif_and_names_as_written_never_evaluated(run_file, tmp_path, monkeypatch, tiny_clip):
    from qgis_support import qgis_app

    qgis_app()
    from geoclip_qgis.backend.store import weights
    from geoclip_qgis.map.case_report import export_case_report

    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    gpkg, hostile, _ = run_file
    pdf, html = export_case_report(str(gpkg), hostile, str(tmp_path / "report.pdf"))
    text = _pdf_text(pdf)
    flat = " ".join(text.split())
    assert SECRET not in text  # the EXIF make was not run as an expression
    assert f"Camera: {HOSTILE_MAKE} Model <b>9</b>" in flat
    assert "\x1b" not in text and "\\x1b[31m<script>odd.jpg" in flat  # the name, its escape written out
    # provenance: the backbone by its architecture, the warning, the weights' sha256, settings in words
    description = weights.backbone_architecture(tiny_clip).description
    assert f"CLIP backbone: {description}" in flat
    assert "is not ViT-L/14" in flat and "will not be meaningful places" in flat
    assert weights.sha256_file(tiny_clip / "model.safetensors") in flat
    assert "confidence_areas: no" in flat and "rasters: none" in flat and "top_k: 3" in flat
    assert not re.search(r"\b(None|False|True)\b", text)
    # the legend names only what the map holds: no confidence areas were made in this run
    assert "Red star: top-1 answer · orange dots: other candidates" in flat and "confidence area" not in flat
    page = html.read_text(encoding="utf-8")
    assert "\x1b" not in page and "<script" not in page.lower()


@pytest.mark.qgis
def test_the_legend_lists_the_confidence_areas_a_run_made(engine, samples, tmp_path):
    from qgis_support import qgis_app

    qgis_app()
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.map.case_report import _legend, build_layout

    gpkg = tmp_path / "areas.gpkg"
    photo = str(samples / "gps" / "DSCN0010.jpg")
    execute(RunRequest(photos=[photo], top_k=1, output=str(gpkg), confidence=True), engine)
    from qgis.core import QgsLayoutItemLabel, QgsProject

    layout, layers = build_layout(str(gpkg), photo)
    try:
        shown = [item.currentText() for item in layout.items() if isinstance(item, QgsLayoutItemLabel)]
    finally:
        for layer in layers:
            QgsProject.instance().removeMapLayer(layer.id())
    legend = next(t for t in shown if t.startswith("Red star"))
    assert legend == (
        "Red star: top-1 answer · circles: each place's radius, holding 90 % of its probability · "
        "solid red outline: 50 % confidence area · dashed orange outline: 90 % confidence area"
    )  # one candidate: no "other candidates" dots
    from geoclip_qgis.backend.workbench.report import report_from_geopackage

    assert _legend(report_from_geopackage(gpkg, [photo]).answers[0], radii=True) == legend


def test_the_html_report_lists_places_with_their_radius_and_the_hint_as_text(run_file):
    from test_workbench import _Tables

    text = _html_of(run_file[0])
    assert text.count("Hint: a &lt;b&gt;harbour&lt;/b&gt; town (weight 0.25)") == 2 and "<b>harbour" not in text
    page = _Tables()
    page.feed(text)
    candidates = [t for t in page.tables if t[0][:5] == ["rank", "probability", "lat", "lon", "nearest place"]]
    assert candidates and all(t[0][8:10] == ["radius km (90 %)", "refined from its gallery point"] for t in candidates)
    assert all(float(row[8]) >= 1 and row[9] in ("yes", "no") for t in candidates for row in t[1:])
