"""The model state: what runs with the weights found, what stands in the way and each door's fix, as one
typed engine value (no QGIS), and the plugin's headless parts reading it without any dialog."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clip_factory import make_clip_checkpoint

from geoclip_qgis.backend.model.model_state import (
    NOT_LOADED,
    Capability,
    Door,
    Problem,
    ProblemCode,
    model_state,
    source_words,
)

ROOT = Path(__file__).resolve().parents[1]


def test_missing_heads_block_everything_and_name_the_folder_chosen(tmp_path, tiny_clip):
    state = model_state(heads=tmp_path / "usb-stick" / "heads", clip=tiny_clip)
    assert not any(state.can(capability) for capability in Capability)
    problem = state.blocking(Capability.RASTERS)
    assert problem is state.problems[0] and problem.code is ProblemCode.HEADS_MISSING
    assert problem.blocks == frozenset(Capability)
    assert problem.text == (
        "GeoCLIP's trained heads (image head, location encoder, GPS gallery) were not found. "
        f"The folder {tmp_path / 'usb-stick' / 'heads'} cannot be used: no such folder."
    )
    assert not state.heads.found and state.heads.path == "" and state.heads.title == "GeoCLIP heads"
    place = state.heads.tried[0]
    assert (place.source, place.reason, place.has_folder) == ("--heads", "no such folder", True)
    assert state.backbone.found and state.backbone.path == str(tiny_clip)
    # each door says the same problem with its own fix
    assert state.plain_message(Door.QGIS) == f"{problem.text} {problem.fix_qgis}"
    assert "Install heads…" in state.plain_message(Door.QGIS) and "--heads" not in state.plain_message(Door.QGIS)
    assert "pass --heads DIR" in state.plain_message(Door.COMMAND_LINE)


def test_a_missing_backbone_blocks_photos_and_text_not_rasters(tmp_path):
    state = model_state(clip=tmp_path / "no-clip")
    assert state.heads.found and state.heads.source == "geoclip wheel"
    assert [p.code for p in state.problems] == [ProblemCode.BACKBONE_MISSING]
    assert state.can(Capability.RASTERS) and not state.can(Capability.PHOTOS) and not state.can(Capability.TEXT)
    assert state.blocking(Capability.RASTERS) is None
    assert state.backbone.architecture is None and state.warning is None
    assert source_words(state.backbone.tried[0].source) == "the CLIP folder chosen in Models…"


def test_a_vision_only_checkpoint_blocks_text_only(tmp_path):
    vision_only = make_clip_checkpoint(tmp_path / "vision-only", with_text=False)
    state = model_state(clip=vision_only)
    assert state.can(Capability.PHOTOS) and state.can(Capability.RASTERS) and not state.can(Capability.TEXT)
    assert state.blocking(Capability.PHOTOS) is None
    no_text = state.blocking(Capability.PHOTOS, Capability.TEXT)
    assert no_text is state.problem(ProblemCode.NO_TEXT) and no_text.blocks == {Capability.TEXT}
    assert no_text.short == "this CLIP checkpoint cannot answer text queries"
    # the small checkpoint runs but is not what GeoCLIP was trained on: a warning that blocks nothing
    assert state.warning is state.problem(ProblemCode.NOT_VIT_L14) and state.warning.blocks == frozenset()
    architecture = state.backbone.architecture
    assert not architecture.vit_l14 and not architecture.answers_text and architecture.weights_bytes > 0
    assert state.plain_message(Door.QGIS) == f"{no_text.text} {no_text.fix_qgis}"


def test_every_problem_has_a_fix_for_each_door_in_that_door_s_words():
    for code in ProblemCode:
        problem = Problem.of(code, "what is wrong")
        assert problem.short and problem.fix(Door.QGIS) == problem.fix_qgis
        assert problem.fix(Door.COMMAND_LINE) == problem.fix_command_line
        command_line, qgis = problem.fix_command_line, problem.fix_qgis
        assert "--" in command_line or "geoclip-qgis " in command_line, code
        assert "Models…" in qgis and "--" not in qgis and "geoclip-qgis" not in qgis, code
        # said inside the Models dialog: its buttons, without sending the user to Models…
        inside = problem.fix_in_models_dialog()
        assert "Models…" not in inside and inside[:1].isupper(), code
    assert set(NOT_LOADED) == set(Door)


# A module that imports QtWidgets when it is loaded: at the start of a line, not indented in a function.
WIDGETS_AT_IMPORT = re.compile(r"^from qgis\.PyQt(\.QtWidgets import| import .*\bQtWidgets\b)", re.M)

HEADLESS_IMPORTS = """
import json, sys
from qgis_support import qgis_app
qgis_app()
import geoclip_qgis.processing.algorithms, geoclip_qgis.core.tasks, geoclip_qgis.core.session
geoclip_qgis.core.session.weights_message()  # said with the engine's words, no dialog behind it
print(json.dumps({name: getattr(module, "__file__", "") for name, module in sys.modules.items()
                  if name.startswith("geoclip_qgis")}))
"""


@pytest.mark.qgis
def test_processing_and_the_run_task_import_no_dialog_module():
    """Headless Processing (qgis_process) gets its weights words from the engine, not from a dialog."""
    search_path = [str(ROOT / "tests"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    out = subprocess.run(
        [sys.executable, "-c", HEADLESS_IMPORTS],
        capture_output=True,
        text=True,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=os.pathsep.join(search_path)),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "geoclip_qgis.processing.algorithms" in loaded and "geoclip_qgis.backend.model.model_state" in loaded
    assert "geoclip_qgis.ui.models_dialog" not in loaded and "geoclip_qgis.ui.dock" not in loaded
    with_widgets = [name for name, path in loaded.items() if path and WIDGETS_AT_IMPORT.search(Path(path).read_text())]
    assert with_widgets == []
