"""The frozen CLIP backbone: vision tower + projection for photos, text tower only when asked.

Every load passes a local folder (found by :mod:`.weights`), never a Hub name, with
``local_files_only=True``; safetensors is preferred and ``.bin`` files are read by transformers with
``weights_only`` torch loading.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import WeightsError
from .weights import REQUIRED_PROJECTION_DIM


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # unused text weights in a vision-only load are expected
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _check_projection(model, folder: Path) -> None:
    width = model.config.projection_dim
    if width != REQUIRED_PROJECTION_DIM:
        raise WeightsError(
            f"CLIP checkpoint {folder} projects to {width} dimensions; GeoCLIP's image head needs "
            f"{REQUIRED_PROJECTION_DIM} (CLIP ViT-L/14)"
        )


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("model*.safetensors"))


def load_vision_tower(folder: Path, device: torch.device, dtype: torch.dtype):
    """CLIP's vision transformer and visual projection, in eval mode, on ``device`` in ``dtype``."""
    from transformers import CLIPVisionModelWithProjection

    _quiet_transformers()
    try:
        # A local folder found by .weights, never a Hub name, so there is no revision to pin.
        model = CLIPVisionModelWithProjection.from_pretrained(  # nosec B615
            str(folder), local_files_only=True, use_safetensors=_has_safetensors(folder), dtype=dtype
        )
    except Exception as exc:  # unreadable, damaged or refused (a pickle payload in a .bin): never a crash
        raise WeightsError(f"cannot load the CLIP vision tower from {folder}: {exc}") from exc
    _check_projection(model, folder)
    return model.to(device).eval().requires_grad_(False)


def load_text_tower(folder: Path, device: torch.device, dtype: torch.dtype):
    """CLIP's text transformer and text projection plus its tokenizer, for text queries."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    _quiet_transformers()
    has_tokenizer = (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    )
    try:
        if not has_tokenizer:  # transformers would quietly build an empty tokenizer instead
            raise OSError(f"no tokenizer.json, nor vocab.json + merges.txt, in {folder}")
        # Local folders only, as for the vision tower.
        model = CLIPTextModelWithProjection.from_pretrained(  # nosec B615
            str(folder), local_files_only=True, use_safetensors=_has_safetensors(folder), dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)  # nosec B615
    except Exception as exc:
        raise WeightsError(
            f"cannot load the CLIP text tower from {folder} (text queries need a full CLIP checkpoint "
            f"with its tokenizer files vocab.json and merges.txt): {exc}"
        ) from exc
    _check_projection(model, folder)
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_image_processor(folder: Path):
    """The checkpoint's own preprocessing (resize, centre crop, normalise) as transformers defines it.

    Always the Pillow implementation: CLIP was trained on Pillow's bicubic resize, and the torchvision
    one (transformers 5's default when torchvision is installed) gives slightly different pixels.
    """
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5
    except ImportError:
        from transformers import CLIPImageProcessor as Processor  # transformers 4: Pillow-based

    try:
        return Processor.from_pretrained(str(folder), local_files_only=True)  # nosec B615
    except Exception as exc:
        raise WeightsError(f"cannot read preprocessor_config.json in {folder}: {exc}") from exc
