"""The frozen CLIP backbone: vision tower + projection for photos, text tower only when asked.

Every load passes a local folder (found by :mod:`..store.weights`), never a Hub name. Photos need neither
transformers nor its import time (about 2.5 s of a cold start): the vision tower is built here in plain
torch with transformers' parameter names and arithmetic (``CLIPVisionModelWithProjection``), created
empty in its final dtype on its final device and filled tensor by tensor from the checkpoint's
safetensors files with ordinary reads (:mod:`.safetensors_reader`), so peak memory is the tower in its
dtype plus one tensor (a memory map of the fp32 file would count all of it as resident). Preprocessing
is the checkpoint's ``preprocessor_config.json`` done as transformers' Pillow processor does it, bit for
bit.

Checkpoints this cannot read that way (only ``.bin`` weights, an activation or preprocessing option it
does not know) go through transformers as before: safetensors preferred, ``.bin`` files read with
``weights_only`` torch loading. The text tower always goes through transformers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import WeightsError
from ..photos.loader import FULL_GEOMETRY
from ..store.weights import REQUIRED_PROJECTION_DIM, parse_json
from .safetensors_reader import fill_from_safetensors

# transformers' CLIPVisionConfig defaults: a config.json leaves out what equals them.
_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": nn.functional.gelu,
}
# What a CLIP vision config can mean: far above every released CLIP (ViT-bigG/14: 1664 wide, 48 layers,
# 16 heads, 8192 MLP; inputs up to 448 px), far below what would exhaust memory before a weight is read.
_VISION_LIMITS = dict(
    hidden_size=16_384,
    intermediate_size=65_536,
    num_hidden_layers=256,
    num_attention_heads=256,
    image_size=1024,
    patch_size=1024,
    projection_dim=16_384,
)
_MAX_LAYER_NORM_EPS = 0.1  # released checkpoints use 1e-5 or 1e-6
MAX_IMAGE_SIDE = 1024  # pixels: the largest side a CLIP preprocessor resizes or crops to
MAX_RESIZE_OVER_CROP = 2  # the resize's short side is the crop (CLIP) or a little more (ImageNet's 256/224)


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # unused text weights in a vision-only load are expected
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _check_projection(width: int, folder: Path) -> None:
    if width != REQUIRED_PROJECTION_DIM:
        raise WeightsError(
            f"CLIP checkpoint {folder} projects to {width} dimensions; GeoCLIP's image head needs "
            f"{REQUIRED_PROJECTION_DIM} (CLIP ViT-L/14)"
        )


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model*.safetensors"))


# ------------------------------------------------------------------------------ the vision tower


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    projection_dim: int


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_vision_numbers(values: dict, folder: Path) -> None:
    """Refuse numbers no CLIP vision tower can have (a WeightsError naming the value): sizes outside
    :data:`_VISION_LIMITS`, channels other than RGB's 3, a layer-norm epsilon that is not a small positive
    number (NaN, infinite, zero or absurd)."""

    def refuse(name, value, wanted):
        raise WeightsError(f"config.json in {folder}: {name} is {value!r}, which no CLIP checkpoint has ({wanted})")

    for name, most in _VISION_LIMITS.items():
        value = values.get(name)
        if not (_whole(value) and 1 <= value <= most):
            refuse(name, value, f"a whole number from 1 to {most:,}")
    if values.get("num_channels") != 3:
        refuse("num_channels", values.get("num_channels"), "3: photos are RGB")
    eps = values.get("layer_norm_eps")
    if not (_real(eps) and 0 < eps <= _MAX_LAYER_NORM_EPS):
        refuse("layer_norm_eps", eps, f"a number above 0 and at most {_MAX_LAYER_NORM_EPS}")


def read_vision_config(folder: Path) -> VisionConfig | None:
    """The vision tower's shape from config.json (a CLIPModel's ``vision_config``, or a vision-only
    config), or None when it asks for something this module does not implement (transformers then
    loads it). Numbers no CLIP can have are refused (WeightsError), whichever loads it."""
    try:
        config = parse_json((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # transformers could not read it either
        raise WeightsError(f"cannot read config.json in {folder}: {exc}") from None
    if not isinstance(config, dict):
        raise WeightsError(f"config.json in {folder} is not a CLIP configuration (not a JSON object)")
    if config.get("model_type") == "clip":
        config = config.get("vision_config") or {}
        if not isinstance(config, dict):
            return None
    elif config.get("model_type") != "clip_vision_model":
        return None
    values = {name: config.get(name, default) for name, default in _VISION_DEFAULTS.items()}
    _check_vision_numbers(values, folder)
    shape = VisionConfig(**values)
    if shape.hidden_size % shape.num_attention_heads or shape.image_size % shape.patch_size:
        return None
    if shape.hidden_act not in _ACTIVATIONS:
        return None
    return shape


# Modules created with uninitialised parameters on their final device in their final dtype: every value
# comes from the checkpoint, so random initialisation would only cost time (and building on the meta
# device, then ``to_empty``, pulls in torch's symbolic-shape machinery: half a second of imports).
class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class _LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class _Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        pass


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, **where):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.k_proj = _Linear(width, width, **where)
        self.v_proj = _Linear(width, width, **where)
        self.q_proj = _Linear(width, width, **where)
        self.out_proj = _Linear(width, width, **where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        shape = (batch, tokens, self.heads, -1)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class _Mlp(nn.Module):
    def __init__(self, config: VisionConfig, **where):
        super().__init__()
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.fc1 = _Linear(config.hidden_size, config.intermediate_size, **where)
        self.fc2 = _Linear(config.intermediate_size, config.hidden_size, **where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, config: VisionConfig, **where):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = _Attention(width, config.num_attention_heads, **where)
        self.layer_norm1 = _LayerNorm(width, eps=eps, **where)
        self.mlp = _Mlp(config, **where)
        self.layer_norm2 = _LayerNorm(width, eps=eps, **where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Table(nn.Module):
    """An embedding table used whole (every position, in order): just its ``weight``."""

    def __init__(self, rows: int, width: int, **where):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, width, **where))


class _Embeddings(nn.Module):
    def __init__(self, config: VisionConfig, **where):
        super().__init__()
        width, patch = config.hidden_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(width, **where))
        self.patch_embedding = _Conv2d(config.num_channels, width, kernel_size=patch, stride=patch, bias=False, **where)
        self.position_embedding = _Table((config.image_size // patch) ** 2 + 1, width, **where)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Encoder(nn.Module):
    def __init__(self, config: VisionConfig, **where):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(config, **where) for _ in range(config.num_hidden_layers))


class _VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig, **where):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = _Embeddings(config, **where)
        self.pre_layrnorm = _LayerNorm(width, eps=eps, **where)  # sic: transformers' name
        self.encoder = _Encoder(config, **where)
        self.post_layernorm = _LayerNorm(width, eps=eps, **where)


class ClipVisionTower(nn.Module):
    """CLIP's vision transformer and visual projection: (B, C, S, S) pixels -> (B, projection) embeddings.

    Same parameter names and the same arithmetic as transformers' ``CLIPVisionModelWithProjection``
    (scaled-dot-product attention, pre-norm layers, class token through ``post_layernorm``)."""

    def __init__(self, config: VisionConfig, dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        super().__init__()
        self.config = config
        where = dict(dtype=dtype, device=device)
        self.vision_model = _VisionTransformer(config, **where)
        self.visual_projection = _Linear(config.hidden_size, config.projection_dim, bias=False, **where)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(f"input image size {tuple(pixel_values.shape[-2:])} does not match the model ({size})")
        model = self.vision_model
        x = model.pre_layrnorm(model.embeddings(pixel_values))
        for layer in model.encoder.layers:
            x = layer(x)
        return self.visual_projection(model.post_layernorm(x[:, 0, :]))


class _TransformersVision(nn.Module):
    """transformers' own vision model behind the same call: pixels -> image embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


def _own_vision_tower(folder: Path, device: torch.device, dtype: torch.dtype) -> ClipVisionTower | None:
    config = read_vision_config(folder)
    files = _safetensors_files(folder)
    if config is None or not files:
        return None
    _check_projection(config.projection_dim, folder)
    model = ClipVisionTower(config, dtype, device)
    fill_from_safetensors(model, files)
    return model


def load_vision_tower(folder: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """CLIP's vision transformer and visual projection, in eval mode, on ``device`` in ``dtype``; called
    with (B, 3, S, S) pixels it returns (B, 768) image embeddings."""
    try:
        model = _own_vision_tower(folder, device, dtype)
        if model is None:
            model = _TransformersVision(_transformers_vision_tower(folder, dtype))
            _check_projection(model.model.config.projection_dim, folder)
            model = model.to(device)
    except WeightsError as exc:
        if "projects to" in str(exc):
            raise
        raise WeightsError(f"cannot load the CLIP vision tower from {folder}: {exc}") from exc
    except OSError as exc:
        raise WeightsError(f"cannot load the CLIP vision tower from {folder}: {exc}") from exc
    return model.eval().requires_grad_(False)


def _transformers_vision_tower(folder: Path, dtype: torch.dtype):
    from transformers import CLIPVisionModelWithProjection

    _quiet_transformers()
    try:
        # A local folder found by .weights, never a Hub name, so there is no revision to pin.
        return CLIPVisionModelWithProjection.from_pretrained(  # nosec B615
            str(folder), local_files_only=True, use_safetensors=bool(_safetensors_files(folder)), dtype=dtype
        )
    except Exception as exc:  # unreadable, damaged or refused (a pickle payload in a .bin): never a crash
        raise WeightsError(str(exc)) from exc


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
            str(folder), local_files_only=True, use_safetensors=bool(_safetensors_files(folder)), dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)  # nosec B615
    except Exception as exc:
        raise WeightsError(
            f"cannot load the CLIP text tower from {folder} (text queries need a full CLIP checkpoint "
            f"with its tokenizer files vocab.json and merges.txt): {exc}"
        ) from exc
    _check_projection(model.config.projection_dim, folder)
    return model.to(device).eval().requires_grad_(False), tokenizer


# ------------------------------------------------------------------------------ preprocessing

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Keys of preprocessor_config.json that do not change the pixels of an RGB photo.
_NEUTRAL_KEYS = {"feature_extractor_type", "image_processor_type", "processor_class"}
_HANDLED_KEYS = {"do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size"}
_HANDLED_KEYS |= {"do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std"}


def _check_preprocessor(config: dict, folder: Path) -> None:
    """Refuse a preprocessor_config.json whose values no CLIP preprocessor can mean (a WeightsError
    naming the value): sides outside 1..:data:`MAX_IMAGE_SIDE` pixels (a million-pixel resize of every
    photo), a resize far above the crop, a crop other than the tower's input, rescale factors, means or
    standard deviations that are not small finite numbers, an unknown resampling filter."""

    def refuse(name, value, wanted):
        raise WeightsError(
            f"preprocessor_config.json in {folder}: {name} is {value!r}, which no CLIP preprocessor means ({wanted})"
        )

    sides = {}
    for key in ("size", "crop_size"):
        value = config.get(key)
        if value is None:
            continue
        for name, number in value.items() if isinstance(value, dict) else [(key, value)]:
            if number is None and isinstance(value, dict):
                continue  # transformers writes unused keys of a size as null
            if not (_whole(number) and 1 <= number <= MAX_IMAGE_SIDE):
                refuse(f"{key}.{name}" if isinstance(value, dict) else key, number, f"1 to {MAX_IMAGE_SIDE} pixels")
            sides.setdefault(key, []).append(number)
    crop = max(sides.get("crop_size", [224]))
    if max(sides.get("size", [0])) > MAX_RESIZE_OVER_CROP * crop:
        refuse("size", config.get("size"), f"at most {MAX_RESIZE_OVER_CROP} times the crop of {crop} pixels")
    if "resample" in config and not (_whole(config["resample"]) and 0 <= config["resample"] <= 5):
        refuse("resample", config["resample"], "one of Pillow's filters, 0 to 5")
    if "rescale_factor" in config and not (_real(config["rescale_factor"]) and 0 < config["rescale_factor"] <= 1):
        refuse("rescale_factor", config["rescale_factor"], "a number above 0 and at most 1")
    for key, low in (("image_mean", -1e3), ("image_std", 1e-6)):
        if key not in config:
            continue
        value = config[key]
        numbers = value if isinstance(value, list) else [value]
        if len(numbers) not in (1, 3) or not all(_real(n) and low <= n <= 1e3 for n in numbers):
            refuse(key, value, f"one or three numbers from {low:g} to 1000")
    vision = read_vision_config(folder) if (folder / "config.json").is_file() else None
    crops = sides.get("crop_size")
    if vision is not None and crops is not None and set(crops) != {vision.image_size}:
        refuse("crop_size", config.get("crop_size"), f"config.json's image_size of {vision.image_size} pixels")


class ClipPreprocessor:
    """transformers' CLIP Pillow processor for one photo, without its per-call overhead: shortest side
    resized with Pillow's filter, centre crop, then rescale and normalise through a 256-entry table per
    channel computed with the same float64/float32 steps, so the pixels are bit for bit the same."""

    def __init__(self, shortest_edge: int, crop: tuple[int, int], resample: int, scale, mean, std):
        self.shortest_edge, self.crop, self.resample = shortest_edge, crop, resample
        levels = np.arange(256, dtype=np.float64)
        levels = (levels * scale).astype(np.float32) if scale is not None else levels.astype(np.float32)
        table = np.broadcast_to(levels, (3, 256)).astype(np.float32)
        if mean is not None:
            table = (table - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
        self._table = np.ascontiguousarray(table, dtype=np.float32).reshape(-1)
        self._offsets = np.array([0, 256, 512], dtype=np.intp)

    @classmethod
    def from_config(cls, config: dict) -> ClipPreprocessor | None:
        """None when the config asks for something only transformers' processor does."""
        if set(config) - _NEUTRAL_KEYS - _HANDLED_KEYS:
            return None
        if not all(config.get(k, True) is True for k in ("do_convert_rgb", "do_resize", "do_center_crop")):
            return None
        size, crop = config.get("size", {"shortest_edge": 224}), config.get("crop_size", {"height": 224, "width": 224})
        if isinstance(size, dict):
            if set(size) != {"shortest_edge"}:
                return None
            size = size["shortest_edge"]
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if not isinstance(size, int) or not isinstance(crop, dict) or set(crop) != {"height", "width"}:
            return None
        crop = (crop["height"], crop["width"])
        if not all(isinstance(c, int) and 0 < c <= size for c in crop):
            return None  # transformers would pad: not CLIP's case
        resample = config.get("resample", 3)
        if resample not in range(6):
            return None
        scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
        mean = std = None
        if config.get("do_normalize", True):
            mean, std = config.get("image_mean", OPENAI_CLIP_MEAN), config.get("image_std", OPENAI_CLIP_STD)
            if not all(isinstance(v, (list, tuple)) and len(v) == 3 for v in (mean, std)):
                return None
        return cls(size, crop, resample, scale, mean, std)

    def __call__(self, image: Image.Image) -> np.ndarray:
        # A photo decoded at reduced scale says where its full picture lies (photos.FULL_GEOMETRY): the
        # resize then samples the points the full picture's resize samples, and the crop is the same.
        (width, height), box = image.info.get(FULL_GEOMETRY) or (image.size, None)
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")  # as transformers does: transparency onto white
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        short, long_ = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long_ / short)
        size = (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)
        image = image.resize(size, resample=self.resample, box=box, reducing_gap=None)
        crop_h, crop_w = self.crop
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        rgb = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)))
        return np.ascontiguousarray(np.take(self._table, rgb + self._offsets).transpose(2, 0, 1))


def load_image_processor(folder: Path) -> Callable:
    """The checkpoint's own preprocessing (resize, centre crop, normalise): an upright RGB PIL image ->
    (3, H, W) float32 pixels.

    Always transformers' Pillow implementation (here, or transformers' own class for configs this one
    does not cover): CLIP was trained on Pillow's bicubic resize, and the torchvision one (transformers
    5's default when torchvision is installed) gives slightly different pixels.
    """
    try:
        config = parse_json((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read preprocessor_config.json in {folder}: {exc}") from None
    _check_preprocessor(config, folder)
    fast = ClipPreprocessor.from_config(config)
    if fast is not None:
        return fast
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5
    except ImportError:
        from transformers import CLIPImageProcessor as Processor  # transformers 4: Pillow-based

    try:
        processor = Processor.from_pretrained(str(folder), local_files_only=True)  # nosec B615
    except Exception as exc:
        raise WeightsError(f"cannot read preprocessor_config.json in {folder}: {exc}") from exc
    return lambda image: processor(images=image, return_tensors="np")["pixel_values"][0]
