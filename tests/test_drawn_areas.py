"""A raster's confidence classes are the confidence polygons: one build (``confidence.drawn_areas``)
gives the polygons a run stores and the level band (band 2) its rasters carry, so the cells a user sees
in a raster's 50 % and 90 % classes are the cells inside the 50 % and 90 % polygons, and they hold 50 %
and 90 % of the probability. On a real camera photo through the tests' small random CLIP (a diffuse
answer: generalised areas) and on an oracle query, the real location encoder's feature of a known place
(a sharp answer: exact areas). Real GeoCLIP heads (geoclip wheel), bf16 grid."""

from __future__ import annotations

import numpy as np
import pytest

from geoclip_qgis.backend.earth import confidence
from geoclip_qgis.backend.model.rasters import Raster


def _raster(path) -> tuple[Raster, np.ndarray]:
    """A run's GeoTIFF: its probabilities as a Raster, and its level band."""
    from osgeo import gdal

    dataset = gdal.Open(str(path))
    west, cell, _, north, _, _ = dataset.GetGeoTransform()
    kind = dataset.GetMetadataItem("GEOCLIP_RASTER")
    assert dataset.RasterCount == 2 and dataset.GetMetadataItem("GEOCLIP_LEVELS_BAND") == "2"
    values, levels = (dataset.GetRasterBand(b).ReadAsArray() for b in (1, 2))
    return Raster(values, west, north, cell, kind), levels


def _polygons(gpkg) -> tuple[dict[float, object], bool]:
    """The stored polygons by level, and whether they were built on the world cells alone (smoothed)."""
    from osgeo import ogr

    source = ogr.Open(str(gpkg))
    rows = [
        (f.GetField("level"), f.GetGeometryRef().Clone(), f.GetField("smoothing_deg"))
        for f in source.GetLayerByName("confidence_areas")
    ]
    return {level: geometry for level, geometry, _ in rows}, any(smoothing > 0 for *_, smoothing in rows)


def _seen(cells: confidence.Cells, grids: list[np.ndarray]) -> np.ndarray:
    """(M,) each cell's value in the band of the raster it comes from."""
    seen = np.empty(cells.probability.shape)
    for source, grid in enumerate(grids, start=confidence.WORLD):
        here = cells.source == source
        seen[here] = grid[cells.row[here], cells.col[here]]
    return seen


def _check(world: Raster, local: list[Raster], levels: list[np.ndarray], polygons: dict, world_only: bool) -> None:
    """For 0.5 and 0.9: the band's class (values up to the level) is exactly the cells whose centres the
    polygon holds, and they hold the level. On the grid the polygons were built on: the world raster
    refined by the local ones, or (smoothed areas) the world raster's cells, whose values every local
    cell inside them then shows."""
    if world_only:
        cells, grids = confidence.probability_cells(world), [levels[0]]
        for raster, band in zip(local, levels[1:]):
            rows, cols = np.nonzero(np.isfinite(raster.values))
            world_row = np.floor((world.north - (raster.north - (rows + 0.5) * raster.cell)) / world.cell).astype(int)
            world_col = np.floor((raster.west + (cols + 0.5) * raster.cell - world.west) / world.cell).astype(int)
            assert np.array_equal(band[rows, cols], levels[0][world_row, world_col])
    else:
        cells = confidence.probability_cells(world, local)
        grids = [levels[0]] + [levels[1 + next(i for i, r in enumerate(local) if r is u)] for u in cells.rasters[1:]]
    seen = _seen(cells, grids)
    drawn = {float(np.float32(level)) for level in (*confidence.RASTER_LEVELS, confidence.OUTSIDE)}  # as stored
    assert np.isfinite(seen).all() and set(np.unique(seen).tolist()) <= drawn
    for level in confidence.LEVELS:
        in_class = seen <= level
        inside = confidence._inside(polygons[level], cells)
        assert np.array_equal(in_class, inside), (level, int(in_class.sum()), int(inside.sum()))
        assert cells.probability[in_class].sum() / cells.total >= level - 1e-6


@pytest.fixture(scope="module")
def photo_run(raster_engine, samples, tmp_path_factory):
    from geoclip_qgis.backend.pipeline.run import RasterOptions, RunRequest, execute

    folder = tmp_path_factory.mktemp("drawn")
    photo = samples / "gps" / "DSCN0010.jpg"
    request = RunRequest(
        photos=[str(photo)],
        top_k=3,
        output=str(folder / "run.gpkg"),
        confidence=True,
        rasters=RasterOptions(folder=str(folder / "rasters")),
    )
    execute(request, raster_engine)
    return folder


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_photos_raster_classes_are_its_confidence_polygons(photo_run):
    (world_file,) = sorted((photo_run / "rasters").glob("*_world.tif"))
    local_files = sorted((photo_run / "rasters").glob("*_local*.tif"))
    assert local_files
    world, world_levels = _raster(world_file)
    local = [_raster(path) for path in local_files]
    polygons, world_only = _polygons(photo_run / "run.gpkg")
    _check(world, [r for r, _ in local], [world_levels, *(levels for _, levels in local)], polygons, world_only)


def test_an_oracle_answers_classes_are_its_exact_areas(raster_engine):
    """A sharp answer's areas are exact; the band draws them, and the stored polygons are the same build's."""
    import torch
    from osgeo import ogr

    from geoclip_qgis.backend.results import PhotoResult

    with torch.inference_mode():
        feature = raster_engine.heads.location_features(torch.tensor([[21.97, -159.53]]))[0]  # Kauai
    made = raster_engine.rasters(PhotoResult("oracle Kauai", feature=feature.numpy()))
    drawn = confidence.drawn_areas(made.world, made.local)
    assert [a.level for a in drawn.areas] == list(confidence.RASTER_LEVELS)
    assert all(a.smoothing_deg == 0 and not a.note for a in drawn.areas)
    polygons = {a.level: ogr.CreateGeometryFromWkt(a.wkt) for a in drawn.stored()}
    _check(made.world, made.local, [drawn.world_levels, *drawn.local_levels], polygons, world_only=False)
    plain = confidence.confidence_areas(made.world, made.local)  # the same areas asked on their own
    assert [(a.level, a.wkt) for a in plain] == [(a.level, a.wkt) for a in drawn.stored()]


def _render(layers, extent, width: int, height: int):
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


@pytest.mark.qgis
def test_qgis_draws_the_classes_inside_the_outlines(photo_run):
    """The plugin styles band 2 in classes up to 0.25 / 0.5 / 0.75 / 0.9 (the rest not drawn); rendered,
    every world cell around the answer shows its class's colour, or nothing outside the areas. The
    picture (raster classes under the 50 % and 90 % outlines, on QGIS's world map) goes to docs/."""
    from pathlib import Path

    from qgis_support import qgis_app

    qgis_app()
    from qgis.core import QgsRasterLayer, QgsRectangle, QgsSingleBandPseudoColorRenderer, QgsVectorLayer
    from qgis.PyQt.QtGui import QColor

    from geoclip_qgis.map.layers import world_map_path
    from geoclip_qgis.map.styles import MASS_SHARES, style_basemap, style_confidence_areas, style_raster

    (world_file,) = sorted((photo_run / "rasters").glob("*_world.tif"))
    raster = QgsRasterLayer(str(world_file), "world")
    style_raster(raster)
    renderer = raster.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer) and renderer.band() == 2
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [i.value for i in items] == [0.25, 0.5, 0.75, 0.9, 1.0] and items[-1].color.alpha() == 0
    assert items[3].label == "90 % of the probability"
    areas = QgsVectorLayer(f"{photo_run / 'run.gpkg'}|layername=confidence_areas", "areas", "ogr")
    assert areas.isValid()
    style_confidence_areas(areas)

    world, levels = _raster(world_file)
    polygons, _ = _polygons(photo_run / "run.gpkg")
    west, east, south, north = polygons[0.9].GetEnvelope()
    # the 90 % area's cells and two around them, on the world grid
    col0, col1 = (int(np.floor((v - world.west) / world.cell)) for v in (west, east))
    row0, row1 = (int(np.floor((world.north - v) / world.cell)) for v in (north, south))
    col0, row0 = max(col0 - 2, 0), max(row0 - 2, 0)
    col1, row1 = min(col1 + 3, world.cols), min(row1 + 3, world.rows)
    scale = max(2, min(8, 1600 // (col1 - col0), 1600 // (row1 - row0)))  # pixels a cell
    extent = QgsRectangle(
        world.west + col0 * world.cell,
        world.north - row1 * world.cell,
        world.west + col1 * world.cell,
        world.north - row0 * world.cell,
    )
    image = _render([raster], extent, (col1 - col0) * scale, (row1 - row0) * scale)
    colours = {share: QColor(colour) for share, colour in MASS_SHARES}
    opacity, classes = renderer.opacity(), set()
    for row in range(row0, row1):
        for col in range(col0, col1):
            pixel = image.pixelColor((col - col0) * scale + scale // 2, (row - row0) * scale + scale // 2)
            level = round(float(levels[row, col]), 6)  # stored as float32
            classes.add(level)
            if level >= 1.0:
                assert (pixel.red(), pixel.green(), pixel.blue()) == (255, 255, 255), (row, col)
                continue
            want = colours[level]
            expected = [opacity * c + (1 - opacity) * 255 for c in (want.red(), want.green(), want.blue())]
            assert [pixel.red(), pixel.green(), pixel.blue()] == pytest.approx(expected, abs=3), (row, col, level)
    assert {0.5, 0.9, 1.0} <= classes  # the check saw inside and outside of both areas

    # a local window (0.01 deg) lies inside one class here: it is drawn as its probabilities on a ramp,
    # from see-through to the darkest blue at its most probable cell, with no claim of shares
    local_file = sorted((photo_run / "rasters").glob("*_local1.tif"))[0]
    window = QgsRasterLayer(str(local_file), "local")
    style_raster(window)
    ramp = window.renderer().shader().rasterShaderFunction()
    local, _ = _raster(local_file)
    peak = float(np.nanmax(local.values))
    assert window.renderer().band() == 1 and ramp.colorRampType() == ramp.Type.Interpolated
    assert [i.value for i in ramp.colorRampItemList()] == pytest.approx([0, peak / 3, 2 * peak / 3, peak], rel=1e-6)
    assert not any("%" in i.label and "most probable" not in i.label for i in ramp.colorRampItemList())

    countries = QgsVectorLayer(world_map_path() + "|layername=countries", "countries", "ogr")
    style_basemap(countries)
    wide = extent.buffered(max(extent.width(), extent.height()) * 0.05)
    picture = _render([areas, raster, countries], wide, 1000, round(1000 * wide.height() / wide.width()))
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert picture.save(str(docs / "qgis-confidence-classes.png"))
