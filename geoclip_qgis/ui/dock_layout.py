"""The dock's widgets, built once (as Qt Designer's setupUi would): the model's state up front, the
Input and Options tabs, the Results tab (:mod:`.dock_results`), then Run, Cancel, the progress bar
and the status line. Each widget becomes an attribute of the dock, named as the dock and its tests use
it, and each signal is connected to the dock's own slots; what those slots do is in :mod:`.dock`."""

from __future__ import annotations

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .dock_results import ResultsTab
from .photo_list import PhotoList


def build(dock) -> None:
    """The model's state, the three tabs, Run and Cancel, the progress bar and the status line."""
    body = QWidget()
    layout = QVBoxLayout(body)
    layout.setContentsMargins(4, 4, 4, 4)

    dock.model_frame = QFrame()
    dock.model_frame.setFrameShape(QFrame.Shape.StyledPanel)
    model_row = QHBoxLayout(dock.model_frame)
    model_row.setContentsMargins(6, 4, 6, 4)
    dock.model_label = QLabel()
    dock.model_label.setWordWrap(True)
    dock.model_label.setTextFormat(Qt.TextFormat.RichText)
    dock.model_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    dock.model_label.setMaximumHeight(4 * dock.model_label.fontMetrics().lineSpacing() + 4)
    dock.models_button = QPushButton("Models…")
    dock.models_button.clicked.connect(dock.open_models_dialog)
    dock.install_button = QPushButton("Install dependencies…")
    dock.install_button.clicked.connect(dock.open_install_dialog)
    dock.install_button.setVisible(False)
    model_row.addWidget(dock.model_label, 1)
    model_row.addWidget(dock.models_button)
    model_row.addWidget(dock.install_button)
    layout.addWidget(dock.model_frame)

    dock.tabs = QTabWidget()
    dock.tabs.addTab(_scrolling(_input_tab(dock)), "Input")
    dock.tabs.addTab(_scrolling(_options_tab(dock)), "Options")
    dock.tabs.addTab(_scrolling(_results_tab(dock)), "Results")
    layout.addWidget(dock.tabs, 1)
    dock.tabs.currentChanged.connect(dock._tab_shown)

    run_row = QHBoxLayout()
    dock.run_button = QPushButton("Run")
    dock.run_button.setEnabled(False)  # on once the packages and weights are known to answer
    dock.run_button.clicked.connect(dock.run)
    dock.cancel_button = QPushButton("Cancel")
    dock.cancel_button.setEnabled(False)
    dock.cancel_button.clicked.connect(dock.cancel)
    run_row.addWidget(dock.run_button, 2)
    run_row.addWidget(dock.cancel_button, 1)
    layout.addLayout(run_row)
    dock.progress = QProgressBar()
    dock.progress.setRange(0, 100)
    dock.progress.setValue(0)
    dock.progress.setFormat("%p %")
    dock.progress.setTextVisible(False)  # no percentage before a run
    layout.addWidget(dock.progress)
    dock.status = QLabel("")
    dock.status.setTextFormat(Qt.TextFormat.PlainText)  # it quotes photo names and reasons
    dock.status.setWordWrap(True)
    dock.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    dock.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    dock.status.setMaximumHeight(4 * dock.status.fontMetrics().lineSpacing() + 4)  # the rest in its tooltip
    layout.addWidget(dock.status)
    dock.setWidget(body)
    # Wide enough for the Options tab without a sideways scroll bar (it is the widest), never wider
    # than a laptop screen can spare beside the map.
    options = dock.tabs.widget(1).widget()
    dock.setMinimumWidth(min(420, max(300, options.minimumSizeHint().width() + 40)))


def _input_tab(dock) -> QWidget:
    page = QWidget()
    layout = QVBoxLayout(page)
    photos = QGroupBox("Photos and folders")
    photos_layout = QVBoxLayout(photos)
    dock.photo_list = PhotoList()
    dock.photo_list.setMinimumHeight(90)
    dock.photo_list.pathsDropped.connect(dock.add_paths)
    dock.photo_list.countsChanged.connect(dock._update_count)
    photos_layout.addWidget(dock.photo_list)
    dock.count_label = QLabel("Add photos or folders, or drop them here.")
    dock.count_label.setWordWrap(True)
    photos_layout.addWidget(dock.count_label)
    buttons = QGridLayout()
    for index, (text, slot) in enumerate(
        (
            ("Add photos…", dock._pick_files),
            ("Add folder…", dock._pick_folder),
            ("Remove", dock._remove_selected),
            ("Clear", dock.clear_paths),
        )
    ):
        button = QPushButton(text)
        button.clicked.connect(slot)
        buttons.addWidget(button, index // 2, index % 2)
    photos_layout.addLayout(buttons)
    layout.addWidget(photos)

    from_layer = QGroupBox("From a layer of photos")
    form = QFormLayout(from_layer)
    dock.layer_combo = QgsMapLayerComboBox()
    dock.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PointLayer)
    dock.layer_combo.setAllowEmptyLayer(True)
    dock.field_combo = QgsFieldComboBox()
    dock.layer_combo.layerChanged.connect(dock._layer_changed)
    dock._layer_changed(dock.layer_combo.currentLayer())
    add_layer = QPushButton("Add its photos")
    add_layer.setToolTip("Add the photos of the selected features (all features if none is selected)")
    add_layer.clicked.connect(dock.add_from_layer)
    form.addRow("Photo layer", dock.layer_combo)
    form.addRow("Photo path field", dock.field_combo)
    form.addRow("", add_layer)
    layout.addWidget(from_layer)

    text = QGroupBox("Or describe a place (text query)")
    text_layout = QVBoxLayout(text)
    dock.text_edit = QLineEdit()
    dock.text_edit.setPlaceholderText("e.g. a tropical beach with palm trees")
    dock.text_edit.textChanged.connect(lambda _: dock._update_run_state())
    text_layout.addWidget(dock.text_edit)
    layout.addWidget(text)
    layout.addStretch(1)
    return page


def _narrow(combo: QComboBox, characters: int = 16) -> QComboBox:
    """A combo as wide as the dock allows, not as its longest entry (its list still shows them whole)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


def _options_tab(dock) -> QWidget:
    from ..backend.results import HINT_WEIGHT, HINT_WEIGHT_MAX, MAX_PLACES
    from ..core.inputs import CANDIDATES

    page = QWidget()
    form = QFormLayout(page)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    dock.places_combo = _narrow(QComboBox())
    for key, words in CANDIDATES:
        dock.places_combo.addItem(words, key)
    dock.places_combo.setToolTip(
        "Distinct places: the gallery's probability grouped into places, each with its summed probability and "
        "the radius holding most of it; refined: each place's coordinates refined on the location encoder, "
        "off the gallery's grid. Gallery points: the gallery's top-k points as GeoCLIP's release answers "
        "(neighbouring points can repeat one town)."
    )
    form.addRow("Candidates", dock.places_combo)
    dock.top_k = QSpinBox()
    dock.top_k.setRange(1, MAX_PLACES)
    dock.top_k.setValue(5)
    form.addRow("Candidates per answer", dock.top_k)
    dock.places_combo.currentIndexChanged.connect(dock._places_changed)
    dock.hint_edit = QLineEdit()
    dock.hint_edit.setPlaceholderText("e.g. a harbour town in Brazil")
    dock.hint_edit.setClearButtonEnabled(True)
    dock.hint_edit.setToolTip(
        "What you already know of the place, in a few words (optional). CLIP's text feature of the hint is "
        "combined with each photo's, weighted: the answer favours places that fit both. Photos only; a text "
        "query is not steered."
    )
    hint_label = QLabel("Hint")
    hint_label.setBuddy(dock.hint_edit)
    form.addRow(hint_label)  # the hint on a line of its own, the dock's whole width: a few words to read back
    form.addRow(dock.hint_edit)
    dock.hint_weight = QDoubleSpinBox()
    dock.hint_weight.setRange(0.1, HINT_WEIGHT_MAX)
    dock.hint_weight.setSingleStep(0.1)
    dock.hint_weight.setDecimals(2)
    dock.hint_weight.setValue(HINT_WEIGHT)
    dock.hint_weight.setToolTip(
        f"How much the hint weighs against the photo: 1 as much as the photo, {HINT_WEIGHT:g} by default "
        "(a wrong hint then does not overrule a sharp photo)"
    )
    dock.hint_weight_label = QLabel("Hint weight")
    form.addRow(dock.hint_weight_label, dock.hint_weight)
    dock.hint_edit.textChanged.connect(lambda text: dock.hint_weight.setEnabled(bool(text.strip())))
    dock.hint_weight.setEnabled(False)
    dock.device_combo = QComboBox()
    dock.device_combo.addItem("Automatic (GPU if present)", "auto")
    dock.device_combo.addItem("CPU", "cpu")
    form.addRow("Device", dock.device_combo)
    dock.area_combo = _narrow(QComboBox())
    dock.area_combo.addItem("Whole world", "world")
    dock.area_combo.addItem("Current map extent", "extent")
    dock.area_combo.addItem("Selected polygons of a layer", "polygons")
    dock.area_combo.addItem("Country or region by name", "names")
    form.addRow("Area of interest", dock.area_combo)
    dock.area_layer = QgsMapLayerComboBox()
    dock.area_layer.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
    dock.area_layer_label = QLabel("Polygon layer")
    form.addRow(dock.area_layer_label, dock.area_layer)
    dock.area_name = _area_name_combo()
    dock.area_name_label = QLabel("Country or region")
    form.addRow(dock.area_name_label, dock.area_name)
    dock.area_combo.currentIndexChanged.connect(dock._area_changed)
    dock.rasters_check = QCheckBox("Probability rasters")
    dock.rasters_check.setToolTip("A world raster (0.25° cells) and local rasters (0.01°) around the best places")
    dock.world_per_photo = QCheckBox("One world raster per photo")
    dock.world_per_photo.setToolTip("Otherwise one world raster for the whole run")
    dock.rasters_check.toggled.connect(dock.world_per_photo.setEnabled)
    dock.fuse_check = QCheckBox("Also a joint answer for all photos")
    dock.fuse_check.setToolTip("For photos of one place: one answer that weighs them all together")
    dock.confidence_check = QCheckBox("Confidence areas (50 % and 90 %)")
    dock.confidence_check.setToolTip(
        "Outlines of the smallest areas holding half and nine tenths of each answer's probability, with "
        "their size in km²: a small area is a confident answer. A second or two per answer."
    )
    dock.basemap_check = QCheckBox("World map when the project is empty")
    form.addRow(dock.rasters_check)
    form.addRow(dock.world_per_photo)
    form.addRow(dock.fuse_check)
    form.addRow(dock.confidence_check)
    form.addRow(dock.basemap_check)
    dock.output = QgsFileWidget()
    dock.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
    dock.output.setFilter("GeoPackage (*.gpkg)")
    dock.output.fileChanged.connect(dock._output_changed)
    form.addRow("Output GeoPackage", dock.output)
    dock.output_hint = QLabel()
    dock.output_hint.setWordWrap(True)
    dock.output_hint.setStyleSheet("color: palette(mid);")
    form.addRow(dock.output_hint)
    dock.world_per_photo.setEnabled(False)
    dock._area_changed()
    return page


def _area_name_combo() -> QComboBox:
    """Countries and regions by name: typed, with the names that hold what is typed offered as it is typed
    (the list is filled once the option is chosen: reading it loads the gazetteer)."""
    combo = _narrow(QComboBox())
    combo.setEditable(True)
    combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    combo.lineEdit().setPlaceholderText("e.g. Brazil, or Bavaria, Germany")
    combo.setToolTip(
        "Only places in this country or first-level region (a state, province, région): type part of its name "
        "and choose. A place belongs to the country of its nearest town."
    )
    completer = QCompleter(combo.model(), combo)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    completer.setFilterMode(Qt.MatchFlag.MatchContains)
    completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
    combo.setCompleter(completer)
    return combo


def _results_tab(dock) -> QWidget:
    page = ResultsTab()
    dock.results_tab = page
    # the dock's attributes too, as every other tab's widgets are
    dock.summary, dock.judge_button = page.summary, page.judge_button
    dock.failures_box, dock.failures = page.failures_box, page.failures
    dock.accuracy_box, dock.accuracy = page.accuracy_box, page.accuracy
    page.judge_button.clicked.connect(lambda: dock.resultsWanted.emit(dock.runner.last_output))
    return page


def _scrolling(widget: QWidget) -> QScrollArea:
    """A tab's page that scrolls up and down, never sideways: its contents follow the dock's width."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area
