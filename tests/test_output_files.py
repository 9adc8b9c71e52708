"""The answer writers' interface (one class per format, only the GeoPackage a resumable store) and the
one way GeoPackages and GeoTIFFs are written (marks, EPSG:4326, checked writes, nothing left on failure)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from geoclip_qgis.backend.errors import GeoCLIPError, WriteError
from geoclip_qgis.backend.output.answer_writer import AnswerWriter, DiscardWriter, ResumableStore
from geoclip_qgis.backend.output.writers import CsvWriter, GeoJsonWriter, GeoPackageWriter, open_writer
from geoclip_qgis.backend.results import AnswerKind, Candidate, OutputKind, PhotoResult

gdal = pytest.importorskip("osgeo.gdal")
ogr = pytest.importorskip("osgeo.ogr")


def _answer(photo: str, sha256: str, kind: AnswerKind = AnswerKind.PHOTO) -> PhotoResult:
    candidates = [Candidate(1, 48.85, 2.35, 0.6), Candidate(2, 45.76, 4.84, 0.3)]
    return PhotoResult(photo, candidates, sha256=sha256, kind=kind)


def test_each_format_has_its_writer_and_only_a_geopackage_is_a_resumable_store(tmp_path):
    expected = {"a.csv": CsvWriter, "a.geojson": GeoJsonWriter, "a.json": GeoJsonWriter, "a.gpkg": GeoPackageWriter}
    for name, kind in expected.items():
        writer = open_writer(tmp_path / name, model="test")
        try:
            assert type(writer) is kind and isinstance(writer, AnswerWriter)
            assert isinstance(writer, ResumableStore) is (kind is GeoPackageWriter)
        finally:
            writer.close()
    stream = io.StringIO()
    writer = open_writer(None, stdout=stream)
    assert type(writer) is CsvWriter and not isinstance(writer, ResumableStore)
    assert not isinstance(DiscardWriter(), ResumableStore)
    with pytest.raises(TypeError):
        AnswerWriter()  # the interface is abstract: a writer states every part of it


def test_a_geopackage_store_remembers_runs_answers_and_replaces_a_joint_answer(tmp_path):
    path = tmp_path / "run.gpkg"
    store = GeoPackageWriter(path, model="test", run_at="2026-01-01T00:00:00+00:00", batch=1)
    assert store.previous_settings() is None and store.answered_hashes() == set()
    store.record_run({"run_at": "2026-01-01T00:00:00+00:00", "top_k": 2})
    store.write(_answer("a.jpg", "aa"))
    store.write(_answer("fused: 1 photos", "", AnswerKind.FUSED))
    store.write(PhotoResult("broken.jpg", error="not a photo", sha256="bb"))
    store.write_table("accuracy", {"model": "test", "photos": 1, "within_25km": 0.5})
    store.close()
    store.close()  # a second close does nothing

    again = GeoPackageWriter(path, model="test", run_at="2026-01-02T00:00:00+00:00")
    assert again.previous_settings()["top_k"] == 2
    assert again.answered_hashes() == {"aa"}
    again.remove_answers(AnswerKind.FUSED)
    again.close()
    kinds = {output.layer: output.kind for output in again.outputs()}
    assert kinds == {
        "predictions": OutputKind.POINTS,
        "errors": OutputKind.ERRORS,
        "accuracy": OutputKind.ACCURACY,
    }
    source = ogr.Open(str(path))
    assert sorted({f.GetField("photo") for f in source.GetLayerByName("predictions")}) == ["a.jpg"]
    assert source.GetLayerByName("errors").GetFeatureCount() == 1
    assert source.GetLayerByName("runs").GetFeatureCount() == 1


def test_a_geojson_is_whole_or_absent(tmp_path):
    path = tmp_path / "run.geojson"
    writer = GeoJsonWriter(path, model="test")
    writer.write(_answer("a.jpg", "aa"))
    writer.abort()  # the run failed elsewhere: no half file, no unfinished copy
    assert not path.exists() and list(tmp_path.iterdir()) == []
    writer = GeoJsonWriter(path, model="test")
    writer.write(_answer("a.jpg", "aa"))
    writer.write(PhotoResult("broken.jpg", error="not a photo"))
    writer.close()
    source = ogr.Open(str(path))  # held while its layer is read: GDAL frees a layer with its dataset
    assert source.GetLayer(0).GetFeatureCount() == 3 and writer.outputs()[0].kind == OutputKind.POINTS


def test_a_geopackage_file_marks_checks_and_leaves_nothing_when_filling_fails(tmp_path):
    from geoclip_qgis.backend.output.gpkg_files import LAYER_MARK, OUTPUT_MARK, output_is_ours, write_output

    path = tmp_path / "out.gpkg"

    def fill(gpkg):
        layer = gpkg.create_layer("things", ogr.wkbPoint, options=())
        gpkg.add_field(layer, ogr.FieldDefn("name", ogr.OFTString))
        with gpkg.transaction():
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("name", "one")
            gpkg.add_feature(layer, feature)

    assert write_output(path, "things", fill, 1) == path
    source = ogr.Open(str(path))
    layer = source.GetLayerByName("things")
    assert source.GetMetadataItem(OUTPUT_MARK) == "things" and layer.GetMetadataItem(LAYER_MARK) == "things"
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    assert output_is_ours(path, "things") and not output_is_ours(path, "other")
    source = layer = None
    before = path.read_bytes()

    def fail(gpkg):
        fill(gpkg)
        raise GeoCLIPError("stopped")

    with pytest.raises(GeoCLIPError, match="stopped"):
        write_output(path, "things", fail, 1)
    with pytest.raises(WriteError, match="did not read back whole"):
        write_output(path, "things", fill, 2)  # a count that does not read back: the file is not replaced
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]
    with pytest.raises(WriteError, match="not a GeoPackage of other"):
        write_output(path, "other", fill, 1)


def test_a_geotiff_is_put_in_place_whole_or_not_at_all(tmp_path):
    from geoclip_qgis.backend.output.geotiff_files import GeoTiffFile, is_ours

    path = tmp_path / "r" / "map.tif"
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    arguments = (4, 3, 1, gdal.GDT_Float32, ["COMPRESS=DEFLATE"], (0.0, 1.0, 0.0, 3.0, 0.0, -1.0))
    with GeoTiffFile(path, *arguments, {"GEOCLIP_RASTER": "test"}) as tiff:
        tiff.write(1, values)  # left without finishing: nothing stays
    assert list(path.parent.iterdir()) == []

    with GeoTiffFile(path, *arguments, {"GEOCLIP_RASTER": "test"}) as tiff:
        tiff.write(1, values[:2], row0=1)
        tiff.write(1, values[:1])
        assert tiff.finish() == path
    assert list(path.parent.iterdir()) == [path] and is_ours(path)
    dataset = gdal.Open(str(path))
    assert dataset.GetMetadataItem("GEOCLIP_RASTER") == "test" and dataset.GetGeoTransform()[3] == 3.0
    assert dataset.GetSpatialRef().GetAuthorityCode(None) == "4326"
    np.testing.assert_array_equal(dataset.ReadAsArray(), np.vstack([values[:1], values[:2]]))
