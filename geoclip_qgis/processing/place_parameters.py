"""The kind of candidates, the hint and the area by name as Processing parameters: the choices the dock
offers, turned into what the engine takes by the same code (:mod:`..core.inputs`)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.inputs import CANDIDATES, InputError, area_from_names, hint_from, place_options

NAMES_SEPARATOR = ";"  # region names hold commas ("Bavaria, Germany")


def add_candidates_parameter(algorithm) -> None:
    algorithm.addParameter(
        QgsProcessingParameterEnum(
            "CANDIDATES", "Kind of candidates", options=[words for _, words in CANDIDATES], defaultValue=0
        )
    )


def add_hint_parameters(algorithm) -> None:
    from ..backend.results import HINT_WEIGHT, HINT_WEIGHT_MAX

    algorithm.addParameter(
        QgsProcessingParameterString(
            "HINT", "Hint: what you know of the place, e.g. a harbour town in Brazil", optional=True
        )
    )
    algorithm.addParameter(
        QgsProcessingParameterNumber(
            "HINT_WEIGHT",
            "Hint weight (1: as much as the photo)",
            QgsProcessingParameterNumber.Type.Double,
            HINT_WEIGHT,
            False,
            0.1,
            HINT_WEIGHT_MAX,
        )
    )


def add_names_parameter(algorithm) -> None:
    algorithm.addParameter(
        QgsProcessingParameterString(
            "AREA_NAMES",
            f"Only places in these countries or regions (names separated by {NAMES_SEPARATOR!r})",
            optional=True,
        )
    )


def candidates(algorithm, parameters, context):
    """The engine's PlaceOptions for the CANDIDATES chosen."""
    key = CANDIDATES[algorithm.parameterAsEnum(parameters, "CANDIDATES", context)][0]
    return place_options(key)


def hint(algorithm, parameters, context):
    """The engine's Hint for HINT and HINT_WEIGHT; None without a hint."""
    text = algorithm.parameterAsString(parameters, "HINT", context) or ""
    try:
        return hint_from(text, algorithm.parameterAsDouble(parameters, "HINT_WEIGHT", context))
    except InputError as exc:
        raise QgsProcessingException(str(exc)) from None


def names_area(algorithm, parameters, context):
    """The area of the countries and regions AREA_NAMES names; None when it names none."""
    text = algorithm.parameterAsString(parameters, "AREA_NAMES", context) or ""
    try:
        return area_from_names(text.split(NAMES_SEPARATOR))
    except InputError as exc:
        raise QgsProcessingException(str(exc)) from None
