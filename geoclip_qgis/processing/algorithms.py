"""Processing algorithms: Geolocate photos, Geolocate text query, Evaluate on geotagged photos.

They build the same :class:`..runner.RunRequest` as the dock and call the same
:func:`..runner.execute`, so results, files and styles are identical wherever the work starts.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsVectorLayer,
)

from ..runner import RunRequest, execute
from ..session import load_settings

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
THRESHOLDS = (1, 25, 200, 750, 2500)


class _StylePoints(QgsProcessingLayerPostProcessorInterface):
    """Styles the answers layer once Processing has loaded it, on the main thread."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        from ..layers import style_points

        if isinstance(layer, QgsVectorLayer):
            style_points(layer)


class _GeoCLIPAlgorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "Geolocation"

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "geolocation"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def _area(self, parameters, context):
        from ..backend.area import Area

        if parameters.get("AREA_LAYER"):
            source = self.parameterAsSource(parameters, "AREA_LAYER", context)
            geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
            if not geometries:
                raise QgsProcessingException("the area layer has no polygons")
            union = QgsGeometry.unaryUnion(geometries)
            union.transform(QgsCoordinateTransform(source.sourceCrs(), WGS84, context.transformContext()))
            return Area.from_wkt(union.asWkt(), label=f"polygons of {parameters['AREA_LAYER']}")
        if parameters.get("AREA"):
            box = self.parameterAsExtent(parameters, "AREA", context, WGS84)
            return Area.from_bbox((max(box.xMinimum(), -180), max(box.yMinimum(), -90),
                                   min(box.xMaximum(), 180), min(box.yMaximum(), 90)))
        return None

    def _add_truth_parameters(self) -> None:
        """Photos whose position is known: a folder (EXIF GPS) or a CSV of photo,lat,lon."""
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", "Folder of photos with EXIF GPS", QgsProcessingParameterFile.Behavior.Folder, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "CSV", "Or a CSV of photo,lat,lon", QgsProcessingParameterFile.Behavior.File, "csv", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "IMAGES", "Folder the CSV's photo names are relative to", QgsProcessingParameterFile.Behavior.Folder,
            optional=True))

    def _truth_source(self, parameters, context) -> tuple[str, str | None]:
        data = self.parameterAsFile(parameters, "CSV", context) or self.parameterAsFile(parameters, "FOLDER", context)
        if not data:
            raise QgsProcessingException("give a folder of geotagged photos or a CSV of photo,lat,lon")
        return data, self.parameterAsFile(parameters, "IMAGES", context) or None

    def _add_area_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterExtent("AREA", "Only places inside this extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AREA_LAYER", "Only places inside these polygons", [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True))

    def _run(self, request: RunRequest, context, feedback) -> dict:
        outcome = execute(request, feedback.setProgress, feedback.setProgressText, feedback.isCanceled)
        for photo, reason in outcome.failures:
            feedback.reportError(f"not answered: {photo}: {reason}", False)
        if outcome.summary is not None:
            feedback.pushInfo(outcome.summary.text())
        layer = QgsVectorLayer(f"{request.gpkg}|layername=predictions", "GeoCLIP answers", "ogr")
        if layer.isValid():
            context.temporaryLayerStore().addMapLayer(layer)
            details = QgsProcessingContext.LayerDetails("GeoCLIP answers", context.project(), "OUTPUT")
            self._styler = _StylePoints()  # kept: Processing holds only a pointer to it
            details.setPostProcessor(self._styler)
            context.addLayerToLoadOnCompletion(layer.id(), details)
        answered = outcome.summary.answered if outcome.summary else 0
        return {"OUTPUT": request.gpkg, "ANSWERED": answered, "FAILED": len(outcome.failures)}

    def _request(self, parameters, context, **fields) -> RunRequest:
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(".gpkg"):
            output = str(Path(output).with_suffix(".gpkg"))
        return RunRequest(gpkg=output, top_k=self.parameterAsInt(parameters, "TOP_K", context),
                          area=self._area(parameters, context), engine=load_settings(), **fields)

    def _add_common_outputs(self) -> None:
        self.addOutput(QgsProcessingOutputNumber("ANSWERED", "Photos answered"))
        self.addOutput(QgsProcessingOutputNumber("FAILED", "Photos not answered"))


class GeolocatePhotos(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "geolocate_photos"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Geolocate photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return ("Predicts where photos were taken with GeoCLIP, on this machine. Photos come from files, a "
                "folder (searched recursively) and/or a point layer with a photo path field. Answers (top-k "
                "candidates with probabilities) go to a GeoPackage as they come: running again with the same "
                "output skips photos already answered. Failed photos are listed with their reason in its "
                "'errors' table.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "PHOTOS", "Photo files", QgsProcessing.SourceType.TypeFile, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", "Folder of photos (searched recursively)", QgsProcessingParameterFile.Behavior.Folder,
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "PHOTO_LAYER", "Photo point layer", [QgsProcessing.SourceType.TypeVectorPoint], optional=True))
        self.addParameter(QgsProcessingParameterField(
            "PHOTO_FIELD", "Field with the photo path", "photo", "PHOTO_LAYER", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "TOP_K", "Candidates per photo", QgsProcessingParameterNumber.Type.Integer, 5, False, 1, 1000))
        self._add_area_parameters()
        self.addParameter(QgsProcessingParameterBoolean("RASTERS", "Also write probability rasters", False))
        self.addParameter(QgsProcessingParameterBoolean("FUSE", "Also one joint answer for all photos", False))
        self.addParameter(QgsProcessingParameterBoolean("SKIP_GEOTAGGED", "Skip photos that have EXIF GPS", False))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Answers (GeoPackage)", "GeoPackage (*.gpkg)"))
        self._add_common_outputs()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        photos = [p for p in self.parameterAsFileList(parameters, "PHOTOS", context) or [] if p]
        folder = self.parameterAsFile(parameters, "FOLDER", context)
        if folder:
            photos.append(folder)
        if parameters.get("PHOTO_LAYER"):
            source = self.parameterAsSource(parameters, "PHOTO_LAYER", context)
            field = self.parameterAsString(parameters, "PHOTO_FIELD", context) or "photo"
            if source.fields().indexOf(field) < 0:
                raise QgsProcessingException(f"the photo layer has no field {field!r}")
            photos += [str(f[field]) for f in source.getFeatures() if f[field]]
        if not photos:
            raise QgsProcessingException("give photo files, a folder or a photo layer")
        request = self._request(parameters, context, photos=photos,
                                rasters=self.parameterAsBoolean(parameters, "RASTERS", context),
                                fuse=self.parameterAsBoolean(parameters, "FUSE", context),
                                skip_geotagged=self.parameterAsBoolean(parameters, "SKIP_GEOTAGGED", context))
        return self._run(request, context, feedback)


class GeolocateText(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "geolocate_text"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Geolocate text query"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return ("Where does GeoCLIP place a description such as 'a tropical beach with palm trees'? CLIP's text "
                "feature stands in for a photo's. The GeoCLIP paper shows this qualitatively only.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterString("TEXT", "Description of a place"))
        self.addParameter(QgsProcessingParameterNumber(
            "TOP_K", "Candidates", QgsProcessingParameterNumber.Type.Integer, 5, False, 1, 1000))
        self._add_area_parameters()
        self.addParameter(QgsProcessingParameterBoolean("RASTERS", "Also write probability rasters", False))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Answers (GeoPackage)", "GeoPackage (*.gpkg)"))
        self._add_common_outputs()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        text = self.parameterAsString(parameters, "TEXT", context).strip()
        if not text:
            raise QgsProcessingException("the description is empty")
        request = self._request(parameters, context, texts=[text],
                                rasters=self.parameterAsBoolean(parameters, "RASTERS", context))
        return self._run(request, context, feedback)


class EvaluatePhotos(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "evaluate_photos"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Evaluate on geotagged photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return ("How far to trust GeoCLIP on your kind of imagery: answers photos whose position is known (their "
                "EXIF GPS, or a CSV of photo,lat,lon as the public benchmarks ship them) and reports the paper's "
                "table: share of top-1 answers within 1, 25, 200, 750 and 2500 km, and the median error "
                "(great-circle, 6371.0088 km sphere).")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_truth_parameters()
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Answers and accuracy table (GeoPackage)", "GeoPackage (*.gpkg)"))
        for km in THRESHOLDS:
            self.addOutput(QgsProcessingOutputNumber(f"ACC_{km}KM", f"% within {km} km"))
        self.addOutput(QgsProcessingOutputNumber("MEDIAN_KM", "Median error (km)"))
        self.addOutput(QgsProcessingOutputNumber("PHOTOS", "Photos with a known position"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from datetime import datetime, timezone

        from ..backend.evaluation import evaluate, format_table
        from ..backend.writers import OgrWriter
        from ..session import get_engine

        data, images = self._truth_source(parameters, context)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        engine = get_engine(load_settings(), lambda stage, done, total: feedback.setProgressText(stage))
        writer = OgrWriter(Path(output), "GPKG", engine.model_name, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           batch=engine.batch_size)
        try:
            table = evaluate(engine, data, writer, images,
                             on_result=lambda r: feedback.reportError(f"{r.photo}: {r.error}", False) if r.error else None,
                             should_stop=feedback.isCanceled)
        finally:
            writer.close()
        feedback.pushInfo(format_table(table))
        results = {"OUTPUT": output, "PHOTOS": table["photos"], "MEDIAN_KM": table["median_km"]}
        results.update({f"ACC_{km}KM": table[f"acc_{km}km"] for km in THRESHOLDS})
        return results


class FinetuneHeads(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "finetune_heads"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Fine-tune on geotagged photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return ("Adapts GeoCLIP to your region or kind of imagery with photos you already have with GPS (EXIF, "
                "or a CSV of photo,lat,lon), using the paper's contrastive training with a GPS queue; CLIP stays "
                "frozen. Writes a heads folder (choose it in GeoCLIP's Models dialog) with a manifest holding the "
                "validation table before and after.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_truth_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            "EPOCHS", "Epochs (at most)", QgsProcessingParameterNumber.Type.Integer, 20, False, 1, 1000))
        self.addParameter(QgsProcessingParameterBoolean(
            "EXTEND_GALLERY", "Add the photos' positions to the gallery", True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "New heads folder"))
        self.addOutput(QgsProcessingOutputNumber("ACC_25KM_BEFORE", "Validation % within 25 km, before"))
        self.addOutput(QgsProcessingOutputNumber("ACC_25KM_AFTER", "Validation % within 25 km, after"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.evaluation import format_table
        from ..backend.finetune import FinetuneSettings, collect_samples, finetune
        from ..session import get_engine

        data, images = self._truth_source(parameters, context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        engine = get_engine(load_settings(), lambda stage, done, total: feedback.setProgressText(stage))
        feedback.setProgressText("Reading the photos (CLIP embeddings are cached for next time)…")
        collected = collect_samples(engine, data, images, progress=lambda done, total: feedback.setProgress(30 * done / total),
                                    should_stop=feedback.isCanceled)
        feedback.pushInfo(f"{len(collected.samples)} photos with a position, {collected.without_gps} without, "
                          f"{len(collected.failed)} unreadable")
        settings = FinetuneSettings(epochs=self.parameterAsInt(parameters, "EPOCHS", context),
                                    extend_gallery=self.parameterAsBoolean(parameters, "EXTEND_GALLERY", context))

        def epoch_done(message, epoch, epochs):
            feedback.pushInfo(message)
            feedback.setProgress(30 + 70 * epoch / epochs)

        manifest = finetune(engine, collected.samples, output, settings, epoch_done, should_stop=feedback.isCanceled)
        feedback.pushInfo("before:\n" + format_table(manifest["validation"]["before"]))
        feedback.pushInfo("after:\n" + format_table(manifest["validation"]["after"]))
        return {"OUTPUT": output, "ACC_25KM_BEFORE": manifest["validation"]["before"]["acc_25km"],
                "ACC_25KM_AFTER": manifest["validation"]["after"]["acc_25km"]}
