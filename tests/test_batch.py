"""Photo folders at scale: resumable runs, errors tables, EXIF truth, evaluation, folder walking."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational
from test_cli import CLI, run
from test_photos import png_claiming, truncated_copy

GPS = ExifTags.GPS


def variants(sources: list[Path], folder: Path, count: int) -> list[Path]:
    """``count`` distinct real-photo JPEGs (different crops of the sources)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [Image.open(p).convert("RGB") for p in sources]
    made = []
    for n in range(count):
        image = images[n % len(images)]
        shift = n // len(images)
        crop = image.crop((shift, shift, image.width - shift, image.height - shift)).resize((320, 240))
        path = folder / f"photo_{n:04d}.jpg"
        crop.save(path, quality=85)
        made.append(path)
    return made


def with_gps(source: Path, target: Path, gps: dict) -> Path:
    image = Image.open(source).convert("RGB")
    exif = image.getexif()
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    image.save(target, exif=exif.tobytes())
    return target


def committed_photos(gpkg: Path) -> int:
    try:
        with sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(DISTINCT photo_sha256) FROM predictions").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_run_resumes_and_answers_every_photo_once(engine, tiny_clip, skimage_data, tmp_path):
    sources = [skimage_data / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png")]
    photos = variants(sources, tmp_path / "photos", 300)
    gpkg = tmp_path / "run.gpkg"
    args = [
        *CLI,
        "predict",
        str(tmp_path / "photos"),
        "--clip",
        str(tiny_clip),
        "--out",
        str(gpkg),
        "--top-k",
        "2",
        "--batch-size",
        "4",
        "--quiet",
    ]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while committed_photos(gpkg) < 20 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = committed_photos(gpkg)
    assert 20 <= done_before < len(photos)

    second = run("predict", tmp_path / "photos", "--clip", tiny_clip, "--out", gpkg, "--top-k", 2, "--batch-size", 4)
    assert f"skipped {done_before}" in second.stderr and "answered in an earlier run" in second.stderr
    with sqlite3.connect(gpkg) as db:
        per_photo = db.execute("SELECT photo_sha256, COUNT(*) FROM predictions GROUP BY photo_sha256").fetchall()
        ranks = db.execute("SELECT COUNT(*) FROM predictions WHERE rank = 1").fetchone()[0]
    assert len(per_photo) == len(photos)
    assert all(count == 2 for _, count in per_photo), "every photo answered exactly once (2 ranks)"
    assert ranks == len(photos)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_run_stopped_on_request_is_a_resumable_outcome(engine, photo_dir, tmp_path):
    """should_stop ends the run after the answer it is asked after: the outcome says cancelled, the joint
    answer waits, every written photo is whole, and the next run into the file answers only the rest."""
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.results import SKIP_ANSWERED

    gpkg = tmp_path / "stopped.gpkg"
    request = RunRequest(photos=[str(photo_dir)], top_k=2, output=str(gpkg), fuse=True)
    seen = []
    stopped = execute(request, engine, should_stop=lambda: len(seen) >= 2, on_result=seen.append)
    assert stopped.cancelled and stopped.summary.stopped and stopped.summary.answered == 2
    assert stopped.fused is None and "(stopped early)" in stopped.summary.first_line()
    with sqlite3.connect(gpkg) as db:
        per_photo = dict(db.execute("SELECT photo, COUNT(*) FROM predictions GROUP BY photo").fetchall())
    assert sorted(per_photo) == sorted(r.photo for r in seen) and set(per_photo.values()) == {2}

    resumed = execute(request, engine)
    assert not resumed.cancelled and resumed.summary.answered == 2
    assert resumed.summary.skipped == {SKIP_ANSWERED: 2}
    assert resumed.fused is not None and resumed.fused.photo == "fused: 4 photos"
    with sqlite3.connect(gpkg) as db:
        photos = db.execute("SELECT DISTINCT photo FROM predictions").fetchall()
    assert len(photos) == 5 and (resumed.fused.photo,) in photos  # each photo once, and the joint answer


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_bad_photos_and_malformed_exif_in_a_folder(engine, tiny_clip, skimage_data, samples, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    base = skimage_data / "coffee.png"
    with_gps(
        base,
        folder / "zero_denominators.jpg",
        {
            GPS.GPSLatitudeRef: "N",
            GPS.GPSLatitude: (IFDRational(45, 0), IFDRational(0, 0), IFDRational(0, 0)),
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: (IFDRational(10, 1), IFDRational(0, 1), IFDRational(0, 1)),
        },
    )
    with_gps(
        base,
        folder / "latitude_200.jpg",
        {
            GPS.GPSLatitudeRef: "N",
            GPS.GPSLatitude: (200.0, 0.0, 0.0),
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: (10.0, 0.0, 0.0),
        },
    )
    with_gps(base, folder / "no_refs.jpg", {GPS.GPSLatitude: (45.0, 30.0, 0.0), GPS.GPSLongitude: (10.0, 0.0, 0.0)})
    with_gps(
        base,
        folder / "good_gps.jpg",
        {
            GPS.GPSLatitudeRef: "S",
            GPS.GPSLatitude: (33.0, 52.0, 0.0),
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: (151.0, 12.0, 0.0),
        },
    )
    (folder / "empty.jpg").write_bytes(b"")
    truncated_copy(samples / "gps" / "DSCN0010.jpg", folder / "truncated.jpg")
    (folder / "notes.jpg").write_text("not a photo")
    png_claiming(folder / "bomb.png", 40000, 40000)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    Image.open(skimage_data / "astronaut.png").save(folder / "no_extension", format="PNG")
    (folder / "readme.txt").write_text("not a photo and not named like one")

    gpkg = tmp_path / "mixed.gpkg"
    out = run("predict", folder, "--clip", tiny_clip, "--out", gpkg, "--top-k", 1)
    with sqlite3.connect(gpkg) as db:
        errors = dict((Path(p).name, e) for p, e in db.execute("SELECT photo, error FROM errors"))
        answered = {
            Path(p).name: (la, lo) for p, la, lo in db.execute("SELECT photo, exif_lat, exif_lon FROM predictions")
        }
    assert set(errors) == {"empty.jpg", "truncated.jpg", "notes.jpg", "bomb.png", "loop"}
    assert set(answered) == {"zero_denominators.jpg", "latitude_200.jpg", "no_refs.jpg", "good_gps.jpg", "no_extension"}
    for name in ("zero_denominators.jpg", "latitude_200.jpg", "no_refs.jpg"):
        assert answered[name] == (None, None), name  # the bad field is left empty
    assert answered["good_gps.jpg"] == pytest.approx((-(33 + 52 / 60), 151.2))
    assert "answered 5, skipped 0, failed 5" in out.stderr
    assert "top-1 error against the photos' own EXIF GPS" in out.stderr  # one photo had usable truth


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_skip_geotagged_and_accuracy_table(engine, tiny_clip, samples, tmp_path):
    gpkg = tmp_path / "gps.gpkg"
    out = run(
        "predict",
        samples / "gps",
        samples / "orientation" / "landscape_1.jpg",
        "--clip",
        tiny_clip,
        "--out",
        gpkg,
        "--skip-geotagged",
    )
    assert "answered 1, skipped 9" in out.stderr and "has EXIF GPS already" in out.stderr
    out = run("predict", samples / "gps", "--clip", tiny_clip, "--out", gpkg)
    assert "answered 9" in out.stderr and "median error" in out.stderr
    with sqlite3.connect(gpkg) as db:
        table = db.execute(
            "SELECT photos, acc_1km, acc_25km, acc_200km, acc_750km, acc_2500km, median_km FROM accuracy"
        ).fetchall()
        camera = db.execute(
            "SELECT DISTINCT camera_make, camera_model FROM predictions WHERE camera_make IS NOT NULL"
        ).fetchall()
        stamps = db.execute("SELECT timestamp FROM predictions WHERE photo LIKE '%DSCN0010%'").fetchall()
    assert len(table) == 1 and table[0][0] == 9
    accuracies = table[0][1:6]
    assert list(accuracies) == sorted(accuracies) and all(0 <= a <= 100 for a in accuracies)
    assert ("NIKON", "COOLPIX P6000") in camera
    assert stamps[0][0].startswith("2008-")


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_evaluate_on_a_benchmark_style_csv(engine, tiny_clip, samples, tmp_path):
    from geoclip_qgis.backend.geo import haversine_km

    gps = sorted((samples / "gps").glob("*.jpg"))
    table = tmp_path / "im2gps_like.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "AUTHOR", "LAT", "LON"])
        for path in gps:
            writer.writerow([path.name, "someone", 43.4674, 11.8851])
    report = tmp_path / "report.json"
    out = run(
        "evaluate",
        table,
        "--images",
        samples / "gps",
        "--clip",
        tiny_clip,
        "--report",
        report,
        "--out",
        tmp_path / "answers.csv",
    )
    figures = json.loads(report.read_text())
    assert figures["photos"] == len(gps) and figures["failed"] == 0
    answers = list(csv.DictReader(open(tmp_path / "answers.csv")))
    errors = sorted(
        haversine_km(43.4674, 11.8851, float(r["lat"]), float(r["lon"])) for r in answers if r["rank"] == "1"
    )
    assert figures["median_km"] == pytest.approx(errors[len(errors) // 2])
    assert figures["acc_2500km"] == pytest.approx(100 * sum(e <= 2500 for e in errors) / len(errors))
    assert "within     1 km    25 km" in out.stdout


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_evaluate_out_measures_from_the_csv_truth_not_exif(engine, tiny_clip, samples, tmp_path):
    """Photos whose EXIF GPS is not the CSV's truth: the --out file's error_km is the distance to the
    CSV's position, so the table evaluate prints comes back from the file alone."""
    from geoclip_qgis.backend.earth.evaluation import THRESHOLDS_KM, accuracy_table, format_table
    from geoclip_qgis.backend.geo import haversine_km

    gps = sorted((samples / "gps").glob("*.jpg"))
    answers = engine.predict(gps, top_k=1)
    # truths set at chosen distances due north or south of each answer, so the table's cells differ
    distances = [0.3, 5, 20, 60, 150, 400, 1000, 2000, 6000]
    truths = {}
    for result, km in zip(answers, distances):
        top = result.candidates[0]
        degrees = km / 6371.0088 / np.pi * 180
        truths[Path(result.photo).name] = (top.lat - degrees if top.lat > 0 else top.lat + degrees, top.lon)
    table = tmp_path / "truth.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "lat", "lon"])
        writer.writerows([name, repr(lat), repr(lon)] for name, (lat, lon) in truths.items())
    report = tmp_path / "report.json"
    out = run(
        "evaluate", table, "--images", samples / "gps", "--clip", tiny_clip, "--precision", "fp32",
        "--report", report, "--out", tmp_path / "answers.csv",
    )  # fmt: skip
    rows = [r for r in csv.DictReader(open(tmp_path / "answers.csv")) if r["rank"] == "1"]
    assert len(rows) == len(gps)
    for row in rows:
        lat, lon = truths[Path(row["photo"]).name]
        assert float(row["error_km"]) == float(haversine_km(lat, lon, float(row["lat"]), float(row["lon"])))
        exif_km = float(
            haversine_km(float(row["exif_lat"]), float(row["exif_lon"]), float(row["lat"]), float(row["lon"]))
        )
        assert abs(float(row["error_km"]) - exif_km) > 1, row  # EXIF is not what was measured from
    recomputed = accuracy_table(float(r["error_km"]) for r in rows)
    figures = json.loads(report.read_text())
    assert {key: figures[key] for key in recomputed} == recomputed
    assert len({recomputed[f"acc_{km}km"] for km in THRESHOLDS_KM}) >= 3  # the cells are not all alike
    printed = format_table({**recomputed, "acc_country": figures.get("acc_country"), "candidates": "gallery points"})
    assert out.stdout.startswith(printed + "\n"), (out.stdout, printed)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_evaluation_is_one_engine_action_that_the_command_line_prints(engine, tiny_clip, samples, tmp_path):
    """The accuracy table is assembled once, by evaluate.evaluate: what the command line reports is that
    function's table, for the same photos, truth and weights."""
    from geoclip_qgis.backend.pipeline.evaluate import evaluate, truth_inputs
    from geoclip_qgis.backend.pipeline.run import RunRequest

    gps = sorted((samples / "gps").glob("*.jpg"))
    table = tmp_path / "truth.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "lat", "lon"])
        writer.writerows([path.name, 45.0 + i, 7.0 + i] for i, path in enumerate(gps[:-1]))
        writer.writerow(["not-there.jpg", 1.0, 2.0])  # fails to open: reported apart, not counted
    evaluation = evaluate(RunRequest(**truth_inputs(table, samples / "gps")), engine)
    report = tmp_path / "report.json"
    out = run("evaluate", table, "--images", samples / "gps", "--clip", tiny_clip, "--precision", "fp32",
              "--report", report)  # fmt: skip
    assert json.loads(report.read_text()) == json.loads(json.dumps(evaluation.table))
    assert evaluation.table["photos"] == len(gps) - 1 and evaluation.table["failed"] == 1
    assert evaluation.not_counted == "not counted: 1 failed to decode, 0 without a known position"
    assert evaluation.not_counted in out.stderr


def test_heic_photos_are_read(engine, samples):
    pytest.importorskip("pillow_heif", reason="HEIC needs the optional pillow-heif")
    result = engine.predict([samples / "heic" / "IMG_5195.HEIC"], top_k=1)[0]
    assert result.ok and result.exif_lat == pytest.approx(39.0513444, abs=1e-6)


@pytest.mark.slow
def test_same_run_on_a_local_ray_cluster(engine, tiny_clip, skimage_data, tmp_path):
    """Ray Data with engine actors gives the local run's rows, schema and resume behaviour."""
    pytest.importorskip("ray.data", reason="Ray is optional: pip install 'ray[data]'")
    variants([skimage_data / "astronaut.png", skimage_data / "coffee.png"], tmp_path / "p", 12)
    local, on_ray = tmp_path / "local.gpkg", tmp_path / "ray.gpkg"
    run("predict", tmp_path / "p", "--clip", tiny_clip, "--out", local, "--top-k", 3)
    out = run(
        "predict",
        tmp_path / "p",
        "--clip",
        tiny_clip,
        "--out",
        on_ray,
        "--top-k",
        3,
        "--ray",
        "local",
        "--workers",
        2,
        timeout=900,
    )
    assert "answered 12, skipped 0, failed 0" in out.stderr

    def rows(path):
        with sqlite3.connect(path) as db:
            names = [r[1] for r in db.execute("PRAGMA table_info(predictions)")]
            data = db.execute(
                "SELECT photo, rank, lat, lon, probability, photo_sha256 FROM predictions ORDER BY photo, rank"
            ).fetchall()
        return names, data

    (names_local, data_local), (names_ray, data_ray) = rows(local), rows(on_ray)
    assert names_local == names_ray
    assert [r[:4] + r[5:] for r in data_local] == [r[:4] + r[5:] for r in data_ray]
    assert [r[4] for r in data_local] == pytest.approx([r[4] for r in data_ray], rel=1e-5)
    again = run(
        "predict", tmp_path / "p", "--clip", tiny_clip, "--out", on_ray, "--top-k", 3, "--ray", "local", timeout=900
    )
    assert "answered 0, skipped 12" in again.stderr
