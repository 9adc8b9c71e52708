"""What a received run GeoPackage (and the workbench commands reading it) can do: a crafted file is read as
data, never trusted.

- the photo shown (HTML report, results panel, PDF report) is only a file whose bytes have the sha256 the
  run recorded: never any other file the GeoPackage names, never relative to the current folder;
- the PDF report leaves no copy of the photo on disk;
- crafted values (NULL or text ranks, text and infinite numbers, a NULL photo, a missing photo column, a
  short query vector, deeply nested or non-table JSON...) are rows left out with their reason, or a named
  error (exit 2): never a traceback;
- every CSV cell the workbench writes goes through the one formula rule;
- ``likely`` names every place it cannot judge;
- ``report`` never overwrites its own input nor a file it did not make.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


CLI = [sys.executable, "-m", "geoclip_qgis.backend"]
HOSTILE_PHOTO = "=cmd|' /C calc'!A0"
HOSTILE_ZONE = '=HYPERLINK("http://attacker.example","x")'


def cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "100"},
    )


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def craft(source: Path, target: Path, *statements: str) -> Path:
    """A copy of a run's GeoPackage altered with SQL (the GeoPackage triggers' spatial functions stubbed)."""
    shutil.copy(source, target)
    db = sqlite3.connect(target)
    db.create_function("ST_IsEmpty", 1, lambda geometry: 1)
    for name in ("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY"):
        db.create_function(name, 1, lambda geometry: 0.0)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return target


@pytest.fixture(scope="module")
def run_gpkg(engine, samples, tmp_path_factory) -> Path:
    """A real run: one camera photo (kept in the run's folder) and a text query, with regions, confidence
    areas and query vectors."""
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute

    folder = tmp_path_factory.mktemp("received")
    (folder / "photos").mkdir()
    photo = folder / "photos" / "DSCN0010.jpg"
    shutil.copy(samples / "gps" / "DSCN0010.jpg", photo)
    gpkg = folder / "run.gpkg"
    execute(RunRequest(photos=[str(photo)], texts=["a harbour"], top_k=3, output=str(gpkg), confidence=True), engine)
    return gpkg


def photo_of(gpkg: Path) -> str:
    with sqlite3.connect(gpkg) as db:
        return db.execute("SELECT photo FROM predictions WHERE photo NOT LIKE 'text: %' LIMIT 1").fetchone()[0]


# ------------------------------------------------------------------- 3: crafted files, never a traceback

DEEP_LIST = "printf('%.*c', 100000, '[') || printf('%.*c', 100000, ']')"
DEEP_TABLE = "'" + '{"a":' * 200 + "1" + "}" * 200 + "'"
CRAFTED = {
    # name: (SQL, exit status, what stderr names)
    "null rank": (["UPDATE predictions SET rank = NULL WHERE rank = 1"], 0, "rank is empty"),
    "text rank": (["UPDATE predictions SET rank = 'first' WHERE rank = 2"], 0, "rank is text"),
    "text latitude": (["UPDATE predictions SET lat = 'north' WHERE rank = 1"], 0, "lat is text"),
    "text probability": (["UPDATE predictions SET probability = 'high' WHERE rank = 1"], 0, "probability is text"),
    "every answer unusable": (["UPDATE predictions SET probability = 'high'"], 2, "holds no answer"),
    "binary longitude": (["UPDATE predictions SET lon = X'00' WHERE rank = 3"], 0, "lon is 1 bytes"),
    "inf coordinates": (["UPDATE predictions SET lat = 9e999, lon = -9e999 WHERE rank = 1"], 0, "lat is inf"),
    "latitude 91": (["UPDATE predictions SET lat = 91 WHERE rank = 1"], 0, "lat is 91.0"),
    "NULL photo": (["UPDATE predictions SET photo = NULL WHERE rank = 1"], 0, "photo is empty"),
    "no photo column": (["ALTER TABLE predictions DROP COLUMN photo"], 2, "no photo column"),
    "3-byte query vector": (["UPDATE answer_features SET feature = X'010203'"], 0, "3 bytes of binary data"),
    "100k-deep JSON": ([f"UPDATE runs SET parameters = {DEEP_LIST}"], 0, "parameters is not readable JSON"),
    "deep JSON table": ([f"UPDATE runs SET weights_sha256 = {DEEP_TABLE}"], 0, "weights_sha256 nests deeper"),
    "non-table run data": (
        ["UPDATE runs SET parameters = '[1, 2]', weights_sha256 = '\"x\"', backbone_vit_l14 = 'yes'"],
        0,
        "parameters is not a table",
    ),
    "text region share": (["UPDATE regions SET probability = 'most' WHERE rank = 1"], 0, "probability is text"),
    "NULL region level": (["UPDATE regions SET level = NULL WHERE rank = 2"], 0, "level is empty"),
    "text area size": (["UPDATE confidence_areas SET area_km2 = 'big'"], 0, "area_km2 is text"),
    "bad photo bytes": (["UPDATE predictions SET photo_bytes_hex = 'zz'"], 0, "photo_bytes_hex is not hexadecimal"),
    "bad EXIF": (["UPDATE predictions SET exif_lat = 'n', exif_lon = 200, altitude = X'01'"], 0, "exif_lat is text"),
    "bad sha256": (["UPDATE predictions SET photo_sha256 = '../../etc/passwd'"], 0, "photo_sha256 is not a sha256"),
    "NULL failed photo": (["INSERT INTO errors (photo, error) VALUES (NULL, 'x')"], 0, "photo is empty"),
    "numbers as run times": (["UPDATE predictions SET run_at = 5", "UPDATE regions SET run_at = X'00'"], 0, ""),
    "answers table as a view": (
        ["DROP TABLE predictions", "CREATE VIEW predictions AS SELECT 'x' AS photo"],
        2,
        "no predictions layer",
    ),
}


@pytest.mark.parametrize("name", list(CRAFTED))
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_crafted_geopackage_is_a_named_error_or_rows_left_out(run_gpkg, tmp_path, name):
    statements, status, named = CRAFTED[name]
    gpkg = craft(run_gpkg, tmp_path / "crafted.gpkg", *statements)
    out = cli("report", gpkg, "--out", tmp_path / "report.html")
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == status, out.stderr
    assert named in out.stderr
    if status == 0:
        assert out.stdout.strip() == str(tmp_path / "report.html")  # stdout: the report's path only
        report = (tmp_path / "report.html").read_text(encoding="utf-8")
        assert (not named) or "What this report leaves out of the file, and why:" in report
    else:
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("geoclip-qgis: error:") and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("content", [b"not a database at all", b""])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_file_that_is_no_geopackage_is_a_named_error(tmp_path, content):
    bogus = tmp_path / "bogus.gpkg"
    bogus.write_bytes(content)
    if not content:  # an empty SQLite database: no tables at all
        sqlite3.connect(bogus).execute("CREATE TABLE other (x)").connection.close()
    out = cli("report", bogus, "--out", tmp_path / "report.html")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is not a GeoPackage of GeoCLIP answers" in out.stderr


def test_rows_left_out_leave_the_others_as_they_were(run_gpkg, tmp_path):
    """Reading a crafted file keeps every usable row and names each one left out."""
    from geoclip_qgis.backend.workbench.run_file import read_answers, read_provenance

    photo = photo_of(run_gpkg)
    gpkg = craft(
        run_gpkg,
        tmp_path / "crafted.gpkg",
        f"UPDATE predictions SET rank = 'x' WHERE rank = 2 AND photo = '{photo}'",
        "UPDATE regions SET probability = 2.5 WHERE rank = 1 AND level = 'country'",
        "UPDATE runs SET parameters = '{\"top_k\": [1, [2, [3]]]}'",
    )
    skipped: list[str] = []
    answers = {a.photo: a for a in read_answers(gpkg, skipped=skipped)}
    clean = {a.photo: a for a in read_answers(run_gpkg)}
    assert [c.rank for c in answers[photo].result.candidates] == [1, 3]
    assert answers["text: a harbour"].result.candidates == clean["text: a harbour"].result.candidates
    assert len(answers[photo].regions) == len(clean[photo].regions) - 1
    assert skipped[0].startswith("predictions row ") and "rank is text" in skipped[0]
    assert any("probability is 2.5, not a number from 0 to 1" in s for s in skipped) and len(skipped) == 3
    assert read_provenance(gpkg)["parameters"] == {"top_k": [1, [2, [3]]]}  # shallow nesting is data


def test_a_run_area_that_is_no_area_is_a_named_error(run_gpkg, tmp_path):
    from geoclip_qgis.backend.workbench.judging import area_of_run
    from geoclip_qgis.backend.workbench.run_file import RunFileError

    for bbox in ('"abc"', "[1, 2, 3]", '[0, 10, "x", 20]', "[0, 95, 10, 96]"):
        params = json.dumps({"area": "x", "area_bbox": "BBOX", "area_wkt": None}).replace('"BBOX"', bbox)
        gpkg = craft(run_gpkg, tmp_path / "area.gpkg", f"UPDATE runs SET parameters = '{params}'")
        with pytest.raises(RunFileError, match="area of interest cannot be used"):
            area_of_run(gpkg)
    params = json.dumps({"area": "x", "area_bbox": [0, 0, 10, 10], "area_wkt": "POINT (1 1)"})
    with pytest.raises(RunFileError):
        area_of_run(craft(run_gpkg, tmp_path / "wkt.gpkg", f"UPDATE runs SET parameters = '{params}'"))


# --------------------------------------------------------------------- 1: which photo file is shown


def _embedded(report: Path) -> int:
    return report.read_text(encoding="utf-8").count("data:image/jpeg;base64,")


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_the_report_embeds_only_a_photo_with_the_bytes_the_run_answered(run_gpkg, samples, tmp_path):
    photo = photo_of(run_gpkg)
    answered = sha256(photo)
    home = tmp_path / "home"
    home.mkdir()
    secret = home / "secret.jpg"  # a photo of the analyst's that the received file names
    shutil.copy(samples / "gps" / "DSCN0012.jpg", secret)

    out = cli("report", run_gpkg, "--out", tmp_path / "own.html")
    assert out.returncode == 0 and _embedded(tmp_path / "own.html") == 1  # the run's own photo, where it was

    received = tmp_path / "received"
    received.mkdir()
    # 1. an absolute path to another file: its bytes are not the answered ones
    gpkg = craft(run_gpkg, received / "a.gpkg", f"UPDATE predictions SET photo = '{secret}' WHERE photo = '{photo}'")
    out = cli("report", gpkg, "--out", received / "a.html")
    assert out.returncode == 0 and _embedded(received / "a.html") == 0
    assert "the photo is not available" in (received / "a.html").read_text(encoding="utf-8")

    # 2. a relative name, with the sha256 of the analyst's file: never resolved from the current folder
    gpkg = craft(
        run_gpkg,
        received / "b.gpkg",
        f"UPDATE predictions SET photo = 'secret.jpg', photo_sha256 = '{sha256(secret)}' WHERE photo = '{photo}'",
    )
    out = cli("report", gpkg, "--out", received / "b.html", cwd=home)
    assert out.returncode == 0 and _embedded(received / "b.html") == 0

    # 3. climbing out of the GeoPackage's folder with "..": not followed, whatever its bytes
    shutil.copy(photo, tmp_path / "DSCN0010.jpg")
    gpkg = craft(
        run_gpkg, received / "c.gpkg", f"UPDATE predictions SET photo = '../DSCN0010.jpg' WHERE photo = '{photo}'"
    )
    out = cli("report", gpkg, "--out", received / "c.html")
    assert out.returncode == 0 and _embedded(received / "c.html") == 0

    # 4. the photos sent along with the run, beside it (by name) or in its subfolder (relative path)
    moved = f"UPDATE predictions SET photo = '/elsewhere/on/their/machine/DSCN0010.jpg' WHERE photo = '{photo}'"
    gpkg = craft(run_gpkg, received / "d.gpkg", moved)
    shutil.copy(photo, received / "DSCN0010.jpg")
    out = cli("report", gpkg, "--out", received / "d.html")
    assert out.returncode == 0 and _embedded(received / "d.html") == 1
    (received / "DSCN0010.jpg").unlink()
    (received / "photos").mkdir()
    shutil.copy(photo, received / "photos" / "DSCN0010.jpg")
    gpkg = craft(
        run_gpkg, received / "e.gpkg", f"UPDATE predictions SET photo = 'photos/DSCN0010.jpg' WHERE photo = '{photo}'"
    )
    out = cli("report", gpkg, "--out", received / "e.html")
    assert out.returncode == 0 and _embedded(received / "e.html") == 1
    assert answered == sha256(received / "photos" / "DSCN0010.jpg")


def test_photo_file_never_reads_what_is_not_a_regular_file(run_gpkg, tmp_path):
    from geoclip_qgis.backend.workbench.run_file import photo_file, read_answers

    photo = photo_of(run_gpkg)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for name in (str(fifo), "/dev/zero", str(tmp_path), "a\\..\\..\\b.jpg", "/etc/passwd"):
        quoted = name.replace("'", "''")
        gpkg = craft(
            run_gpkg,
            tmp_path / "x.gpkg",
            f"UPDATE predictions SET photo = '{quoted}', photo_bytes_hex = NULL WHERE photo = '{photo}'",
        )
        stored = next(a for a in read_answers(gpkg) if not a.photo.startswith("text: "))
        assert photo_file(stored) is None
    text = next(a for a in read_answers(run_gpkg) if a.photo.startswith("text: "))
    assert photo_file(text) is None


@pytest.mark.qgis
def test_the_results_panel_and_the_pdf_show_only_the_answered_photo(run_gpkg, samples, tmp_path):
    from qgis_support import StandInInterface, qgis_app

    qgis_app()
    from qgis.core import QgsApplication

    from geoclip_qgis.ui.results_panel import ResultsPanel

    secret = tmp_path / "secret.jpg"
    shutil.copy(samples / "gps" / "DSCN0012.jpg", secret)
    photo = photo_of(run_gpkg)
    gpkg = craft(
        run_gpkg, tmp_path / "received.gpkg", f"UPDATE predictions SET photo = '{secret}' WHERE photo = '{photo}'"
    )
    for shown, expected in ((gpkg, False), (run_gpkg, True)):
        panel = ResultsPanel(StandInInterface())
        panel.show_run(str(shown))
        panel.list.setCurrentRow(0)
        for _ in range(50):  # the list's thumbnails arrive a few at a time
            QgsApplication.processEvents()
        has_pixmap = panel.photo.pixmap() is not None and not panel.photo.pixmap().isNull()
        assert has_pixmap is expected and panel.open_button.isEnabled() is expected
        assert panel.list.item(0).icon().isNull() is not expected
        if not expected:
            assert "not available" in panel.photo.text()

    from qgis.core import QgsLayoutItemPicture, QgsProject

    from geoclip_qgis.map.case_report import build_layout

    for shown, pictures in ((gpkg, 0), (run_gpkg, 1)):
        layout, layers = build_layout(str(shown), str(secret) if shown == gpkg else photo)
        assert sum(isinstance(item, QgsLayoutItemPicture) for item in layout.items()) == pictures
        for layer in layers:
            QgsProject.instance().removeMapLayer(layer.id())


# ---------------------------------------------------------------- 2: the PDF leaves no copy of the photo


@pytest.mark.qgis
def test_the_pdf_report_leaves_no_file_in_the_temporary_folder(run_gpkg, tmp_path, monkeypatch):
    import tempfile

    from qgis_support import qgis_app

    qgis_app()
    from geoclip_qgis.map.case_report import export_case_report

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pdf, html = export_case_report(str(run_gpkg), photo_of(run_gpkg), str(tmp_path / "out" / "case.pdf"))
    assert pdf.stat().st_size > 10_000 and "data:image/jpeg;base64," in html.read_text(encoding="utf-8")
    assert [p for p in scratch.rglob("*")] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.html", "case.pdf"]


# ------------------------------------------------------------------------ 4 and 5: likely and zones CSV


@pytest.fixture(scope="module")
def hostile_run(run_gpkg, tmp_path_factory) -> Path:
    """The run with its photo renamed to a spreadsheet formula in every table."""
    photo = photo_of(run_gpkg)
    tables = ("predictions", "answer_features", "regions", "confidence_areas")
    target = tmp_path_factory.mktemp("hostile") / "run.gpkg"
    quoted = HOSTILE_PHOTO.replace("'", "''")
    return craft(run_gpkg, target, *(f"UPDATE {t} SET photo = '{quoted}' WHERE photo = '{photo}'" for t in tables))


def test_zones_csv_cells_are_never_formulas(hostile_run, tiny_clip, tmp_path):
    polygons = tmp_path / "districts.geojson"
    square = [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]
    features = [
        {"type": "Feature", "properties": {"NAME": name}, "geometry": {"type": "Polygon", "coordinates": square}}
        for name in (HOSTILE_ZONE, "@SUM(1)", "plain")
    ]
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = cli("zones", hostile_run, polygons, "--name-field", "NAME", "--clip", tiny_clip, "--device", "cpu")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["zone"] for r in rows} == {"'" + HOSTILE_ZONE, "'@SUM(1)", "plain"}
    assert {r["photo"] for r in rows} == {"'" + HOSTILE_PHOTO, "text: a harbour"}
    assert all(0 <= float(r["probability"]) <= 1.00001 and int(r["rank"]) >= 1 for r in rows)  # numbers as numbers


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_likely_names_every_place_it_skips_and_writes_no_formula(hostile_run, tiny_clip, tmp_path):
    places = tmp_path / "places.csv"
    places.write_text("name,lat,lon\n-2+3,10,20\nnorth,91,0\nnot a number,nan,5\nblank,,5\n@x,-10,200\n")
    out = cli("likely", hostile_run, places, "--id-field", "name", "--photo", HOSTILE_PHOTO, "--clip", tiny_clip)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    for name, reason in (
        ("north", "latitude 91 is beyond ±90"),
        ("not a number", "'nan' is not a finite"),
        ("blank", "no latitude"),
    ):
        assert f"place {name} skipped: " in out.stderr and reason in out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["id"] for r in rows] == ["'-2+3", "'@x", "north", "not a number", "blank"]
    assert all(r["photo"] == "'" + HOSTILE_PHOTO for r in rows)
    judged, skipped = rows[:2], rows[2:]
    assert all(r["skipped"] == "" and float(r["cells"]) > 0 for r in judged)
    assert all(r["skipped"] and r["rank"] == "" and r["lat"] == "" for r in skipped)
    assert "beyond" in skipped[0]["skipped"] and "no latitude" in skipped[2]["skipped"]


def test_one_csv_rule_for_every_csv():
    import numpy as np

    from geoclip_qgis.backend.csv_safety import csv_cell, neutralise_formula
    from geoclip_qgis.backend.output import csv_writer

    assert csv_writer.neutralise_formula is neutralise_formula
    cells = [csv_cell(v) for v in ("=1", "-2", 3, -4.5, np.float32(0.5), np.int64(-7), None, True, "a=b")]
    assert cells == ["'=1", "'-2", 3, "-4.5", "0.5", -7, "", True, "a=b"]


# ---------------------------------------------------------------------- 6: report's output ownership


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_report_overwrites_neither_its_input_nor_a_file_it_did_not_make(run_gpkg, tmp_path):
    gpkg = tmp_path / "run.gpkg"
    shutil.copy(run_gpkg, gpkg)
    before = sha256(gpkg)
    out = cli("report", gpkg, "--out", gpkg)
    assert out.returncode == 2 and "is the file the report is made from" in out.stderr
    assert sha256(gpkg) == before and "Traceback" not in out.stderr

    mine = tmp_path / "notes.html"
    mine.write_text("<html><body>my own notes</body></html>")
    out = cli("report", gpkg, "--out", mine)
    assert out.returncode == 2 and "is not a report GeoCLIP wrote" in out.stderr
    assert mine.read_text() == "<html><body>my own notes</body></html>"

    link = tmp_path / "link.html"
    link.symlink_to(mine)
    out = cli("report", gpkg, "--out", link)
    assert out.returncode == 2 and "symbolic link" in out.stderr and link.is_symlink()

    ours = tmp_path / "report.html"
    assert cli("report", gpkg, "--out", ours).returncode == 0
    again = cli("report", gpkg, "--out", ours, "--title", "second")
    assert again.returncode == 0 and "second" in ours.read_text(encoding="utf-8")  # its own report: replaced
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_every_csv_row_the_product_writes_goes_through_the_rule():
    """A scan of the engine's sources: each CSV row written is a fixed header, numbers it formats
    itself, or passes through csv_row / csv_cell."""
    import re
    from pathlib import Path

    backend = Path(__file__).resolve().parents[1] / "backend"
    unruled = []
    for source in backend.glob("*.py"):
        lines = source.read_text().splitlines()
        for number, line in enumerate(lines):
            if re.search(r"\.writerows?\(", line):
                call = " ".join(lines[number : number + 4])
                fixed = re.search(r"writerows?\((header|[A-Z_]+_COLUMNS|\[\"LAT\", \"LON\"\])\)", call)
                if not (
                    fixed
                    or any(rule in call for rule in ("csv_row", "csv_cell", "_csv_value"))
                    or 'f"{lat:.6f}"' in call
                ):
                    unruled.append(f"{source.name}:{number + 1}: {line.strip()}")
    assert unruled == []
