"""The "GeoCLIP" Processing provider: the dock's work as algorithms for the toolbox, the model
builder, the Python console and qgis_process."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import EvaluatePhotos, FinetuneHeads, GeolocatePhotos, GeolocateText
from .judging_algorithms import HowLikelyHere, ProbabilityByRegion
from .location_algorithms import EmbeddingMap, LocationEmbeddings, SimilarPlaces


class GeoCLIPProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "geoclip"

    def name(self) -> str:
        return "GeoCLIP"

    def icon(self) -> QIcon:
        from ..icon import icon_path

        return QIcon(icon_path())

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        for algorithm in (
            GeolocatePhotos(),
            GeolocateText(),
            EvaluatePhotos(),
            FinetuneHeads(),
            LocationEmbeddings(),
            EmbeddingMap(),
            SimilarPlaces(),
            ProbabilityByRegion(),
            HowLikelyHere(),
        ):
            self.addAlgorithm(algorithm)
