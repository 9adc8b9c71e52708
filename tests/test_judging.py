"""Judging answers already in a run's GeoPackage: probability by region over the user's polygons and
"how likely here?" for the user's hypotheses, in the engine (backend/workbench/judging.py), on the command line
(`zones`, `likely`) and as Processing algorithms; the three give the same numbers."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from geoclip_qgis.backend.errors import GeoCLIPError
from geoclip_qgis.backend.pipeline.run import RunRequest, execute
from geoclip_qgis.backend.workbench import judging

# Two boxes splitting the world at an odd meridian (no gallery place lies on an edge):
# name -> (west, south, east, north)
BOXES = {"west": (-179.5, -80.0, -30.123, 80.0), "east": (-30.123, -80.0, 179.5, 80.0)}
TEXT = "a volcanic beach with palm trees"


def box_wkt(west, south, east, north) -> str:
    return f"POLYGON(({west} {south},{east} {south},{east} {north},{west} {north},{west} {south}))"


def inside_box(engine, box) -> np.ndarray:
    west, south, east, north = box
    lat, lon = engine.gallery.coordinates.numpy().astype(np.float64).T
    return (lon > west) & (lon < east) & (lat > south) & (lat < north)


def rows_of(stdout: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(stdout)))


@pytest.fixture(scope="module")
def run_gpkg(engine, kauai_png, skimage_data, tmp_path_factory):
    """A run of two photos and a text query, with their query vectors, in a GeoPackage."""
    folder = tmp_path_factory.mktemp("judging")
    gpkg = folder / "run.gpkg"
    photos = [str(kauai_png), str(skimage_data / "astronaut.png")]
    execute(RunRequest(photos=photos, texts=[TEXT], top_k=3, output=str(gpkg)), engine)
    return gpkg


@pytest.fixture(scope="module")
def boxes_gpkg(run_gpkg):
    """The two boxes as a polygon layer (EPSG:4326) with a name field."""
    from osgeo import ogr, osr

    path = run_gpkg.parent / "boxes.gpkg"
    crs = osr.SpatialReference()
    crs.ImportFromEPSG(4326)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("boxes", crs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for name, box in BOXES.items():
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("name", name)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(box_wkt(*box)))
        layer.CreateFeature(feature)
    source = None
    return path


def test_zonal_for_answers_sums_the_gallery_softmax_inside_each_polygon(engine, run_gpkg, kauai_png):
    answers = judging.answers_with_vectors(run_gpkg)
    assert len(answers) == 3 and str(kauai_png) in [a.photo for a in answers]
    wkts, names = [box_wkt(*b) for b in BOXES.values()], list(BOXES)
    judged = list(judging.zonal_for_answers(engine, answers, wkts, names, judging.area_of_run(run_gpkg)))
    assert [j.answer.photo for j in judged] == [a.photo for a in answers]
    for found in judged:
        p = engine.gallery_probabilities(found.answer.result.feature)
        expected = {name: p[inside_box(engine, box)].sum() for name, box in BOXES.items()}
        by_name = {row.region: row for row in found.rows}
        for name in BOXES:
            assert by_name[name].probability == pytest.approx(expected[name], rel=1e-9, abs=1e-12)
        assert [row.rank for row in found.rows] == [1, 2]
        assert found.rows[0].probability >= found.rows[1].probability
        assert found.rows[0].region == max(expected, key=expected.get)
        # the two boxes hold nearly all the world's gallery places, so nearly all the probability
        assert sum(expected.values()) == pytest.approx(sum(r.probability for r in found.rows), rel=1e-9)
        assert 0.9 < sum(found.probabilities) <= 1 + 1e-5  # a float32 softmax
        assert found.probabilities == [by_name[n].probability for n in names]
        assert found.ranks == [by_name[n].rank for n in names]


def test_repeated_names_and_answer_filters(engine, run_gpkg, kauai_png):
    only = judging.answers_with_vectors(run_gpkg, [kauai_png.name])  # by file name alone (Kauai.png)
    assert [a.photo for a in only] == [str(kauai_png)]
    assert [a.photo for a in judging.answers_with_vectors(run_gpkg, [str(kauai_png)])] == [str(kauai_png)]
    with pytest.raises(GeoCLIPError, match="keeps no query vector for nowhere.png"):
        judging.answers_with_vectors(run_gpkg, ["nowhere.png"])
    # two polygons of the same name stay apart, each with its own probability
    west = box_wkt(*BOXES["west"])
    (found,) = judging.zonal_for_answers(engine, only, [west, west], ["same", "same"])
    assert found.probabilities[0] == found.probabilities[1] > 0
    assert sorted(found.ranks) == [1, 2]


def test_read_polygons_reprojects_and_names(tmp_path):
    from osgeo import ogr, osr

    path = tmp_path / "mercator.gpkg"
    crs = osr.SpatialReference()
    crs.ImportFromEPSG(3857)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("m", crs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for name in ("a", None):
        feature = ogr.Feature(layer.GetLayerDefn())
        if name:
            feature.SetField("name", name)
        # 0..1113194.9 m east, 0..1118889.97 m north: 0..10 degrees both ways
        feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,1113194.9 0,1113194.9 1118889.97,0 0))"))
        layer.CreateFeature(feature)
    source = None
    wkts, names = judging.read_polygons(path, name_field="name")
    assert names == ["a", "2"]  # the feature id where the name is empty
    west, east, south, north = ogr.CreateGeometryFromWkt(wkts[0]).GetEnvelope()
    assert (west, east, south, north) == pytest.approx((0, 10, 0, 10), abs=1e-5)
    with pytest.raises(GeoCLIPError, match="no field 'nom'"):
        judging.read_polygons(path, name_field="nom")


def test_zones_command(engine, run_gpkg, boxes_gpkg, tiny_clip, kauai_png):
    from test_cli import run

    out = run("zones", run_gpkg, boxes_gpkg, "--name-field", "name", "--photo", kauai_png.name, "--clip", tiny_clip)
    rows = rows_of(out.stdout)
    assert out.stdout.startswith("photo,zone,probability,rank\n")
    assert [(r["photo"], r["rank"]) for r in rows] == [(str(kauai_png), "1"), (str(kauai_png), "2")]
    (answer,) = judging.answers_with_vectors(run_gpkg, [kauai_png.name])
    p = engine.gallery_probabilities(answer.result.feature)
    for row in rows:
        assert float(row["probability"]) == pytest.approx(p[inside_box(engine, BOXES[row["zone"]])].sum(), rel=1e-6)
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"])


def no_backbone_cli(tmp_path):
    """The command line in this session's environment with no CLIP backbone anywhere to fall back on: no
    $GEOCLIP_CLIP, an empty models folder, an empty Hugging Face cache (the feature caches stay)."""
    import os
    import subprocess

    from test_cli import CLI

    env = {key: value for key, value in os.environ.items() if key != "GEOCLIP_CLIP"}
    for name, variable in (("models", "GEOCLIP_MODELS_DIR"), ("hf", "HF_HOME")):
        (tmp_path / name).mkdir()
        env[variable] = str(tmp_path / name)
    env.update(HF_HUB_OFFLINE="1", COLUMNS="100")
    return lambda *args: subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_zones_and_likely_need_only_the_heads(engine, raster_engine, run_gpkg, boxes_gpkg, kauai_png, tmp_path):
    """Both judge the run's stored query vectors: they start and answer with no CLIP backbone anywhere,
    and missing heads are still a named error."""
    cli = no_backbone_cli(tmp_path)
    refused = cli("predict", kauai_png, "--device", "cpu")  # reading a photo does need CLIP: none is here
    assert refused.returncode == 2 and "CLIP backbone (openai/clip-vit-large-patch14) not found" in refused.stderr
    (answer,) = judging.answers_with_vectors(run_gpkg, [kauai_png.name])

    zones_args = ("zones", run_gpkg, boxes_gpkg, "--name-field", "name", "--photo", kauai_png.name)
    out = cli(*zones_args, "--device", "cpu")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = rows_of(out.stdout)
    assert [r["rank"] for r in rows] == ["1", "2"]
    p = engine.gallery_probabilities(answer.result.feature)
    for row in rows:
        assert float(row["probability"]) == pytest.approx(p[inside_box(engine, BOXES[row["zone"]])].sum(), rel=1e-6)

    top = answer.result.candidates[0]
    places = tmp_path / "places.csv"
    places.write_text(
        f"name,lat,lon\ntop,{top.lat},{top.lon}\nfar,{-top.lat},{top.lon - 170 if top.lon > 0 else top.lon + 170}\n"
    )
    likely_args = ("likely", run_gpkg, places, "--photo", kauai_png.name, "--id-field", "name")
    out = cli(*likely_args, "--device", "cpu", "--precision", "bf16")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = rows_of(out.stdout)
    points = [("top", top.lat, top.lon), ("far", -top.lat, top.lon - 170 if top.lon > 0 else top.lon + 170)]
    ((_, found),) = judging.likely_for_answers(raster_engine, [answer], points, judging.area_of_run(run_gpkg))
    assert [r["id"] for r in rows] == ["top", "far"]
    for row, expected in zip(rows, found):  # a session engine (bf16 grid), which has a backbone, gives the same
        for key, value in expected.row().items():
            if isinstance(value, float):
                assert float(row[key]) == pytest.approx(value, rel=1e-6, abs=1e-12), key
            elif value is not None:
                assert row[key] == str(value), key

    for args in (zones_args, likely_args):  # no heads: named, exit 2, nothing on stdout
        out = cli(*args, "--heads", tmp_path / "no-heads")
        assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
        assert "GeoCLIP heads not found" in out.stderr and "no-heads" in out.stderr, out.stderr


# ------------------------------------------------------------------------------------- in QGIS


@pytest.fixture(scope="module")
def qgis_processing(tiny_clip):
    """QGIS offscreen with the plugin's provider, its engine on the small CLIP on the CPU; bf16, as the
    judging algorithms read densities from the world grid (an fp32 engine would build an fp32 one)."""
    pytest.importorskip("qgis.core")
    from qgis_support import qgis_app

    qgis_app()
    from qgis_support import geoclip_provider

    from geoclip_qgis.core.session import EngineSettings, load_settings, save_settings

    geoclip_provider()  # the plugin's provider, as QGIS loads it
    saved = load_settings()
    save_settings(EngineSettings(clip=str(tiny_clip), device="cpu", precision="bf16", embedding_cache=False))
    import processing

    yield processing
    save_settings(saved)


def context_and_feedback():
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context, QgsProcessingFeedback()


def mercator_layer(kind: str, rows):
    """A memory layer in EPSG:3857 with a name field; ``rows``: (name, WKT in EPSG:4326)."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsVectorLayer,
    )

    layer = QgsVectorLayer(f"{kind}?crs=EPSG:3857&field=name:string", "user layer", "memory")
    to_mercator = QgsCoordinateTransform(
        QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance()
    )
    features = []
    for name, wkt in rows:
        geometry = QgsGeometry.fromWkt(wkt)
        geometry.transform(to_mercator)
        feature = QgsFeature(layer.fields())
        feature.setAttributes([name])
        feature.setGeometry(geometry)
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def features_of(context, output) -> list:
    from qgis.core import QgsProcessingUtils

    layer = output if hasattr(output, "getFeatures") else QgsProcessingUtils.mapLayerFromString(output, context)
    return list(layer.getFeatures())


@pytest.mark.qgis
def test_probability_by_region_algorithm(qgis_processing, engine, run_gpkg, boxes_gpkg, tiny_clip, kauai_png, tmp_path):
    from test_cli import run

    layer = mercator_layer("Polygon", [(name, box_wkt(*box)) for name, box in BOXES.items()])
    context, feedback = context_and_feedback()
    done = qgis_processing.run(
        "geoclip:probability_by_region",
        {
            "RUN": str(run_gpkg),
            "REGIONS": layer,
            "NAME_FIELD": "name",
            "OUTPUT": "memory:",
            "REGIONS_OUTPUT": "memory:",
        },
        context=context,
        feedback=feedback,
    )
    assert done["ANSWERS"] == 3
    table = [(f["photo"], f["zone"], f["probability"], f["rank"]) for f in features_of(context, done["OUTPUT"])]
    answers = judging.answers_with_vectors(run_gpkg)
    assert len(table) == 6 and [t[0] for t in table[::2]] == [a.photo for a in answers]
    assert [t[3] for t in table] == [1, 2] * 3
    for answer in answers:
        p = engine.gallery_probabilities(answer.result.feature)
        mine = {zone: probability for photo, zone, probability, _ in table if photo == answer.photo}
        for name, box in BOXES.items():  # polygons given in EPSG:3857, judged in EPSG:4326
            assert mine[name] == pytest.approx(p[inside_box(engine, box)].sum(), rel=1e-6)
    # the map layer: the polygons as given, one field per answer
    regions = features_of(context, done["REGIONS_OUTPUT"])
    assert [f["name"] for f in regions] == list(BOXES)
    assert regions[0].geometry().asWkt() == layer.getFeature(1).geometry().asWkt()
    fields = [f.name() for f in regions[0].fields()]
    assert fields[0] == "name" and "p_Kauai" in fields and len(fields) == 4
    for feature in regions:
        kauai = {zone: prob for photo, zone, prob, _ in table if photo == str(kauai_png)}
        assert feature["p_Kauai"] == pytest.approx(kauai[feature["name"]], rel=1e-12)

    # the command line on the same polygons (a file in EPSG:4326) gives the same numbers
    out = run("zones", run_gpkg, boxes_gpkg, "--name-field", "name", "--clip", tiny_clip)
    cli = [(r["photo"], r["zone"], float(r["probability"]), int(r["rank"])) for r in rows_of(out.stdout)]
    assert [c[:2] for c in cli] == [t[:2] for t in table] and [c[3] for c in cli] == [t[3] for t in table]
    np.testing.assert_allclose([c[2] for c in cli], [t[2] for t in table], rtol=1e-6)

    # one answer: 'probability' and 'rank' fields
    context, feedback = context_and_feedback()
    one = qgis_processing.run(
        "geoclip:probability_by_region",
        {
            "RUN": str(run_gpkg),
            "PHOTO": kauai_png.name,
            "REGIONS": layer,
            "OUTPUT": str(tmp_path / "zones.gpkg"),
            "REGIONS_OUTPUT": str(tmp_path / "regions.gpkg"),
        },
        context=context,
        feedback=feedback,
    )
    regions = features_of(context, one["REGIONS_OUTPUT"])  # GeoPackages this time
    assert [f.name() for f in regions[0].fields()] == ["fid", "name", "probability", "rank"]
    kauai = {zone: prob for photo, zone, prob, _ in table if photo == str(kauai_png)}
    assert sorted(f["rank"] for f in regions) == [1, 2]
    # without a name field, zones are named by feature id
    assert {f["zone"] for f in features_of(context, one["OUTPUT"])} == {"1", "2"}
    assert [f["probability"] for f in regions] == pytest.approx([kauai["west"], kauai["east"]], rel=1e-12)


@pytest.mark.qgis
def test_probability_by_region_stops_between_answers(qgis_processing, run_gpkg):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    class CancelAfterFirst(QgsProcessingFeedback):
        """Cancel once the first answer is reported (not on progress: finding the places inside the
        polygons reports progress too, before any answer)."""

        answered = False

        def pushInfo(self, info):  # noqa: N802 - QGIS API
            self.answered = self.answered or ":" in info
            super().pushInfo(info)

        def isCanceled(self):  # noqa: N802 - QGIS API
            return self.answered

    layer = mercator_layer("Polygon", [(name, box_wkt(*box)) for name, box in BOXES.items()])
    context, _ = context_and_feedback()
    feedback = CancelAfterFirst()
    done = qgis_processing.run(
        "geoclip:probability_by_region",
        {"RUN": str(run_gpkg), "REGIONS": layer, "OUTPUT": "memory:", "REGIONS_OUTPUT": "memory:"},
        context=context,
        feedback=feedback,
    )
    assert done["ANSWERS"] == 1 and len(features_of(context, done["OUTPUT"])) == 2
    context, feedback = context_and_feedback()
    with pytest.raises(QgsProcessingException, match="keeps no query vector for nowhere.png"):
        qgis_processing.run(
            "geoclip:probability_by_region",
            {"RUN": str(run_gpkg), "PHOTO": "nowhere.png", "REGIONS": layer, "OUTPUT": "memory:"},
            context=context,
            feedback=feedback,
        )


@pytest.mark.qgis
def test_how_likely_here_algorithm(qgis_processing, run_gpkg, tiny_clip, kauai_png, tmp_path):
    from test_cli import run

    (answer,) = judging.answers_with_vectors(run_gpkg, [kauai_png.name])
    top = answer.result.candidates[0]
    far_lat, far_lon = -top.lat, top.lon - 180 if top.lon > 0 else top.lon + 180  # the other side of the Earth
    rows = [("top", f"POINT({top.lon} {top.lat})"), ("far", f"POINT({far_lon} {far_lat})")]
    layer = mercator_layer("Point", rows)
    context, feedback = context_and_feedback()
    done = qgis_processing.run(
        "geoclip:how_likely_here",
        {"RUN": str(run_gpkg), "PHOTO": kauai_png.name, "POINTS": layer, "NAME_FIELD": "name", "OUTPUT": "memory:"},
        context=context,
        feedback=feedback,
    )
    assert done["ANSWERS"] == 1
    found = features_of(context, done["OUTPUT"])
    assert [f["name"] for f in found] == ["top", "far"] and {f["photo"] for f in found} == {str(kauai_png)}
    assert [f.name() for f in found[0].fields()] == ["name", "photo", *judging.LIKELY_COLUMNS]
    mine = {f["name"]: f for f in found}
    point = mine["top"].geometry().asPoint()  # written in EPSG:4326
    assert (point.y(), point.x()) == pytest.approx((top.lat, top.lon), abs=1e-7)
    assert mine["top"]["rank"] < mine["far"]["rank"]
    assert mine["top"]["density_ratio"] > mine["far"]["density_ratio"]
    for feature in found:
        masses = [feature[f"mass_within_{r}km"] for r in (1, 25, 200)]
        assert 0 <= masses[0] <= masses[1] <= masses[2] <= 1
        assert 0 < feature["credible_level"] <= 1 and feature["cells"] == 1440 * 720
    assert mine["top"]["mass_within_200km"] > mine["far"]["mass_within_200km"]

    # the command line's `likely` on the same places (a CSV of lat/lon) gives the same numbers
    places = tmp_path / "places.csv"
    places.write_text(f"name,lat,lon\ntop,{top.lat!r},{top.lon!r}\nfar,{far_lat!r},{far_lon!r}\n")
    out = run(
        "likely",
        run_gpkg,
        places,
        "--photo",
        kauai_png.name,
        "--id-field",
        "name",
        "--clip",
        tiny_clip,
        "--precision",
        "bf16",
    )
    for row in rows_of(out.stdout):
        assert row["photo"] == str(kauai_png)
        for column in judging.LIKELY_COLUMNS:
            assert float(row[column]) == pytest.approx(mine[row["id"]][column], rel=1e-6, abs=1e-12), column


@pytest.mark.qgis
def test_a_region_beyond_its_coordinate_system_is_refused_by_name(qgis_processing, run_gpkg):
    """An EPSG:3857 square 10^12 m wide would wrap into a band of the world and take a share of the
    gallery; Processing refuses it by the engine's rule instead."""
    from qgis.core import QgsFeature, QgsGeometry, QgsProcessingException, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=EPSG:3857&field=name:string", "received", "memory")
    feature = QgsFeature(layer.fields())
    feature.setAttributes(["huge"])
    feature.setGeometry(QgsGeometry.fromWkt(box_wkt(-5e11, -5e11, 5e11, 5e11)))
    layer.dataProvider().addFeatures([feature])
    context, feedback = context_and_feedback()
    with pytest.raises(QgsProcessingException, match="beyond its coordinate system's valid area"):
        qgis_processing.run(
            "geoclip:probability_by_region",
            {"RUN": str(run_gpkg), "REGIONS": layer, "OUTPUT": "memory:"},
            context=context,
            feedback=feedback,
        )
