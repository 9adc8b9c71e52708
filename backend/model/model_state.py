"""What can run with the weights found, what stands in the way, and how to fix it: one typed value,
:class:`ModelState`, read by the command line, the plugin's dock, its Models dialog, Processing and the
diagnostics report. No Qt here, no torch: the dock asks for it when QGIS starts.

Each problem carries its fix for each door (:class:`Door`): the command line's options and commands,
or QGIS's dialogs and buttons, so a headless Processing run says the same words as the dock without
importing any dialog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from ..store.weights import (
    FIX_CLIP,
    FIX_HEADS,
    BackboneArchitecture,
    Lookup,
    backbone_architecture,
    find_backbone,
    find_heads,
    not_vit_l14_warning,
)


class Door(Enum):
    """Where the user meets the engine, which decides how a fix is said."""

    COMMAND_LINE = "command line"
    QGIS = "qgis"


class Capability(Enum):
    """What the weights found can do; ``label`` and ``needs`` are the Models dialog's words."""

    label: str
    needs: str

    PHOTOS = ("photos", "Answer photos", "the heads and a CLIP backbone")
    TEXT = ("text", "Text queries", "the heads and a CLIP checkpoint with its text tower and tokenizer")
    RASTERS = ("rasters", "Probability rasters, location embeddings", "the heads")

    def __new__(cls, key: str, label: str, needs: str):
        member = object.__new__(cls)
        member._value_ = key
        member.label, member.needs = label, needs
        return member


class ProblemCode(Enum):
    HEADS_MISSING = "heads_missing"
    BACKBONE_MISSING = "backbone_missing"
    NOT_VIT_L14 = "not_vit_l14"
    NO_TEXT = "no_text"


# What each problem stops: a checkpoint that is not ViT-L/14 runs, its answers are only not meaningful.
BLOCKS = {
    ProblemCode.HEADS_MISSING: frozenset(Capability),
    ProblemCode.BACKBONE_MISSING: frozenset({Capability.PHOTOS, Capability.TEXT}),
    ProblemCode.NOT_VIT_L14: frozenset(),
    ProblemCode.NO_TEXT: frozenset({Capability.TEXT}),
}

# The dock's short phrase after "Not ready:" and in Run's tooltip.
SHORT_PROBLEMS = {
    ProblemCode.HEADS_MISSING: "GeoCLIP's heads are missing",
    ProblemCode.BACKBONE_MISSING: "the CLIP backbone is missing",
    ProblemCode.NOT_VIT_L14: "the CLIP checkpoint is not ViT-L/14: answers are not meaningful",
    ProblemCode.NO_TEXT: "this CLIP checkpoint cannot answer text queries",
}

# How to fix each problem, per door. The command line's first two are the lookups' own words (weights.py).
FIXES = {
    Door.COMMAND_LINE: {
        ProblemCode.HEADS_MISSING: FIX_HEADS,
        ProblemCode.BACKBONE_MISSING: FIX_CLIP,
        ProblemCode.NOT_VIT_L14: "for real answers, pass --clip DIR naming a CLIP ViT-L/14 checkpoint folder (or "
        "leave it out), or run: geoclip-qgis models import PATH, or, online: geoclip-qgis models download",
        ProblemCode.NO_TEXT: "pass --clip DIR naming a full CLIP checkpoint (with vocab.json and merges.txt), "
        "or ask with photos",
    },
    Door.QGIS: {  # with the Models dialog's buttons, never command-line options
        ProblemCode.HEADS_MISSING: "In Models…, press Install heads… for GeoCLIP's release (about 40 MB, online or "
        "from a folder of wheels), Import folder… for a heads folder (weights/*.pth and gps_gallery/*.csv) or Import "
        "bundle… for a GeoCLIP model bundle (.zip).",
        ProblemCode.BACKBONE_MISSING: "In Models…, press Import folder… and choose a CLIP ViT-L/14 checkpoint folder "
        "(from a USB stick, say), Import bundle… for a GeoCLIP model bundle (.zip), or Download backbone (about 1.7 "
        "GB, the only time GeoCLIP uses the network).",
        ProblemCode.NOT_VIT_L14: "For real answers, import the CLIP ViT-L/14 checkpoint in Models… (Import folder…, "
        "Import bundle… or Download backbone) and leave the CLIP folder empty, or choose the ViT-L/14 folder there.",
        ProblemCode.NO_TEXT: "Import the full CLIP checkpoint (with vocab.json and merges.txt) in Models…, or use "
        "photos.",
    },
}

# When no problem explains why the model would not load (or the state itself could not be read).
NOT_LOADED = {
    Door.COMMAND_LINE: "The model could not be loaded. Run geoclip-qgis models status to check the weights.",
    Door.QGIS: "The model could not be loaded. Open Models… to check the weights (details in the GeoCLIP log).",
}

# Where a weight file was found, in the words of someone using QGIS.
SOURCE_WORDS = {
    "--heads": "the heads folder chosen in Models…",
    "--clip": "the CLIP folder chosen in Models…",
    "$GEOCLIP_HEADS": "the folder in the GEOCLIP_HEADS environment variable",
    "$GEOCLIP_CLIP": "the folder in the GEOCLIP_CLIP environment variable",
    "models folder": "GeoCLIP's models folder",
    "geoclip wheel": "the installed geoclip package",
    "Hugging Face cache": "the Hugging Face cache",
}


def source_words(source: str) -> str:
    return SOURCE_WORDS.get(source, source)


@dataclass(frozen=True)
class Problem:
    """One thing that stands in the way: ``text`` says what is wrong (no command, no button), ``short`` is
    the dock's phrase, ``blocks`` what it stops, and each door has its fix."""

    code: ProblemCode
    text: str
    short: str
    blocks: frozenset[Capability]
    fix_command_line: str
    fix_qgis: str

    @classmethod
    def of(cls, code: ProblemCode, text: str) -> Problem:
        return cls(
            code, text, SHORT_PROBLEMS[code], BLOCKS[code], FIXES[Door.COMMAND_LINE][code], FIXES[Door.QGIS][code]
        )

    def fix(self, door: Door) -> str:
        return self.fix_qgis if door is Door.QGIS else self.fix_command_line

    def fix_in_models_dialog(self) -> str:
        """QGIS's fix said in the Models dialog itself, so not "open Models…"."""
        return self.fix_qgis.replace("In Models…, press", "Press").replace(" in Models…", "")


@dataclass(frozen=True)
class PlaceTried:
    """A place a part was sought and why it was passed over."""

    source: str  # "--clip", "models folder"... (see SOURCE_WORDS)
    path: str  # a folder, or "(...)" in brackets where there was nothing to point at
    reason: str

    @property
    def has_folder(self) -> bool:
        return not self.path.startswith("(")


@dataclass(frozen=True)
class PartState:
    """Where one part of the model (the heads or the backbone) was found, or everywhere it was sought."""

    key: str  # "heads" or "backbone"
    title: str
    found: bool
    path: str  # "" when not found
    source: str
    tried: tuple[PlaceTried, ...]
    architecture: BackboneArchitecture | None = None  # the backbone's, when found

    @classmethod
    def of(cls, key: str, title: str, lookup: Lookup, architecture: BackboneArchitecture | None = None) -> PartState:
        tried = tuple(PlaceTried(*entry) for entry in lookup.tried)
        return cls(key, title, lookup.path is not None, str(lookup.path or ""), lookup.source, tried, architecture)


@dataclass(frozen=True)
class ModelState:
    heads: PartState
    backbone: PartState
    problems: tuple[Problem, ...]

    @property
    def parts(self) -> tuple[PartState, PartState]:
        return (self.heads, self.backbone)

    def can(self, capability: Capability) -> bool:
        return all(capability not in problem.blocks for problem in self.problems)

    def blocking(self, *capabilities: Capability) -> Problem | None:
        """The first problem that stops any of these capabilities, or None when they can all run."""
        wanted = set(capabilities)
        return next((problem for problem in self.problems if problem.blocks & wanted), None)

    def problem(self, code: ProblemCode) -> Problem | None:
        return next((problem for problem in self.problems if problem.code is code), None)

    @property
    def warning(self) -> Problem | None:
        """The checkpoint runs but is not ViT-L/14: its answers are not meaningful places."""
        return self.problem(ProblemCode.NOT_VIT_L14)

    def plain_message(self, door: Door) -> str:
        """Why the model cannot load, and the fix in this door's words."""
        problem = self.blocking(*Capability)
        return NOT_LOADED[door] if problem is None else f"{problem.text} {problem.fix(door)}"


def _passed_over(part: PartState) -> str:
    """Why the folder the user named (an option or environment variable) was not used; "" otherwise."""
    named = part.tried[0] if part.tried else None
    if named is not None and named.source.startswith(("--", "$")):
        return f" The folder {named.path} cannot be used: {named.reason}."
    return ""


def model_state(heads: str | os.PathLike | None = None, clip: str | os.PathLike | None = None) -> ModelState:
    """What can run with the weights found (``heads``, ``clip``: the folders chosen, else the lookup order
    of :mod:`..store.weights`), and what stands in the way."""
    heads_part = PartState.of("heads", "GeoCLIP heads", find_heads(heads))
    clip_lookup = find_backbone(clip)
    architecture = backbone_architecture(clip_lookup.path) if clip_lookup.path is not None else None
    backbone_part = PartState.of("backbone", "CLIP backbone", clip_lookup, architecture)
    problems = []
    if not heads_part.found:
        problems.append(
            Problem.of(
                ProblemCode.HEADS_MISSING,
                "GeoCLIP's trained heads (image head, location encoder, GPS gallery) were not found."
                + _passed_over(heads_part),
            )
        )
    if architecture is None:
        problems.append(
            Problem.of(
                ProblemCode.BACKBONE_MISSING,
                "The CLIP ViT-L/14 backbone, which turns photos into features, was not found."
                + _passed_over(backbone_part),
            )
        )
    elif not architecture.vit_l14:
        problems.append(Problem.of(ProblemCode.NOT_VIT_L14, not_vit_l14_warning(architecture.description)))
    if architecture is not None and not architecture.answers_text:
        missing = "its text tower" if not architecture.text_tower else "its tokenizer (vocab.json and merges.txt)"
        text = f"The CLIP checkpoint lacks {missing}: text queries cannot run (photos can)."
        problems.append(Problem.of(ProblemCode.NO_TEXT, text))
    return ModelState(heads=heads_part, backbone=backbone_part, problems=tuple(problems))
