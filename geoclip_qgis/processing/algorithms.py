"""Processing algorithms: Geolocate photos, Geolocate text query, Evaluate on geotagged photos,
Fine-tune on geotagged photos.

The first three build a :class:`..backend.run.RunRequest` and call the engine's one run pipeline
(:func:`..backend.run.execute`), as the dock does, and load the same layers with the same styles
(:mod:`..layers`): answers, truth lines, failures and rasters. Inputs from QGIS (extents, polygons,
photo layers) go through :mod:`..inputs`, shared with the dock.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFolder,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..backend.geo import THRESHOLDS_KM
from ..core.inputs import WGS84, InputError, area_from_extent, area_from_polygons, photo_paths
from ..core.session import EngineSettings, get_engine, load_settings, weights_message
from . import place_parameters

DEVICES = ("auto", "cpu", "cuda", "mps")


_post_processors: list = []  # Processing keeps only pointers to them


class _PlaceLayer(QgsProcessingLayerPostProcessorInterface):
    """Once Processing has loaded one of a run's layers (on the main thread): style it and put it in the
    run's group, as the dock does; the last one adds the world map and zooms (see ``layers.RunPlacement``)."""

    def __init__(self, placement, file):
        super().__init__()
        self.placement, self.file = placement, file

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        self.placement.place(layer, self.file)


class FeedbackProgress:
    """The engine's progress events as Processing feedback: the bar per stage, one log line per stage.
    Every GeoCLIP algorithm reports through it."""

    def __init__(self, feedback):
        self.feedback, self.stage = feedback, None

    def __call__(self, event) -> None:
        if event.stage != self.stage:
            self.stage = event.stage
            self.feedback.setProgressText(event.stage)
        if event.fraction is not None:
            self.feedback.setProgress(100.0 * event.fraction)
        if event.detail:
            self.feedback.pushInfo(event.detail)


class _GeoCLIPAlgorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "Geolocation"

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "geolocation"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    # -- parameters shared by the algorithms -------------------------------------------------------

    def _add_area_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterExtent("AREA", "Only places inside this extent", optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "AREA_LAYER",
                "Only places inside these polygons",
                [QgsProcessing.SourceType.TypeVectorPolygon],
                optional=True,
            )
        )
        place_parameters.add_names_parameter(self)

    def _add_device_parameter(self) -> None:
        self.addParameter(
            QgsProcessingParameterEnum(
                "DEVICE",
                "Device",
                options=["Automatic (GPU if present)", "CPU", "CUDA GPU", "Apple GPU (MPS)"],
                defaultValue=0,
            )
        )

    def _add_confidence_parameter(self) -> None:
        self.addParameter(
            QgsProcessingParameterBoolean(
                "CONFIDENCE", "Also confidence areas (where 50 % and 90 % of each answer's probability lie)", False
            )
        )

    def _add_raster_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterBoolean("RASTERS", "Also write probability rasters", False))
        self.addParameter(
            QgsProcessingParameterBoolean(
                "WORLD_PER_ANSWER", "One world raster per answer (else one for the run)", False
            )
        )

    def _add_truth_parameters(self) -> None:
        """Photos whose position is known: a folder (EXIF GPS) or a CSV of photo,lat,lon."""
        self.addParameter(
            QgsProcessingParameterFile(
                "FOLDER", "Folder of photos with EXIF GPS", QgsProcessingParameterFile.Behavior.Folder, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "CSV", "Or a CSV of photo,lat,lon", QgsProcessingParameterFile.Behavior.File, "csv", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "IMAGES",
                "Folder the CSV's photo names are relative to",
                QgsProcessingParameterFile.Behavior.Folder,
                optional=True,
            )
        )

    def _add_run_outputs(self) -> None:
        self.addOutput(QgsProcessingOutputVectorLayer("POINTS", "Answers", QgsProcessing.SourceType.TypeVectorPoint))
        self.addOutput(
            QgsProcessingOutputVectorLayer(
                "TRUTH_LINES", "Known position → top-1 answer", QgsProcessing.SourceType.TypeVectorLine
            )
        )
        self.addOutput(QgsProcessingOutputMultipleLayers("RASTER_LAYERS", "Probability rasters"))
        self.addOutput(QgsProcessingOutputFolder("RASTER_FOLDER", "Folder of the probability rasters"))
        self.addOutput(QgsProcessingOutputNumber("ANSWERED", "Photos answered"))
        self.addOutput(QgsProcessingOutputNumber("FAILED", "Photos not answered"))

    # -- reading them ------------------------------------------------------------------------------

    def _area(self, parameters, context):
        given = [key for key in ("AREA_LAYER", "AREA", "AREA_NAMES") if parameters.get(key)]
        if len(given) > 1:
            raise QgsProcessingException(f"give one area of interest, not {' and '.join(given)}")
        if given == ["AREA_NAMES"]:
            return place_parameters.names_area(self, parameters, context)
        try:
            if parameters.get("AREA_LAYER"):
                source = self.parameterAsSource(parameters, "AREA_LAYER", context)
                return area_from_polygons(source.getFeatures(), source.sourceCrs(), source.sourceName() or "polygons")
            if parameters.get("AREA"):
                crs = self.parameterAsExtentCrs(parameters, "AREA", context)
                extent = self.parameterAsExtent(parameters, "AREA", context)
                return area_from_extent(
                    extent, crs if crs.isValid() else WGS84, context.transformContext(), label="extent"
                )
        except InputError as exc:
            raise QgsProcessingException(str(exc)) from None
        return None

    def _truth_source(self, parameters, context) -> tuple[str, str | None]:
        data = self.parameterAsFile(parameters, "CSV", context) or self.parameterAsFile(parameters, "FOLDER", context)
        if not data:
            raise QgsProcessingException("give a folder of geotagged photos or a CSV of photo,lat,lon")
        return data, self.parameterAsFile(parameters, "IMAGES", context) or None

    def _settings(self, parameters, context) -> EngineSettings:
        saved = load_settings()
        device = (
            DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)] if "DEVICE" in parameters else saved.device
        )
        return replace(saved, device=device)

    def _output(self, parameters, context) -> str:
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        return output if output.lower().endswith(".gpkg") else str(Path(output).with_suffix(".gpkg"))

    def _rasters(self, parameters, context, output: str):
        from ..backend.pipeline.run import WORLD_COMBINED, WORLD_EACH, RasterOptions, default_raster_folder

        if not self.parameterAsBoolean(parameters, "RASTERS", context):
            return None
        each = self.parameterAsBoolean(parameters, "WORLD_PER_ANSWER", context)
        return RasterOptions(default_raster_folder(output), world=WORLD_EACH if each else WORLD_COMBINED)

    # -- running -----------------------------------------------------------------------------------

    def _with_engine(self, parameters, context, feedback, work):
        """``work(engine)`` with the engine of these settings; the engine's errors in QGIS's words."""
        from ..backend.errors import GeoCLIPError, WeightsError

        settings = self._settings(parameters, context)
        try:
            return work(get_engine(settings))
        except WeightsError as exc:  # in QGIS's words (the Models dialog), the engine's own in the log
            feedback.pushInfo(str(exc))
            raise QgsProcessingException(weights_message(settings)) from None
        except GeoCLIPError as exc:
            raise QgsProcessingException(str(exc)) from None

    def _answer(self, action, request, parameters, context, feedback):
        """A run-pipeline action (``run.execute``, ``evaluate.evaluate``) with this algorithm's engine,
        progress and cancel; failed photos are reported as they come."""

        def on_result(result):
            if result.error:
                feedback.reportError(f"not answered: {result.photo}: {result.error}", False)

        progress = FeedbackProgress(feedback)
        return self._with_engine(
            parameters,
            context,
            feedback,
            lambda engine: action(request, engine, progress, feedback.isCanceled, on_result),
        )

    @staticmethod
    def _say_outcome(outcome, feedback) -> None:
        feedback.pushInfo(outcome.summary.text())
        if not outcome.cancelled:
            feedback.setProgress(100)  # the last stage may have had no count: the toolbox shows done, not 0 %

    def _load_layers(self, outcome, request, context) -> dict:
        """Every layer of the run, loaded into the project when the algorithm ends, styled and grouped as
        the dock does it (a group named after the run, earlier runs folded, the map zoomed to the answers)."""
        from ..backend.results import OutputKind
        from ..map.layers import RASTER_KINDS, VECTOR_KINDS, RunPlacement, layer_name, make_layer
        from ..map.names import run_title

        results = {"POINTS": None, "TRUTH_LINES": None, "RASTER_LAYERS": [], "RASTER_FOLDER": None}
        loaded = []
        for file in outcome.files:
            if file.kind not in VECTOR_KINDS + RASTER_KINDS:
                continue
            if file.kind == OutputKind.ERRORS and not outcome.failures:
                continue  # failures of earlier runs into the same file
            layer = make_layer(file, styled=False)
            if layer is not None:
                loaded.append((file, layer))
        title = run_title(
            [p for p in request.photos if isinstance(p, str)] or ([request.truth_csv] if request.truth_csv else []),
            request.texts,
            outcome.summary.answered + outcome.summary.failed_count + outcome.summary.skipped_count,
        )
        placement = RunPlacement(title, request.output or "", outcome.run_at, [file for file, _ in loaded])
        del _post_processors[:-100]  # those of earlier runs are done
        for file, layer in loaded:
            context.temporaryLayerStore().addMapLayer(layer)
            details = QgsProcessingContext.LayerDetails(layer_name(file), context.project(), file.kind.value)
            post = _PlaceLayer(placement, file)
            _post_processors.append(post)
            details.setPostProcessor(post)
            context.addLayerToLoadOnCompletion(layer.id(), details)
            if file.kind == OutputKind.POINTS:
                results["POINTS"] = layer.id()
            elif file.kind == OutputKind.TRUTH_LINES:
                results["TRUTH_LINES"] = layer.id()
            elif file.kind in RASTER_KINDS:
                results["RASTER_LAYERS"].append(layer.id())
                results["RASTER_FOLDER"] = str(Path(file.path).parent)
        return results

    def _run(self, request, parameters, context, feedback) -> dict:
        from ..backend.pipeline.run import execute

        outcome = self._answer(execute, request, parameters, context, feedback)
        self._say_outcome(outcome, feedback)
        return self._results(outcome, request, context)

    def _results(self, outcome, request, context) -> dict:
        results = self._load_layers(outcome, request, context)
        results.update(OUTPUT=request.output, ANSWERED=outcome.summary.answered, FAILED=len(outcome.failures))
        return results


class GeolocatePhotos(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "geolocate_photos"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Geolocate photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Predicts where photos were taken with GeoCLIP, on this machine. Photos come from files, a "
            "folder (searched recursively) and/or a point layer with a photo path field. Answers (top-k "
            "candidates with probabilities) go to a GeoPackage as they come: running again with the same "
            "output skips photos already answered. Failed photos are listed with their reason in its "
            "'errors' table. Probability rasters go to a folder named after the GeoPackage. Candidates are "
            "distinct places, each with the radius holding most of its probability (refined off the "
            "gallery's grid unless asked not to), or the gallery's top-k points as GeoCLIP's release gives "
            "them. A hint (what you know of the place, in a few words) steers every photo's answer."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                "PHOTOS", "Photo files", QgsProcessing.SourceType.TypeFile, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "FOLDER",
                "Folder of photos (searched recursively)",
                QgsProcessingParameterFile.Behavior.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "PHOTO_LAYER", "Photo point layer", [QgsProcessing.SourceType.TypeVectorPoint], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "PHOTO_FIELD", "Field with the photo path", "photo", "PHOTO_LAYER", optional=True
            )
        )
        place_parameters.add_candidates_parameter(self)
        self.addParameter(
            QgsProcessingParameterNumber(
                "TOP_K", "Candidates per photo", QgsProcessingParameterNumber.Type.Integer, 5, False, 1, 1000
            )
        )
        place_parameters.add_hint_parameters(self)
        self._add_area_parameters()
        self._add_raster_parameters()
        self._add_confidence_parameter()
        self.addParameter(QgsProcessingParameterBoolean("FUSE", "Also one joint answer for all photos", False))
        self.addParameter(QgsProcessingParameterBoolean("SKIP_GEOTAGGED", "Skip photos that have EXIF GPS", False))
        self._add_device_parameter()
        self.addParameter(
            QgsProcessingParameterFileDestination("OUTPUT", "Answers (GeoPackage)", "GeoPackage (*.gpkg)")
        )
        self._add_run_outputs()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.pipeline.run import RunRequest

        photos = [p for p in self.parameterAsFileList(parameters, "PHOTOS", context) or [] if p]
        folder = self.parameterAsFile(parameters, "FOLDER", context)
        if folder:
            photos.append(folder)
        if parameters.get("PHOTO_LAYER"):
            source = self.parameterAsSource(parameters, "PHOTO_LAYER", context)
            field = self.parameterAsString(parameters, "PHOTO_FIELD", context) or "photo"
            if source.fields().indexOf(field) < 0:
                raise QgsProcessingException(f"the photo layer has no field {field!r}")
            photos += photo_paths(source.getFeatures(), field)
        if not photos:
            raise QgsProcessingException("give photo files, a folder or a photo layer")
        output = self._output(parameters, context)
        request = RunRequest(
            photos=photos,
            top_k=self.parameterAsInt(parameters, "TOP_K", context),
            area=self._area(parameters, context),
            places=place_parameters.candidates(self, parameters, context),
            hint=place_parameters.hint(self, parameters, context),
            output=output,
            rasters=self._rasters(parameters, context, output),
            confidence=self.parameterAsBoolean(parameters, "CONFIDENCE", context),
            fuse=self.parameterAsBoolean(parameters, "FUSE", context),
            skip_geotagged=self.parameterAsBoolean(parameters, "SKIP_GEOTAGGED", context),
        )
        return self._run(request, parameters, context, feedback)


class GeolocateText(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "geolocate_text"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Geolocate text query"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Where does GeoCLIP place a description such as 'a tropical beach with palm trees'? CLIP's text "
            "feature stands in for a photo's. The GeoCLIP paper shows this qualitatively only."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterString("TEXT", "Description of a place"))
        place_parameters.add_candidates_parameter(self)
        self.addParameter(
            QgsProcessingParameterNumber(
                "TOP_K", "Candidates", QgsProcessingParameterNumber.Type.Integer, 5, False, 1, 1000
            )
        )
        self._add_area_parameters()
        self._add_raster_parameters()
        self._add_confidence_parameter()
        self._add_device_parameter()
        self.addParameter(
            QgsProcessingParameterFileDestination("OUTPUT", "Answers (GeoPackage)", "GeoPackage (*.gpkg)")
        )
        self._add_run_outputs()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.pipeline.run import RunRequest

        text = self.parameterAsString(parameters, "TEXT", context).strip()
        if not text:
            raise QgsProcessingException("the description is empty")
        output = self._output(parameters, context)
        request = RunRequest(
            texts=[text],
            top_k=self.parameterAsInt(parameters, "TOP_K", context),
            area=self._area(parameters, context),
            places=place_parameters.candidates(self, parameters, context),
            output=output,
            rasters=self._rasters(parameters, context, output),
            confidence=self.parameterAsBoolean(parameters, "CONFIDENCE", context),
        )
        return self._run(request, parameters, context, feedback)


class EvaluatePhotos(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "evaluate_photos"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Evaluate on geotagged photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "How far to trust GeoCLIP on your kind of imagery: answers photos whose position is known (their "
            "EXIF GPS, or a CSV of photo,lat,lon as the public benchmarks ship them) and reports the paper's "
            "table: share of top-1 answers within 1, 25, 200, 750 and 2500 km, and the median error "
            "(great-circle, 6371.0088 km sphere)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_truth_parameters()
        self._add_device_parameter()
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Answers and accuracy table (GeoPackage)", "GeoPackage (*.gpkg)"
            )
        )
        self._add_run_outputs()
        for km in THRESHOLDS_KM:
            self.addOutput(QgsProcessingOutputNumber(f"ACC_{km}KM", f"% within {km} km"))
        self.addOutput(QgsProcessingOutputNumber("MEDIAN_KM", "Median error (km)"))
        self.addOutput(QgsProcessingOutputNumber("ACC_COUNTRY", "% of top-1 answers in the right country"))
        self.addOutput(QgsProcessingOutputNumber("PHOTOS", "Photos with a known position"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.earth.evaluation import format_table
        from ..backend.errors import GeoCLIPError
        from ..backend.pipeline.evaluate import evaluate, truth_inputs
        from ..backend.pipeline.run import RunRequest

        data, images = self._truth_source(parameters, context)
        try:
            request = RunRequest(**truth_inputs(data, images), output=self._output(parameters, context))
        except GeoCLIPError as exc:
            raise QgsProcessingException(str(exc)) from None
        evaluation = self._answer(evaluate, request, parameters, context, feedback)
        self._say_outcome(evaluation.outcome, feedback)
        results = self._results(evaluation.outcome, request, context)
        table = evaluation.table
        feedback.pushInfo(format_table(table))
        if evaluation.not_counted:
            feedback.pushInfo(evaluation.not_counted)
        results.update(PHOTOS=table["photos"], MEDIAN_KM=table["median_km"], ACC_COUNTRY=table.get("acc_country"))
        results.update({f"ACC_{km}KM": table[f"acc_{km}km"] for km in THRESHOLDS_KM})
        return results


class FinetuneHeads(_GeoCLIPAlgorithm):
    def name(self) -> str:
        return "finetune_heads"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Fine-tune on geotagged photos"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Adapts GeoCLIP to your region or kind of imagery with photos you already have with GPS (EXIF, "
            "or a CSV of photo,lat,lon), using the paper's contrastive training with a GPS queue; CLIP stays "
            "frozen. Writes a heads folder (choose it in GeoCLIP's Models dialog) with a manifest holding the "
            "validation table before and after."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_truth_parameters()
        self.addParameter(
            QgsProcessingParameterNumber(
                "EPOCHS", "Epochs (at most)", QgsProcessingParameterNumber.Type.Integer, 20, False, 1, 1000
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean("EXTEND_GALLERY", "Add the photos' positions to the gallery", True)
        )
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "New heads folder"))
        self.addOutput(QgsProcessingOutputNumber("ACC_25KM_BEFORE", "Validation % within 25 km, before"))
        self.addOutput(QgsProcessingOutputNumber("ACC_25KM_AFTER", "Validation % within 25 km, after"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.pipeline.finetune import FinetuneSettings, tune_heads

        data, images = self._truth_source(parameters, context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        settings = FinetuneSettings(
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            extend_gallery=self.parameterAsBoolean(parameters, "EXTEND_GALLERY", context),
        )
        tuned = self._with_engine(
            parameters,
            context,
            feedback,
            lambda engine: tune_heads(
                engine,
                data,
                output,
                settings,
                images,
                FeedbackProgress(feedback),
                should_stop=feedback.isCanceled,
                on_collected=lambda collected: feedback.pushInfo(collected.line()),
            ),
        )
        feedback.pushInfo(tuned.tables())
        if tuned.kept_note:
            feedback.pushInfo(tuned.kept_note)
        return {
            "OUTPUT": output,
            "ACC_25KM_BEFORE": tuned.manifest["validation"]["before"]["acc_25km"],
            "ACC_25KM_AFTER": tuned.manifest["validation"]["after"]["acc_25km"],
        }
