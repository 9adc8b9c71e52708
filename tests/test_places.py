"""Answers as distinct places, refined on the location encoder, steered by hints and named areas.

Queries are oracle features (the real trained location encoder's feature of a known place, what a perfect
photo of it gives), blurred with noise where a photo's uncertainty matters; the real GeoCLIP heads and
100K gallery from the ``geoclip`` wheel. The text tower is the small generated CLIP's (random weights):
what a hint does to an answer is shown with oracle hints; the text path itself is shown to run and be
recorded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoclip_qgis.backend.errors import GeoCLIPError
from geoclip_qgis.backend.geo import haversine_km
from geoclip_qgis.backend.model.distinct_places import MIN_RADIUS_KM
from geoclip_qgis.backend.model.place_options import GALLERY_POINTS, PlaceOptions
from geoclip_qgis.backend.results import Hint


def oracle(engine, places, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    with torch.inference_mode():
        features = engine.heads.location_features(torch.tensor(places, dtype=torch.float32))
    if noise:
        generator = torch.Generator().manual_seed(seed)
        features = torch.nn.functional.normalize(
            features + noise * torch.randn(features.shape, generator=generator), dim=-1
        )
    return features


OFF_GRID = [(36.57, -93.40), (48.80, 2.20), (-1.35, 36.75), (35.60, 139.60), (-33.95, 151.10), (64.10, -21.80)]


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_no_answer_lists_the_same_place_twice(engine):
    """The gallery's raw top-k repeats coordinates (identical gallery points); distinct places never do:
    their gallery points are more than the merge distance apart, each carries a radius, the most probable
    first, and a place holds at least the probability of its best gallery point."""
    queries = oracle(engine, OFF_GRID, noise=0.06, seed=1)
    raw = engine.answer(queries, 20)
    assert any(len({(c.lat, c.lon) for c in row}) < len(row) for row in raw)  # the flaw being fixed
    options = PlaceOptions(refine=False)
    for row, gallery_row in zip(engine.answer(queries, 20, places=options), raw):
        assert len({(round(c.lat, 6), round(c.lon, 6)) for c in row}) == len(row)
        for i, a in enumerate(row):
            assert a.radius_km >= MIN_RADIUS_KM
            for b in row[i + 1 :]:
                assert haversine_km(a.gallery_lat, a.gallery_lon, b.gallery_lat, b.gallery_lon) > options.merge_km
        probabilities = [c.probability for c in row]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-9
        assert row[0].probability >= gallery_row[0].probability - 1e-9


def test_a_place_sums_the_probability_of_its_gallery_points(engine):
    """A diffuse answer spread over one city's many gallery points beats one lone, slightly more probable
    point: the top place is ranked by its summed probability."""
    query = oracle(engine, [(40.7128, -74.0060)], noise=0.2, seed=3)
    probabilities = engine.gallery_probabilities(query[0].numpy())
    places = engine.answer(query, 5, places=PlaceOptions(refine=False))[0]
    coordinates = engine.gallery.coordinates.numpy()
    top = places[0]
    near = haversine_km(top.gallery_lat, top.gallery_lon, coordinates[:, 0], coordinates[:, 1]) <= 25
    assert top.probability <= probabilities[near].sum() * 1.5 + 1e-9  # chains reach a little further
    assert top.probability >= probabilities[near].max()


def test_refined_coordinates_come_closer_to_the_place(engine):
    """Noise-free oracle queries of places between gallery points: refinement moves each answer off the
    gallery grid to within a kilometre of the place; the row keeps the gallery point it started from."""
    queries = oracle(engine, OFF_GRID)
    for (lat, lon), row in zip(OFF_GRID, engine.answer(queries, 3, places=PlaceOptions())):
        top = row[0]
        refined = haversine_km(lat, lon, top.lat, top.lon)
        started = haversine_km(lat, lon, top.gallery_lat, top.gallery_lon)
        assert refined <= 1.0, (lat, lon, refined)
        assert refined <= started + 1e-6


def test_refinement_never_leaves_the_area(engine):
    from geoclip_qgis.backend.photos.area import Area

    area = Area.from_bbox("-93.45,36.50,-93.41,36.70")  # the place itself lies just east of the box
    queries = oracle(engine, [(36.57, -93.40)])
    for candidate in engine.answer(queries, 3, area, places=PlaceOptions())[0]:
        assert area.contains(candidate.lat, candidate.lon)


def test_gallery_points_stay_the_release_answer(engine):
    queries = oracle(engine, OFF_GRID[:2], noise=0.05)
    indices, values, _ = engine.rank(queries, 5)
    coordinates = engine.gallery.coordinates[indices].numpy()
    for row, expected, p in zip(engine.answer(queries, 5, places=GALLERY_POINTS), coordinates, values.numpy()):
        assert [(c.lat, c.lon) for c in row] == [tuple(map(float, x)) for x in expected]
        assert [c.probability for c in row] == pytest.approx(p.tolist())
        assert all(c.radius_km is None for c in row)


def test_too_many_places_is_refused():
    with pytest.raises(GeoCLIPError, match="at most 50"):
        PlaceOptions().check(51)
    with pytest.raises(GeoCLIPError, match="merge distance"):
        PlaceOptions(merge_km=0).check(5)


# ----------------------------------------------------------------------------------------------- hints


def _country_hint(engine, code: str) -> torch.Tensor:
    """An oracle hint: the mean location feature of the gallery points in one country."""
    from geoclip_qgis.backend.earth.places import gazetteer

    table = gazetteer()
    coordinates = engine.gallery.coordinates.numpy()
    index, _ = table.nearest(coordinates[:, 0], coordinates[:, 1])
    wanted = table.country_codes.index(code)
    members = np.flatnonzero(table.country[index] == wanted)
    return torch.nn.functional.normalize(engine.gallery.features[members].mean(dim=0), dim=0), members


def test_a_right_hint_raises_its_country_and_a_wrong_one_does_not_wipe_out_a_sharp_answer(engine):
    from geoclip_qgis.backend.results import HINT_WEIGHT

    brazil, in_brazil = _country_hint(engine, "BR")
    japan, _ = _country_hint(engine, "JP")
    recife = oracle(engine, [(-8.05, -34.90)], noise=0.15, seed=5)  # a blurred photo of a Brazilian coast town
    before = engine.gallery_probabilities(recife[0].numpy())[in_brazil].sum()
    after = engine.gallery_probabilities((recife[0] + HINT_WEIGHT * brazil).numpy())[in_brazil].sum()
    assert after > before + 0.05, (before, after)

    sharp = oracle(engine, [(-8.05, -34.90)], noise=0.05, seed=6)
    top = engine.answer(sharp, 1, places=GALLERY_POINTS)[0][0]
    wrong = engine.answer(sharp + HINT_WEIGHT * japan, 1, places=GALLERY_POINTS)[0][0]
    assert haversine_km(top.lat, top.lon, wrong.lat, wrong.lon) < 25


def test_a_text_hint_steers_photos_and_is_recorded(engine, photo_dir):
    """The hint's CLIP text feature is added to every photo's query vector with its weight (the product of
    the two distributions), and every row says the hint used."""
    photos = sorted(str(p) for p in photo_dir.iterdir())[:2]
    plain = list(engine.predict_iter(photos, 3, places=GALLERY_POINTS))
    hint = Hint("a harbour town in Brazil", 0.5)
    hinted = list(engine.predict_iter(photos, 3, places=GALLERY_POINTS, hint=hint))
    text = engine.text_features([hint.text])[0].numpy()
    for a, b in zip(plain, hinted):
        np.testing.assert_allclose(b.feature, a.feature + 0.5 * text, rtol=1e-5, atol=1e-6)
        assert b.hint == hint and b.rows()[0]["hint"] == hint.text and b.rows()[0]["hint_weight"] == 0.5
    fused = engine.fuse(hinted, 3)
    np.testing.assert_allclose(fused.feature, plain[0].feature + plain[1].feature + 0.5 * text, rtol=1e-5, atol=1e-5)


def test_a_hint_is_checked():
    with pytest.raises(GeoCLIPError, match="empty"):
        Hint("  ").check()
    with pytest.raises(GeoCLIPError, match="weight"):
        Hint("a beach", float("nan")).check()


# ------------------------------------------------------------------------------------------ named areas


def test_an_answer_restricted_to_a_country_stays_in_it(engine):
    from geoclip_qgis.backend.earth.named_areas import named_area
    from geoclip_qgis.backend.earth.places import nearest_places

    area = named_area(["portugal"])
    assert area.label == "Portugal"
    madrid = oracle(engine, [(40.4168, -3.7038)])  # the answer itself is in Spain
    row = engine.answer(madrid, 5, area, places=PlaceOptions())[0]
    assert row and all(p.country_code == "PT" for p in nearest_places([c.lat for c in row], [c.lon for c in row]))


def test_countries_and_regions_are_found_by_name():
    from geoclip_qgis.backend.earth.named_areas import area_from_names, country_names, find_region, named_area

    area = named_area(["cote d'ivoire", "de"], ["Bavaria"])
    assert area.label == "Cote d'Ivoire; Germany; Bavaria, Germany"
    assert area_from_names(area.names) == area
    assert find_region("Bavaria, Germany") == ("DE", "Bavaria")
    with pytest.raises(GeoCLIPError, match="did you mean 'France'"):
        named_area(["Frnace"])
    assert "France" in country_names() and len(country_names()) > 200
    lat, lon = np.array([48.14, 52.52, 5.35]), np.array([11.58, 13.40, -4.0])
    assert area.contains(lat, lon).tolist() == [True, True, True]
    assert named_area([], ["Bavaria"]).contains(lat, lon).tolist() == [True, False, False]


def test_a_run_restricted_by_name_is_judged_in_the_same_area_later(engine, photo_dir, tmp_path):
    """The run's provenance names its countries and regions; reading it back gives the same area (what
    "How likely here?" and the report judge a stored answer in)."""
    from geoclip_qgis.backend.earth.named_areas import named_area
    from geoclip_qgis.backend.pipeline.run import RunRequest, execute
    from geoclip_qgis.backend.workbench.run_file import read_provenance, run_area

    area = named_area(["Portugal"], ["Bavaria"])
    gpkg = tmp_path / "named.gpkg"
    execute(RunRequest(photos=[str(photo_dir / "kauai.png")], top_k=2, area=area, output=str(gpkg)), engine)
    assert run_area(read_provenance(gpkg)) == area
