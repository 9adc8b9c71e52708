"""Processing algorithms for judging answers already in a run's GeoPackage: Probability by region
(zonal) over any polygon layer, and How likely here? for a layer of hypotheses.

They read parameters, reproject the user's layer to EPSG:4326 with QGIS's transforms and call the
engine's :mod:`..backend.judging` (shared with ``geoclip-qgis zones`` and ``geoclip-qgis likely``);
the model work is the engine's. Each answer is judged from the query vector the file keeps, in the
run's own area of interest, with the engine of the plugin's settings (its heads; CLIP is not loaded).
"""

from __future__ import annotations

import re

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
MAX_ANSWER_FIELDS = 10  # answers that get a field of their own in the regions layer


def _field(name: str, kind: str) -> QgsField:
    try:
        from qgis.PyQt.QtCore import QVariant

        types = {"string": QVariant.Type.String, "integer": QVariant.Type.Int, "real": QVariant.Type.Double}
    except (ImportError, AttributeError):  # Qt6: QVariant has no type enum
        from qgis.PyQt.QtCore import QMetaType

        types = {"string": QMetaType.Type.QString, "integer": QMetaType.Type.Int, "real": QMetaType.Type.Double}
    return QgsField(name, types[kind])


def _wkb_type(name: str):
    try:
        from qgis.core import Qgis

        return getattr(Qgis.WkbType, name)
    except AttributeError:  # QGIS before 3.30
        return getattr(QgsWkbTypes.Type, name)


def _is_null(value) -> bool:
    return value is None or (hasattr(value, "isNull") and value.isNull())


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``… when the layer already has a field of that name (any case)."""
    chosen, number = name, 1
    while chosen.lower() in taken:
        number += 1
        chosen = f"{name}_{number}"
    taken.add(chosen.lower())
    return chosen


def _wgs84(geometry: QgsGeometry, transform: QgsCoordinateTransform, what: str) -> QgsGeometry | None:
    """A copy in EPSG:4326, 2D, curves made straight; None for no geometry."""
    if geometry is None or geometry.isNull() or geometry.isEmpty():
        return None
    copy = QgsGeometry(geometry)
    if QgsWkbTypes.isCurvedType(copy.wkbType()):
        copy.convertToStraightSegment()
    copy.get().dropZValue()
    copy.get().dropMValue()
    from ..backend.errors import GeoCLIPError
    from ..backend.photos.polygons import wkt_to_wgs84

    try:  # the engine's rule: reprojected, and checked to lie on the Earth
        return QgsGeometry.fromWkt(wkt_to_wgs84(copy.asWkt(), transform.sourceCrs().toWkt(), what))
    except GeoCLIPError as exc:
        raise QgsProcessingException(str(exc)) from None


def _engine():
    from ..core.session import get_engine, load_settings

    return get_engine(load_settings())


class _JudgingAlgorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "Judging answers"

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "judging_answers"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def _add_run_parameters(self) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                "RUN",
                "Run GeoPackage (answers written by GeoCLIP)",
                QgsProcessingParameterFile.Behavior.File,
                fileFilter="GeoPackage (*.gpkg)",
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "PHOTO", "Only this answer (its photo path or file name; empty: every answer)", optional=True
            )
        )

    def _answers(self, parameters, context):
        from ..backend.workbench.judging import answers_with_vectors, area_of_run

        path = self.parameterAsFile(parameters, "RUN", context)
        photo = self.parameterAsString(parameters, "PHOTO", context).strip()
        return answers_with_vectors(path, [photo] if photo else None), area_of_run(path)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.errors import GeoCLIPError

        try:
            return self._judge(parameters, context, feedback)
        except GeoCLIPError as exc:
            raise QgsProcessingException(str(exc)) from None

    @staticmethod
    def _step(feedback, done: int, total: int, photo: str) -> bool:
        """Progress after an answer; False when the user cancelled (what was judged so far is kept)."""
        feedback.setProgress(100.0 * done / total)
        if feedback.isCanceled():
            feedback.pushWarning(f"cancelled after {done} of {total} answers (the last one: {photo})")
            return False
        return True


class ProbabilityByRegion(_JudgingAlgorithm):
    def name(self) -> str:
        return "probability_by_region"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Probability by region (zonal)"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Which of these regions? For each answer in a run's GeoPackage, the share of its probability "
            "inside each polygon of any polygon layer (districts, parcels, a hand-drawn sketch; any CRS): the "
            "probabilities of GeoCLIP's 100K gallery places inside the polygon, summed, in the run's own area of "
            "interest. Polygons may overlap (a place inside two counts for both); one holding no gallery place "
            "gets 0. Names come from the name field, else the feature id.\n\n"
            "Outputs: a table (photo, zone, probability, rank; rank 1 the most probable) and, for mapping, a "
            "copy of the polygons with the probabilities as fields: 'probability' and 'rank' when one answer is "
            f"judged (give a photo), else one field per answer, 'p_' and the photo's file name, for the first "
            f"{MAX_ANSWER_FIELDS} answers (the table has them all).\n\n"
            "The same as `geoclip-qgis zones RUN.gpkg POLYGONS --name-field NAME`."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_run_parameters()
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "REGIONS", "Regions (polygons)", [QgsProcessing.SourceType.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "NAME_FIELD", "Name field (default: feature ids)", None, "REGIONS", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                "OUTPUT", "Probability by region (table)", QgsProcessing.SourceType.TypeVector
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                "REGIONS_OUTPUT",
                "Regions with probabilities",
                QgsProcessing.SourceType.TypeVectorPolygon,
                optional=True,
                createByDefault=True,
            )
        )
        self.addOutput(QgsProcessingOutputNumber("ANSWERS", "Answers judged"))

    def _judge(self, parameters, context, feedback):
        from ..backend.workbench.judging import ZONE_COLUMNS, zonal_for_answers

        answers, area = self._answers(parameters, context)
        source = self.parameterAsSource(parameters, "REGIONS", context)
        if source is None:
            raise QgsProcessingException("no polygon layer given")
        name_field = self.parameterAsString(parameters, "NAME_FIELD", context)
        name_index = source.fields().lookupField(name_field) if name_field else -1
        transform = QgsCoordinateTransform(source.sourceCrs(), WGS84, context.transformContext())
        kept, wkts, names = [], [], []
        for feature in source.getFeatures():
            if feedback.isCanceled():
                raise QgsProcessingException("cancelled while reading the regions")
            geometry = _wgs84(feature.geometry(), transform, f"region {feature.id()}")
            if geometry is None:
                continue
            value = feature[name_index] if name_index >= 0 else None
            names.append(str(feature.id()) if _is_null(value) or str(value) == "" else str(value))
            wkts.append(geometry.asWkt())
            kept.append(feature)
        if not kept:
            raise QgsProcessingException("the region layer holds no polygons")

        table_fields = QgsFields()
        for column in ZONE_COLUMNS:
            table_fields.append(_field(column, {"probability": "real", "rank": "integer"}.get(column, "string")))
        table, table_id = self.parameterAsSink(
            parameters, "OUTPUT", context, table_fields, _wkb_type("NoGeometry"), QgsCoordinateReferenceSystem()
        )
        if table is None:
            raise QgsProcessingException("cannot write the table")

        feedback.setProgressText(f"Finding the gallery places inside {len(kept)} regions")

        def polygons_done(step) -> None:  # the toolbox's bar goes once over the regions, then over the answers
            feedback.setProgress(100.0 * (step.fraction or 0.0))

        judged = []
        zonal = zonal_for_answers(_engine(), answers, wkts, names, area, polygons_done, feedback.isCanceled)
        for number, found in enumerate(zonal, 1):  # a Cancel among the regions: Cancelled, a GeoCLIPError
            judged.append(found)
            for row in found.rows:
                entry = QgsFeature(table_fields)
                entry.setAttributes([row.photo, row.region, row.probability, row.rank])
                table.addFeature(entry, QgsFeatureSink.Flag.FastInsert)
            best = found.rows[0]
            feedback.pushInfo(f"{found.answer.photo}: {best.region} {100 * best.probability:.1f} %")
            if not self._step(feedback, number, len(answers), found.answer.photo):
                break

        regions_id = self._regions_layer(parameters, context, feedback, source, kept, judged)
        return {"OUTPUT": table_id, "REGIONS_OUTPUT": regions_id, "ANSWERS": len(judged)}

    def _regions_layer(self, parameters, context, feedback, source, kept, judged):
        """The polygons as they are, with 'probability' and 'rank' for one answer, else one 'p_<file>'
        field per answer (the first ones)."""
        from ..backend.workbench.judging import file_name

        fields = QgsFields(source.fields())
        taken = {f.name().lower() for f in fields}
        if len(judged) == 1:
            columns = [_unique("probability", taken), _unique("rank", taken)]
            fields.append(_field(columns[0], "real"))
            fields.append(_field(columns[1], "integer"))
        else:
            if len(judged) > MAX_ANSWER_FIELDS:
                feedback.pushWarning(
                    f"the regions layer has fields for the first {MAX_ANSWER_FIELDS} of {len(judged)} answers; "
                    "the table has them all (or give one photo)"
                )
                judged = judged[:MAX_ANSWER_FIELDS]
            for found in judged:
                stem = re.sub(r"\W+", "_", file_name(found.answer.photo).rsplit(".", 1)[0]).strip("_")[:40]
                field = _field(_unique(f"p_{stem or 'answer'}", taken), "real")
                field.setAlias(found.answer.photo)
                fields.append(field)
                feedback.pushInfo(f"field {field.name()}: {found.answer.photo}")
        sink, sink_id = self.parameterAsSink(
            parameters, "REGIONS_OUTPUT", context, fields, source.wkbType(), source.sourceCrs()
        )
        if sink is None:
            return None
        for index, feature in enumerate(kept):
            if len(judged) == 1:
                added = [judged[0].probabilities[index], judged[0].ranks[index]]
            else:
                added = [found.probabilities[index] for found in judged]
            copy = QgsFeature(fields)
            copy.setGeometry(feature.geometry())
            copy.setAttributes(feature.attributes() + added)
            sink.addFeature(copy, QgsFeatureSink.Flag.FastInsert)
        return sink_id


class HowLikelyHere(_JudgingAlgorithm):
    def name(self) -> str:
        return "how_likely_here"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "How likely here? (hypotheses)"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Which of these places? For each answer in a run's GeoPackage and each point of a layer of "
            "hypotheses (villages, sites; any CRS): the probability within 1, 25 and 200 km, the density "
            "relative to the answer's best place (1 = as likely as anywhere), the rank of the point's world "
            "cell among all cells by density (1 = the most probable) and the credible level (the smallest "
            "confidence area holding the point). The probability rasters are made again from the query vector "
            "the file keeps, in the run's area of interest; outside it, rank and level are empty.\n\n"
            "Output: the points in EPSG:4326, one per answer and hypothesis, with their own fields plus photo, "
            "mass_within_1km, mass_within_25km, mass_within_200km, density_ratio, rank, cells, credible_level.\n\n"
            "The same as `geoclip-qgis likely RUN.gpkg PLACES --id-field NAME`."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_run_parameters()
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "POINTS", "Hypotheses (points)", [QgsProcessing.SourceType.TypeVectorPoint]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "NAME_FIELD", "Name field (default: feature ids)", None, "POINTS", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                "OUTPUT", "How likely each hypothesis is", QgsProcessing.SourceType.TypeVectorPoint
            )
        )
        self.addOutput(QgsProcessingOutputNumber("ANSWERS", "Answers judged"))

    def _judge(self, parameters, context, feedback):
        from ..backend.workbench.judging import LIKELY_COLUMNS, likely_for_answers, likely_values

        answers, area = self._answers(parameters, context)
        source = self.parameterAsSource(parameters, "POINTS", context)
        if source is None:
            raise QgsProcessingException("no point layer given")
        name_field = self.parameterAsString(parameters, "NAME_FIELD", context)
        name_index = source.fields().lookupField(name_field) if name_field else -1
        transform = QgsCoordinateTransform(source.sourceCrs(), WGS84, context.transformContext())
        kept, points, skipped = [], [], 0
        for feature in source.getFeatures():
            geometry = _wgs84(feature.geometry(), transform, f"point {feature.id()}")
            parts = geometry.asMultiPoint() if geometry is not None and geometry.isMultipart() else None
            if geometry is None or (parts is not None and len(parts) != 1):
                skipped += 1
                continue
            point = parts[0] if parts is not None else geometry.asPoint()
            value = feature[name_index] if name_index >= 0 else None
            name = str(feature.id()) if _is_null(value) or str(value) == "" else str(value)
            kept.append(feature)
            points.append((name, point.y(), point.x()))
        if skipped:
            feedback.pushInfo(f"{skipped} feature(s) without a single point were left out")
        if not points:
            raise QgsProcessingException("the hypotheses layer holds no points")

        fields = QgsFields(source.fields())
        taken = {f.name().lower() for f in fields}
        fields.append(_field(_unique("photo", taken), "string"))
        for column in LIKELY_COLUMNS:
            fields.append(_field(_unique(column, taken), "integer" if column in ("rank", "cells") else "real"))
        sink, sink_id = self.parameterAsSink(parameters, "OUTPUT", context, fields, _wkb_type("Point"), WGS84)
        if sink is None:
            raise QgsProcessingException("cannot write the hypotheses layer")

        judged = 0
        feedback.setProgressText(f"Judging {len(points)} hypotheses for {len(answers)} answers")
        for answer, found in likely_for_answers(_engine(), answers, points, area):
            for feature, place in zip(kept, found):
                entry = QgsFeature(fields)
                entry.setAttributes(feature.attributes() + [answer.photo, *likely_values(place)])
                entry.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(place.lon, place.lat)))
                sink.addFeature(entry, QgsFeatureSink.Flag.FastInsert)
            ranked = [place for place in found if place.rank is not None]
            if ranked:
                best = min(ranked, key=lambda place: place.rank)
                feedback.pushInfo(
                    f"{answer.photo}: most likely {best.id} (density ratio {best.density_ratio:.3g}, "
                    f"rank {best.rank} of {best.cells} cells)"
                )
            else:
                feedback.pushInfo(f"{answer.photo}: every hypothesis lies outside the run's area")
            judged += 1
            if not self._step(feedback, judged, len(answers), answer.photo):
                break
        return {"OUTPUT": sink_id, "ANSWERS": judged}
