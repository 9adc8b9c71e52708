"""Confidence areas a map can hold: an unsure answer's exact area (tens of thousands of single cells,
megabytes a photo) is stored generalised — at most MAX_PARTS parts, simplified, still holding its
level of the probability measured on the raster — and QGIS draws it as outlines, for the selected
answer only. With the rest of the same walk through QGIS: no empty "camera direction" legend entry,
and the "similar places" raster see-through, in a group of its own, its point's order said."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qgis_support import StandInInterface, qgis_app

from geoclip_qgis.backend.earth import confidence
from geoclip_qgis.backend.geo import EARTH_RADIUS_KM
from geoclip_qgis.backend.model.rasters import Raster


@pytest.fixture(scope="module")
def engine(raster_engine):
    """This module's answers go on to rasters: the bf16 engine (see conftest)."""
    return raster_engine


LEVELS = (0.5, 0.9)


@pytest.fixture(scope="module")
def run(engine, samples, skimage_data, tmp_path_factory):
    """Three photos answered by the tests' small random CLIP: answers as unsure as they come."""
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.workbench.run_file import read_answers

    gpkg = tmp_path_factory.mktemp("areas") / "areas.gpkg"
    photos = [str(samples / "gps" / "DSCN0010.jpg"), str(skimage_data / "coffee.png"), str(skimage_data / "camera.png")]
    execute(RunRequest(photos=photos, top_k=3, output=str(gpkg), confidence=True), engine)
    return gpkg, read_answers(gpkg)


def _rows(gpkg):
    from osgeo import ogr

    source = ogr.Open(str(gpkg))
    layer = source.GetLayerByName("confidence_areas")
    rows = []
    for feature in layer:
        row = {key: feature.GetField(key) for key in feature.keys()}
        row["geometry"] = feature.GetGeometryRef().Clone()
        rows.append(row)
    return rows


def _vertices(geometry) -> int:
    return sum(
        geometry.GetGeometryRef(p).GetGeometryRef(r).GetPointCount()
        for p in range(geometry.GetGeometryCount())
        for r in range(geometry.GetGeometryRef(p).GetGeometryCount())
    )


def _mass_inside(geometry, raster: Raster) -> float:
    """The raster's probability in the cells whose centres the geometry holds (GDAL's rasterizer)."""
    from osgeo import gdal, ogr

    grid = gdal.GetDriverByName("MEM").Create("", raster.cols, raster.rows, 1, gdal.GDT_Byte)
    grid.SetGeoTransform((raster.west, raster.cell, 0.0, raster.north, 0.0, -raster.cell))
    vectors = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vectors.CreateLayer("area", grid.GetSpatialRef(), ogr.wkbMultiPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(geometry)
    layer.CreateFeature(feature)
    assert gdal.RasterizeLayer(grid, [1], layer, burn_values=[1]) == 0
    inside = grid.GetRasterBand(1).ReadAsArray() > 0
    values = np.nan_to_num(raster.values.astype(np.float64))
    return float(values[inside].sum() / values.sum())


def _equal_area_km2(geometry) -> float:
    """Area in a cylindrical equal-area projection of the same sphere (edges straight in lon/lat)."""
    from osgeo import osr

    geometry = geometry.Clone()
    geometry.Segmentize(0.05)
    wgs84, cea = osr.SpatialReference(), osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    cea.ImportFromProj4(f"+proj=cea +R={EARTH_RADIUS_KM * 1000} +units=m")
    geometry.Transform(osr.CoordinateTransformation(wgs84, cea))
    return geometry.GetArea() / 1e6


def _exact(world: Raster, local, level: float):
    """The exact highest-density region as HEAD stored it: its parts, vertices and area."""
    cells = confidence.probability_cells(world, local)
    order = confidence.density_order(cells)
    cumulative = np.cumsum(cells.probability[order])
    chosen = order[: int(np.searchsorted(cumulative, level * cumulative[-1])) + 1]
    polygons = []
    for source, raster in enumerate(cells.rasters, start=confidence.WORLD):
        picked = chosen[cells.source[chosen] == source]
        mask = np.zeros(raster.values.shape, dtype=bool)
        mask[cells.row[picked], cells.col[picked]] = True
        if picked.size:
            polygons += confidence._polygons(mask, raster)
    vertices = sum(p.GetGeometryRef(r).GetPointCount() for p in polygons for r in range(p.GetGeometryCount()))
    return len(polygons), vertices, float(cells.area_km2[chosen].sum())


# ------------------------------------------------------------------------------------------- engine


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_unsure_answers_get_areas_a_map_can_hold(run, engine):
    """Each area: at most MAX_PARTS parts, far fewer vertices than the exact area, its level of the
    probability still inside (measured on the world raster by GDAL, cell centres), its area the
    polygons' own, and what was done said in the row."""
    gpkg, answers = run
    rows = _rows(gpkg)
    assert sorted((r["photo"], r["level"]) for r in rows) == sorted((a.photo, lv) for a in answers for lv in LEVELS)
    generalised = 0
    for answer in answers:
        made = engine.rasters(answer.result)
        mine = {r["level"]: r for r in rows if r["photo"] == answer.photo}
        for level in LEVELS:
            row, geometry = mine[level], mine[level]["geometry"]
            assert geometry.IsValid() and geometry.GetGeometryName() == "MULTIPOLYGON"
            assert row["parts"] == geometry.GetGeometryCount() <= confidence.MAX_PARTS
            exact_parts, exact_vertices, exact_km2 = _exact(made.world, made.local, level)
            assert row["exact_km2"] == pytest.approx(exact_km2, rel=1e-9)
            assert row["mass"] >= level
            if row["smoothing_deg"] == 0 and not row["dropped_parts"] and not row["simplified_deg"]:
                assert row["area_km2"] == pytest.approx(exact_km2, rel=1e-9) and not row["note"]
                continue
            generalised += 1
            assert exact_parts > confidence.MAX_PARTS  # the speckle it replaces
            assert _vertices(geometry) <= exact_vertices / 10
            assert geometry.WkbSize() < 120_000  # bytes; the exact 90 % areas here are 4-5 MB
            measured = _mass_inside(geometry, made.world)  # smoothed areas are on the world grid alone
            assert measured >= level - 1e-9 and measured == pytest.approx(row["mass"], abs=1e-9)
            assert row["area_km2"] == pytest.approx(_equal_area_km2(geometry), rel=1e-3)
            assert row["area_km2"] >= row["exact_km2"]  # no smaller than the smallest area holding the level
            assert row["smoothing_deg"] in [r * made.world.cell for r in (0, *confidence.SMOOTHING_RADII)]
            if row["simplified_deg"]:
                assert row["simplified_deg"] == confidence.SIMPLIFY_CELLS * made.world.cell
                assert "simplified" in row["note"]
            if row["smoothing_deg"]:
                assert "smoothed" in row["note"] and f"{exact_km2:,.0f} km²" in row["note"]
        half, most = mine[0.5]["geometry"], mine[0.9]["geometry"]
        assert half.Difference(most).GetArea() <= 1e-3 * half.GetArea()  # the 50 % area inside the 90 %
    assert generalised >= len(answers)  # every 90 % area of these answers was speckle


def _speckle_with_a_blob() -> Raster:
    """1° world raster: a 250-cell blob holding 0.9, five single cells each a little denser holding 0.004
    apiece, the rest spread thin."""
    values = np.full((180, 360), 0.0, dtype=np.float64)
    values[80:90, 100:125] = 0.9 / 250
    for index in range(5):
        values[40 + 10 * index, 300] = 0.004  # single cells, apart from each other and the blob
    rest = values == 0
    values[rest] = (1 - values.sum()) / rest.sum()
    return Raster(values.astype(np.float32), -180.0, 90.0, 1.0, "world")


def test_parts_beyond_the_cap_are_left_out_and_made_up_for():
    world = _speckle_with_a_blob()
    area = confidence.confidence_areas(world, levels=(0.9,), max_parts=3)[0]
    assert area.parts == 3 and area.dropped_parts == 3 and area.smoothing_deg == 0
    assert area.mass >= 0.9 and area.mass == pytest.approx(_mass_inside(_geometry(area.wkt), world), abs=1e-7)
    assert "3 least probable parts left out" in area.note
    whole = confidence.confidence_areas(world, levels=(0.9,))[0]  # within the usual cap: exact
    assert whole.parts == 6 and whole.dropped_parts == 0 and not whole.note
    assert whole.area_km2 == pytest.approx(whole.exact_km2, rel=1e-9) == area.exact_km2


def _geometry(wkt):
    from osgeo import ogr

    return ogr.CreateGeometryFromWkt(wkt)


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_speckle_is_smoothed_until_it_has_few_parts():
    """Seeded noise over the whole world: the exact 90 % area is thousands of single cells."""
    rng = np.random.default_rng(7)
    values = rng.lognormal(0.0, 1.5, size=(720, 1440))
    values[300:340, 700:780] *= 6.0  # one likelier region among the noise
    values /= values.sum()
    world = Raster(values.astype(np.float32), -180.0, 90.0, 0.25, "world")
    half, most = confidence.confidence_areas(world)
    for area in (half, most):
        geometry = _geometry(area.wkt)
        assert geometry.IsValid() and area.parts == geometry.GetGeometryCount() <= confidence.MAX_PARTS
        assert area.smoothing_deg > 0 and area.mass >= area.level
        assert _mass_inside(geometry, world) == pytest.approx(area.mass, abs=1e-9)
        assert _vertices(geometry) <= confidence.MAX_VERTICES or area.simplified_deg == 0.25
    assert half.smoothing_deg == most.smoothing_deg
    assert _exact(world, (), 0.9)[0] > 20 * confidence.MAX_PARTS


def test_a_sharp_answer_keeps_its_exact_area():
    lat = np.linspace(89.875, -89.875, 720)[:, None]
    lon = np.linspace(-179.875, 179.875, 1440)[None, :]
    values = np.exp(-((lat - 48.0) ** 2 + (lon - 2.0) ** 2) / 2.0)  # a 1° bump
    world = Raster((values / values.sum()).astype(np.float32), -180.0, 90.0, 0.25, "world")
    for area in confidence.confidence_areas(world):
        assert area.parts == 1 and area.smoothing_deg == 0 and area.dropped_parts == 0 and not area.note
        assert area.simplified_deg == 0 and area.mass >= area.level
        assert area.area_km2 == pytest.approx(area.exact_km2, rel=1e-9)
        assert area.area_km2 == pytest.approx(_equal_area_km2(_geometry(area.wkt)), rel=1e-4)


def test_geodesic_area_of_a_cell_and_a_triangle():
    from osgeo import ogr

    cell = ogr.CreateGeometryFromWkt("POLYGON ((10 40,11 40,11 41,10 41,10 40))")
    sphere = EARTH_RADIUS_KM**2 * math.radians(1) * (math.sin(math.radians(41)) - math.sin(math.radians(40)))
    assert confidence.geodesic_area_km2(cell) == pytest.approx(sphere, rel=1e-12)
    holed = ogr.CreateGeometryFromWkt("POLYGON ((0 0,0 30,30 0,0 0),(1 1,10 1,1 10,1 1))")
    assert confidence.geodesic_area_km2(holed) == pytest.approx(_equal_area_km2(holed), rel=1e-4)


# ------------------------------------------------------------------------------------------- QGIS


def _drawn(layer) -> set[str]:
    """The answers whose features the layer's renderer draws."""
    from qgis.core import QgsExpressionContext, QgsExpressionContextUtils, QgsRenderContext

    context = QgsRenderContext()
    context.setExpressionContext(QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer)))
    renderer = layer.renderer().clone()
    renderer.startRender(context, layer.fields())
    drawn = set()
    for feature in layer.getFeatures():
        context.expressionContext().setFeature(feature)
        if renderer.willRenderFeature(feature, context):
            drawn.add(feature["photo"])
    renderer.stopRender(context)
    return drawn


def _areas_layer(gpkg):
    from geoclip_qgis.backend.results import OutputFile, OutputKind
    from geoclip_qgis.map.layers import make_layer

    return make_layer(OutputFile(OutputKind.CONFIDENCE_AREAS, str(gpkg), layer="confidence_areas"))


@pytest.mark.qgis
def test_qgis_draws_outlines_of_the_selected_answer_only(run):
    qgis_app()
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsProject, QgsRectangle
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor

    from geoclip_qgis.map.styles import confidence_answer, show_confidence_areas_of
    from geoclip_qgis.ui.results_panel import ResultsPanel

    gpkg, answers = run
    layer = _areas_layer(gpkg)
    rules = layer.renderer().rootRule().children()
    assert {r.label() for r in rules} == {"50 % confidence area", "90 % confidence area"}
    for rule in rules:
        assert all(
            rule.symbol().symbolLayer(i).brushStyle() == Qt.BrushStyle.NoBrush for i in range(len(rule.symbol()))
        )
    first, second = answers[0].photo, answers[1].photo
    assert confidence_answer(layer) == first and _drawn(layer) == {first}  # before any choice: the first
    show_confidence_areas_of([layer], second)
    assert _drawn(layer) == {second}
    show_confidence_areas_of([layer], None)
    assert _drawn(layer) == {a.photo for a in answers}

    # rendered at world scale: thin outlines, not a map filled with orange
    show_confidence_areas_of([layer], first)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(QgsRectangle(-180, -90, 180, 90))
    settings.setOutputSize(QSize(720, 360))
    settings.setBackgroundColor(QColor(255, 255, 255, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    pixels = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), dtype=np.uint8).reshape(360, 720, 4)
    painted = float((pixels[..., 3] > 0).mean())
    assert 0.001 < painted < 0.25, painted  # one exact 90 % area of these answers paints over half the map

    # the results panel's choice of answer is the one drawn
    project = QgsProject.instance()
    project.removeAllMapLayers()
    project.addMapLayer(layer)
    panel = ResultsPanel(StandInInterface())
    try:
        panel.show_run(str(gpkg))
        assert _drawn(layer) == {first}
        panel.list.setCurrentRow(2)
        assert confidence_answer(layer) == answers[2].photo and _drawn(layer) == {answers[2].photo}
    finally:
        panel.deleteLater()
        project.removeAllMapLayers()


@pytest.mark.qgis
def test_camera_direction_is_in_the_legend_only_when_a_photo_has_one():
    qgis_app()
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    from geoclip_qgis.map.styles import add_time_and_direction, style_points

    def points(direction):
        layer = QgsVectorLayer(
            "Point?crs=EPSG:4326&field=photo:string&field=rank:integer&field=probability:double"
            "&field=exif_lat:double&field=exif_lon:double&field=direction:double&field=timestamp:string",
            "answers",
            "memory",
        )
        for rank, facing in ((1, direction), (2, None)):
            feature = QgsFeature(layer.fields())
            feature.setAttributes(["a.jpg", rank, 0.5 / rank, 48.0, 2.0, facing, None])
            feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(2.0 + rank, 48.0)))
            layer.dataProvider().addFeature(feature)
        style_points(layer)
        add_time_and_direction(layer)
        return [rule.label() for rule in layer.renderer().rootRule().children()]

    assert "camera direction (EXIF)" not in points(None)
    assert points(None) == ["other candidates", "top-1 answer"]
    assert "camera direction (EXIF)" in points(135.0)


@pytest.mark.qgis
def test_similar_places_raster_is_see_through_and_apart_from_runs(tmp_path):
    qgis_app()
    from osgeo import gdal
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject, QgsRasterLayer

    from geoclip_qgis.map.layers import APART_PROPERTY, RUN_PROPERTY, run_group
    from geoclip_qgis.processing.location_algorithms import (
        SIMILAR_OPACITY,
        SimilarPlaces,
        _SimilarityStyle,
        similar_group,
    )

    path = str(tmp_path / "similar.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(path, 40, 20, 1, gdal.GDT_Float32)
    dataset.SetGeoTransform((0.0, 0.25, 0.0, 51.0, 0.0, -0.25))
    dataset.GetRasterBand(1).WriteArray(np.linspace(-0.2, 1.0, 800, dtype=np.float32).reshape(20, 40))
    dataset = None
    project = QgsProject.instance()
    project.removeAllMapLayers()
    group = run_group(project, "holiday — 3 photos", str(tmp_path / "run.gpkg"), "2026-01-01T00:00:00")
    raster = QgsRasterLayer(path, "Similarity raster")
    project.addMapLayer(raster, False)
    group.addLayer(raster)  # where Processing's insertion point (the selected run group) put it
    context = QgsProcessingContext()
    context.setProject(project)
    title = similar_group(48.8566, 2.3522)
    assert "48.8566, 2.3522 (lat, lon)" in title
    _SimilarityStyle(title).postProcessLayer(raster, context, QgsProcessingFeedback())
    try:
        node = project.layerTreeRoot().findLayer(raster.id())
        parent = node.parent()
        assert parent.name() == title and parent.customProperty(APART_PROPERTY) == title
        assert parent.parent() is project.layerTreeRoot() and not parent.customProperty(RUN_PROPERTY)
        assert group.findLayers() == []
        renderer = raster.renderer()
        assert renderer.opacity() == pytest.approx(SIMILAR_OPACITY) and SIMILAR_OPACITY < 1
        items = renderer.shader().rasterShaderFunction().colorRampItemList()
        assert items[0].color.alpha() == 0 and items[-1].color.alpha() == 255
    finally:
        project.removeAllMapLayers()
        project.layerTreeRoot().removeAllChildren()

    algorithm = SimilarPlaces()
    algorithm.initAlgorithm()
    assert "lon, lat" in algorithm.parameterDefinition("POINT").description()
    assert "longitude first, then latitude" in algorithm.shortHelpString()
