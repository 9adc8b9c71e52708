"""The case report of an answer as a PDF through a QGIS print layout, and as HTML: it renders, and it
holds the photo, the candidates with place names, the regions and the provenance."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from qgis_support import qgis_app


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def case(engine, samples, tmp_path_factory):
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute

    folder = tmp_path_factory.mktemp("case")
    gpkg = folder / "case.gpkg"
    photo = str(samples / "gps" / "DSCN0010.jpg")
    execute(
        RunRequest(photos=[photo, str(samples / "gps" / "DSCN0012.jpg")], top_k=5, output=str(gpkg), confidence=True),
        engine,
    )
    return gpkg, photo


def test_pdf_report_renders_with_photo_table_and_provenance(case, tmp_path):
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        pytest.fail("poppler-utils is missing; `make setup` installs it")
    qgis_app()
    from geoclip_qgis.backend.workbench.run_file import read_answers, read_provenance
    from geoclip_qgis.map.case_report import export_case_report

    gpkg, photo = case
    pdf, html = export_case_report(str(gpkg), photo, str(tmp_path / "report.pdf"))
    assert pdf.is_file() and html.is_file()
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 2
    from PIL import Image

    first = Image.open(pages[0]).convert("RGB")
    photo_box = first.crop((int(first.width * 0.63), int(first.height * 0.1), first.width, int(first.height * 0.4)))
    import numpy as np

    colours = np.asarray(photo_box.resize((32, 16))).reshape(-1, 3)
    assert len({tuple(c) for c in colours}) > 50  # the photo is there, not a blank box
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    answer = read_answers(gpkg, [photo])[0]
    top = answer.result.candidates[0]
    assert "DSCN0010.jpg" in text and "Candidates" in text and "Probability by region" in text
    assert top.place in text and f"{top.lat:.5f}" in text
    assert answer.regions[0].region in text
    sha = read_provenance(gpkg)["weights_sha256"]["heads/weights/location_encoder_weights.pth"]
    assert sha in text and answer.result.sha256 in text
    assert "NIKON" in text and "43.46745" in text  # EXIF camera and position
    assert "DSCN0010.jpg" in html.read_text(encoding="utf-8")


def test_a_report_of_a_failed_photo_says_why(case, tmp_path):
    qgis_app()
    from geoclip_qgis.map.case_report import ReportError, export_case_report

    gpkg, _ = case
    with pytest.raises(ReportError, match="holds no answer"):
        export_case_report(str(gpkg), "/nowhere/missing.jpg", str(tmp_path / "x.pdf"))
    assert not (tmp_path / "x.pdf").exists()
