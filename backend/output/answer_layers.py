"""The layers and tables of a run's GeoPackage: their names, what each holds, and the columns beyond the
results schema (:mod:`..results`)."""

from __future__ import annotations

from ..results import OutputKind

POINTS_LAYER = "predictions"
ERRORS_LAYER = "errors"
TRUTH_LAYER = "truth_lines"  # known position (truth CSV's, else EXIF GPS) -> top-1 answer
ACCURACY_LAYER = "accuracy"
REGIONS_LAYER = "regions"
AREAS_LAYER = "confidence_areas"
RADII_LAYER = "place_radii"  # each distinct place's circle of radius_km (geodesic, as a polygon)
FEATURES_LAYER = "answer_features"  # each answer's query vector: rasters and checks later, without CLIP
RUNS_LAYER = "runs"  # the settings of every run into the file, for resuming only like with like
TRUTH_COLUMNS = ("photo", "error_km", "photo_sha256", "photo_bytes_hex", "run_at")
LAYER_KINDS = {
    POINTS_LAYER: OutputKind.POINTS,
    ERRORS_LAYER: OutputKind.ERRORS,
    TRUTH_LAYER: OutputKind.TRUTH_LINES,
    ACCURACY_LAYER: OutputKind.ACCURACY,
    REGIONS_LAYER: OutputKind.REGIONS,
    AREAS_LAYER: OutputKind.CONFIDENCE_AREAS,
    RADII_LAYER: OutputKind.PLACE_RADII,
}
OUR_LAYERS = (*LAYER_KINDS, RUNS_LAYER, FEATURES_LAYER)
RADII_COLUMNS = {
    "photo": str,
    "kind": str,
    "rank": int,
    "probability": float,
    "radius_km": float,
    "place": str,
    "region": str,
    "country": str,
    "photo_sha256": str,
    "run_at": str,
}
AREA_COLUMNS = {
    "photo": str,
    "kind": str,  # what the answer answers (results.AnswerKind): a map label needs it
    "level": float,
    "area_km2": float,
    "mass": float,
    "cells": int,
    "parts": int,
    "exact_km2": float,  # the smallest area holding the level, before any generalisation
    "smoothing_deg": float,  # generalisation (see confidence.py): 0 for the exact area
    "dropped_parts": int,
    "simplified_deg": float,
    "note": str,  # what was done to the exact area, in words
    "photo_sha256": str,
    "run_at": str,
}
