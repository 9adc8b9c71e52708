"""Processing algorithms for GeoCLIP's location encoder: embeddings for points, embedding maps and
similar places.

They read parameters, reproject with QGIS's transforms, call the engine's
:mod:`..backend.point_embeddings` and :mod:`..backend.embedding_maps` functions (the model from
:mod:`..backend.location_features`) and load what those write; the model work is the engine's.
Only GeoCLIP's heads are loaded (no CLIP backbone), on the device chosen in the plugin.
"""

from __future__ import annotations

import json
import threading

from qgis.core import (
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterPoint,
    QgsProcessingParameterRasterDestination,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtGui import QColor

from .algorithms import FeedbackProgress

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
BAND_CHOICES = (
    ("rgb", "RGB: first 3 principal components (Byte)"),
    ("pca", "Principal components (Float32, one band each)"),
    ("all", "All 512 feature values (Float32)"),
)

# QVariant/QMetaType type ids (the same numbers in Qt5 and Qt6) -> the engine's field kinds.
_KINDS = {
    1: "boolean",
    2: "integer",
    3: "integer",
    4: "integer64",
    5: "integer64",
    6: "real",
    14: "date",
    15: "time",
    16: "datetime",
}
_FORMATS = {"date": "yyyy-MM-dd", "time": "hh:mm:ss", "datetime": "yyyy-MM-dd hh:mm:ss"}

_models: dict = {}
_models_lock = threading.Lock()
_post_processors: list = []  # Processing keeps only pointers to them


def _type_id(value) -> int:
    return int(getattr(value, "value", value))


def _point_type():
    try:
        from qgis.core import Qgis

        return Qgis.WkbType.Point
    except AttributeError:  # QGIS before 3.30
        return QgsWkbTypes.Type.Point


def _qgs_field(name: str, kind: str) -> QgsField:
    try:
        from qgis.PyQt.QtCore import QVariant

        types = {"integer": QVariant.Type.Int, "real": QVariant.Type.Double}
    except (ImportError, AttributeError):  # Qt6: QVariant has no type enum
        from qgis.PyQt.QtCore import QMetaType

        types = {"integer": QMetaType.Type.Int, "real": QMetaType.Type.Double}
    return QgsField(name, types[kind])


def _plain(value, kind: str):
    """An attribute value as the engine's writer takes it: numbers, text, or None."""
    if value is None or (hasattr(value, "isNull") and value.isNull()):
        return None
    if kind in _FORMATS and hasattr(value, "toString"):
        return value.toString(_FORMATS[kind])
    if kind in ("integer", "integer64", "boolean"):
        return int(value)
    if kind == "real":
        return float(value)
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def location_model(progress=None):
    """The heads of the plugin's chosen settings: those of the loaded engine when there is one, else
    loaded once per QGIS session (safe from task threads)."""
    from ..backend.location.location_features import LocationModel, load_location_model
    from ..core.session import load_settings, loaded_engine

    settings = load_settings()
    engine = loaded_engine(settings)
    if engine is not None:
        return LocationModel(engine.heads, engine.heads_files, engine.device, f"{engine.model_name} (location encoder)")
    key = (settings.heads, settings.device)
    with _models_lock:
        if key not in _models:
            if progress:
                progress("Loading GeoCLIP's location encoder")
            _models.clear()
            _models[key] = load_location_model(settings.heads or None, settings.device)
        return _models[key]


class _RgbStyle(QgsProcessingLayerPostProcessorInterface):
    """Bands 1, 2, 3 as red, green, blue, bytes shown as they are."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        if isinstance(layer, QgsRasterLayer) and layer.bandCount() >= 3:
            layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3))
            layer.triggerRepaint()


SIMILAR_OPACITY = 0.7  # the similarity raster over the map: the map shows through


def similar_group(lat: float, lon: float) -> str:
    """The layer-tree group of one "similar places" result, at the top level (never in a run's group)."""
    return f"GeoCLIP: places like {lat:.4f}, {lon:.4f} (lat, lon)"


def style_similarity(layer: QgsRasterLayer) -> None:
    """Cosine similarity from the raster's minimum to its maximum, Viridis, fading out towards the least
    similar half (transparent at the minimum) and drawn at :data:`SIMILAR_OPACITY`, so the map and
    the layers under it stay visible."""
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max)
    low, high = stats.minimumValue, max(stats.maximumValue, stats.minimumValue + 1e-6)
    shader = QgsColorRampShader(
        low, high, QgsStyle.defaultStyle().colorRamp("Viridis"), QgsColorRampShader.Type.Interpolated
    )
    shader.classifyColorRamp(8, -1)
    items = shader.colorRampItemList()
    for index, item in enumerate(items):  # alpha 0 at the minimum, opaque from the middle up
        colour = QColor(item.color)
        colour.setAlpha(min(255, round(255 * 2 * index / max(1, len(items) - 1))))
        item.color = colour
    shader.setColorRampItemList(items)
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    renderer.setOpacity(SIMILAR_OPACITY)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


class _SimilarityStyle(QgsProcessingLayerPostProcessorInterface):
    """The similarity raster styled (:func:`style_similarity`) and put in the result's own group."""

    def __init__(self, group: str = ""):
        super().__init__()
        self.group = group

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        if not isinstance(layer, QgsRasterLayer):
            return
        style_similarity(layer)
        _place_apart(layer, context, self.group, 1)


class _PlaceApart(QgsProcessingLayerPostProcessorInterface):
    """A result layer put in the result's own group at the top of the layer tree."""

    def __init__(self, group: str, order: int = 0):
        super().__init__()
        self.group, self.order = group, order

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        _place_apart(layer, context, self.group, self.order)


def _place_apart(layer, context, group: str, order: int) -> None:
    from qgis.core import QgsProject

    from ..map.layers import place_apart

    if group:
        place_apart(context.project() or QgsProject.instance(), layer, group, order)


def _style_on_load(context, output: str, style: QgsProcessingLayerPostProcessorInterface) -> None:
    if context.willLoadLayerOnCompletion(output):
        _post_processors.append(style)
        context.layerToLoadOnCompletionDetails(output).setPostProcessor(style)


class _LocationAlgorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "Location embeddings"

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "location_embeddings"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def _call(self, feedback, work):
        """Run engine work; its errors become Processing errors, a cancel says nothing was written."""
        from ..backend.errors import Cancelled, GeoCLIPError

        try:
            return work(location_model(feedback.setProgressText))
        except Cancelled:
            raise QgsProcessingException("cancelled; no output was written") from None
        except GeoCLIPError as exc:
            raise QgsProcessingException(str(exc)) from None

    def _add_grid_parameters(self, cell: float) -> None:
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (default: the whole world)", optional=True))
        self.addParameter(
            QgsProcessingParameterNumber(
                "CELL", "Cell size (degrees)", QgsProcessingParameterNumber.Type.Double, cell, False, 0.0001, 90.0
            )
        )

    def _extent(self, parameters, context) -> tuple[float, float, float, float]:
        from ..backend.location.embedding_maps import WORLD

        if not parameters.get("EXTENT"):
            return WORLD
        box = self.parameterAsExtent(parameters, "EXTENT", context, WGS84)
        return (
            max(box.xMinimum(), -180.0),
            max(box.yMinimum(), -90.0),
            min(box.xMaximum(), 180.0),
            min(box.yMaximum(), 90.0),
        )


class LocationEmbeddings(_LocationAlgorithm):
    def name(self) -> str:
        return "location_embeddings"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Location embeddings for points"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "GeoCLIP's location encoder turns each point's position into a 512-number vector (unit length, "
            "as in the model: the dot product of two vectors is their cosine similarity). Points in any CRS are "
            "reprojected to WGS 84. Writes a GeoPackage copy of the points (EPSG:4326) with the vector as JSON "
            "text in field 'embedding', 'source_id' (the feature id, or the chosen id field) and optionally the "
            "first principal components as pc1..pcN (fitted on these points), plus a NumPy .npz with ids, lat, "
            "lon and embeddings (float32) for machine learning."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterFeatureSource("INPUT", "Points", [QgsProcessing.SourceType.TypeVectorPoint])
        )
        self.addParameter(
            QgsProcessingParameterField("ID_FIELD", "Id field (default: feature ids)", None, "INPUT", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "PCA",
                "Principal components as fields pc1..pcN (0: none)",
                QgsProcessingParameterNumber.Type.Integer,
                3,
                False,
                0,
                512,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Points with embeddings (GeoPackage)", "GeoPackage (*.gpkg)"
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "NPZ", "Embeddings for machine learning (NumPy .npz)", "NumPy arrays (*.npz)", optional=True
            )
        )
        self.addOutput(QgsProcessingOutputNumber("POINTS", "Points embedded"))
        self.addOutput(QgsProcessingOutputNumber("SKIPPED", "Points without a usable position"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.location.point_embeddings import embed_table, points_from_arrays, write_npz, write_points_gpkg

        source = self.parameterAsSource(parameters, "INPUT", context)
        if source is None:
            raise QgsProcessingException("no point layer given")
        id_field = self.parameterAsString(parameters, "ID_FIELD", context)
        gpkg = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        npz = self.parameterAsFileOutput(parameters, "NPZ", context) if parameters.get("NPZ") else ""
        transform = QgsCoordinateTransform(source.sourceCrs(), WGS84, context.transformContext())
        fields = source.fields()
        kinds = [_KINDS.get(_type_id(f.type()), "string") for f in fields]
        id_index = fields.indexOf(id_field) if id_field else -1

        ids, lats, lons, rows, skipped = [], [], [], [], 0
        total = source.featureCount() or 1
        feedback.setProgressText("Reading points")
        for number, feature in enumerate(source.getFeatures()):
            if feedback.isCanceled():
                raise QgsProcessingException("cancelled; no output was written")
            point = self._wgs84_point(feature.geometry(), transform)
            if point is None:
                skipped += 1
                continue
            ids.append(feature[id_index] if id_index >= 0 else feature.id())
            lats.append(point.y())
            lons.append(point.x())
            rows.append(tuple(_plain(value, kind) for value, kind in zip(feature.attributes(), kinds)))
            feedback.setProgress(100.0 * number / total)
        if skipped:
            feedback.pushInfo(f"{skipped} feature(s) without a usable position were skipped")
        if id_index >= 0:
            ids = [_plain(value, kinds[id_index]) for value in ids]

        def work(model):
            table = points_from_arrays(
                ids, lats, lons, [(f.name(), k) for f, k in zip(fields, kinds)], rows, source=source.sourceName()
            )
            progress = FeedbackProgress(feedback)
            result = embed_table(
                model, table, self.parameterAsInt(parameters, "PCA", context), progress, feedback.isCanceled
            )
            write_points_gpkg(result, gpkg, progress, feedback.isCanceled)
            if npz:
                write_npz(result, npz)
            return len(table)

        count = self._call(feedback, work)
        layer = QgsVectorLayer(f"{gpkg}|layername=embeddings", "Location embeddings", "ogr")
        if layer.isValid():
            context.temporaryLayerStore().addMapLayer(layer)
            context.addLayerToLoadOnCompletion(
                layer.id(), QgsProcessingContext.LayerDetails("Location embeddings", context.project(), "OUTPUT")
            )
        return {"OUTPUT": gpkg, "NPZ": npz or None, "POINTS": count, "SKIPPED": skipped}

    @staticmethod
    def _wgs84_point(geometry: QgsGeometry, transform: QgsCoordinateTransform) -> QgsPointXY | None:
        if geometry is None or geometry.isNull() or geometry.isEmpty():
            return None
        if geometry.isMultipart():
            parts = geometry.asMultiPoint()
            if len(parts) != 1:
                return None
            geometry = QgsGeometry.fromPointXY(parts[0])
        else:
            geometry = QgsGeometry(geometry)
        try:
            geometry.transform(transform)
        except QgsCsException:
            return None
        return geometry.asPoint()


class EmbeddingMap(_LocationAlgorithm):
    def name(self) -> str:
        return "embedding_map"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Embedding map"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "A raster of GeoCLIP's location encoder: each cell's centre goes through the encoder, and the "
            "first three principal components of those vectors (fitted on 20,000 random cells, seeded) are "
            "drawn as red, green and blue, so places the model sees alike get alike colours. Or keep N "
            "components, or all 512 values, as Float32 bands. The raster is written row by row, so large "
            "maps stay within memory; a cancelled map leaves no file."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self._add_grid_parameters(0.25)
        self.addParameter(
            QgsProcessingParameterEnum("BANDS", "Bands", [label for _, label in BAND_CHOICES], defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "COMPONENTS",
                "Principal components (for the Float32 components option)",
                QgsProcessingParameterNumber.Type.Integer,
                3,
                False,
                1,
                512,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Embedding map"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.location.embedding_maps import embedding_map

        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        bands = BAND_CHOICES[self.parameterAsEnum(parameters, "BANDS", context)][0]
        extent = self._extent(parameters, context)

        def work(model):
            return embedding_map(
                model,
                output,
                extent,
                self.parameterAsDouble(parameters, "CELL", context),
                bands,
                self.parameterAsInt(parameters, "COMPONENTS", context),
                progress=FeedbackProgress(feedback),
                should_stop=feedback.isCanceled,
            )

        made = self._call(feedback, work)
        feedback.pushInfo(
            f"{made.grid.cols} x {made.grid.rows} cells, {made.band_count} band(s); features {made.features}"
        )
        if bands == "rgb":
            _style_on_load(context, output, _RgbStyle())
        return {"OUTPUT": output}


class SimilarPlaces(_LocationAlgorithm):
    def name(self) -> str:
        return "similar_places"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return "Similar places"

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            "Where else does GeoCLIP see a place like this one? A raster of the cosine similarity (-1..1) "
            "between the point's location vector and each cell centre's, and the places of GeoCLIP's 100K "
            "GPS gallery (positions of training photos) most like it, best first. Gallery places closer to "
            "the point than the exclusion radius are left out, so the list is not the point's own "
            "neighbourhood; a separation keeps one place per neighbourhood in the list.\n\n"
            "The point is x, y: longitude first, then latitude (e.g. 2.3522,48.8566 [EPSG:4326] for Paris), "
            "in the CRS named in brackets, else in the project's CRS; picking it on the map fills it in. "
            "(The command line's `geoclip-qgis similar` takes latitude first.) The raster is drawn "
            "semi-transparent, fading out where places are least alike, and both outputs go in a group "
            "of their own at the top of the layer tree."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterPoint(
                "POINT", "Point (x, y = lon, lat, e.g. 2.35,48.86 [EPSG:4326]; or pick it on the map)"
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "TOP", "Gallery places to list", QgsProcessingParameterNumber.Type.Integer, 20, False, 1, 10000
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "EXCLUDE_KM",
                "Leave out gallery places within (km)",
                QgsProcessingParameterNumber.Type.Double,
                25.0,
                False,
                0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SPREAD_KM",
                "Keep listed places at least this far apart (km, 0: off)",
                QgsProcessingParameterNumber.Type.Double,
                0.0,
                False,
                0.0,
            )
        )
        self._add_grid_parameters(0.25)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Similarity raster"))
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                "PLACES", "Similar gallery places", QgsProcessing.SourceType.TypeVectorPoint
            )
        )
        self.addOutput(QgsProcessingOutputNumber("PEAK_SIMILARITY", "Highest similarity in the raster"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..backend.location.similar_places import PLACE_COLUMNS, similar_places

        point = self.parameterAsPoint(parameters, "POINT", context, WGS84)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        extent = self._extent(parameters, context)

        def work(model):
            return similar_places(
                model,
                point.y(),
                point.x(),
                output,
                extent,
                self.parameterAsDouble(parameters, "CELL", context),
                self.parameterAsInt(parameters, "TOP", context),
                self.parameterAsDouble(parameters, "EXCLUDE_KM", context),
                self.parameterAsDouble(parameters, "SPREAD_KM", context),
                progress=FeedbackProgress(feedback),
                should_stop=feedback.isCanceled,
            )

        found = self._call(feedback, work)
        fields = QgsFields()
        for column in PLACE_COLUMNS:
            fields.append(_qgs_field(column, "integer" if column == "rank" else "real"))
        sink, places = self.parameterAsSink(parameters, "PLACES", context, fields, _point_type(), WGS84)
        if sink is None:
            raise QgsProcessingException("cannot write the places layer")
        for place in found.places:
            feature = QgsFeature(fields)
            feature.setAttributes([place.rank, place.lat, place.lon, place.similarity, place.distance_km])
            feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(place.lon, place.lat)))
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        peak_lat, peak_lon, peak = found.peak
        feedback.pushInfo(
            f"point lat {found.lat:.5f}, lon {found.lon:.5f}; most similar cell {peak:.4f} at lat "
            f"{peak_lat:.4f}, lon {peak_lon:.4f}; {len(found.places)} gallery places listed, none within "
            f"{found.exclude_km:g} km of the point"
        )
        group = similar_group(found.lat, found.lon)
        _style_on_load(context, output, _SimilarityStyle(group))
        if places:
            _style_on_load(context, places, _PlaceApart(group, 0))
        return {"OUTPUT": output, "PLACES": places, "PEAK_SIMILARITY": peak}
