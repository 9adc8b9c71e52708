"""Tensors read from safetensors files with ordinary reads: the header checked against the file's size,
each tensor read straight into its place (nothing memory-mapped, so peak memory is the model plus one
tensor). Used for the vision tower (:mod:`.backbone`) and the cached gallery features (:mod:`.gallery`)."""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..store.weights import parse_json

VISION_PREFIXES = ("vision_model.", "visual_projection.")
_IGNORED_KEYS = ("position_ids",)  # a buffer older checkpoints stored; computed, not learned
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class _Stored:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


def safetensors_index(path: Path) -> dict[str, _Stored]:
    """Name -> where and how each tensor is stored, from the file's header, checked against its size."""
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(8)
        if len(head) != 8:
            raise WeightsError(f"{path.name} is too short to be a safetensors file")
        length = struct.unpack("<Q", head)[0]
        if length > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path.name} has a damaged safetensors header")
        try:
            header = parse_json(handle.read(length))
        except ValueError as exc:
            raise WeightsError(f"{path.name} has a damaged safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path.name} has a damaged safetensors header: not a JSON object")
    base = 8 + length
    index = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            shape = tuple(int(n) for n in entry["shape"])
            start, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path.name}: damaged header entry for {name}") from None
        if dtype is None:
            if name.startswith(VISION_PREFIXES):
                raise WeightsError(f"{path.name}: {name} is stored as {entry['dtype']}, not a float type")
            continue
        if end - start != math.prod(shape) * dtype.itemsize or start < 0 or base + end > size:
            raise WeightsError(f"{path.name}: {name} lies outside the file (damaged or truncated)")
        index[name] = _Stored(path, dtype, shape, base + start, base + end)
    return index


def read_exactly(handle, offset: int, target: torch.Tensor) -> None:
    """Read the bytes at ``offset`` into a contiguous CPU tensor (plain reads: nothing mapped)."""
    view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
    handle.seek(offset)
    done = 0
    while done < len(view):
        count = handle.readinto(view[done:])
        if not count:
            raise WeightsError(f"{Path(handle.name).name} ends early (truncated)")
        done += count


@torch.no_grad()
def fill_from_safetensors(model: nn.Module, files: list[Path], prefixes: tuple[str, ...] = VISION_PREFIXES) -> None:
    """Copy every parameter of ``model`` from the files' tensors of the same name, converting dtype and
    moving to the parameter's device as it goes. Missing, unexpected or misshapen tensors are errors."""
    index: dict[str, _Stored] = {}
    for path in files:
        index.update({k: v for k, v in safetensors_index(path).items() if k.startswith(prefixes)})
    params = dict(model.named_parameters())
    missing = sorted(params.keys() - index.keys())
    unexpected = sorted(k for k in index.keys() - params.keys() if not k.endswith(_IGNORED_KEYS))
    if missing or unexpected:
        raise WeightsError(
            f"the checkpoint's tensors do not fit CLIP: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    by_file: dict[Path, list[str]] = {}
    for name in params:
        stored = index[name]
        if stored.shape != tuple(params[name].shape):
            raise WeightsError(f"{name} has shape {stored.shape}, expected {tuple(params[name].shape)}")
        by_file.setdefault(stored.path, []).append(name)
    for path, names in by_file.items():
        with open(path, "rb", buffering=0) as handle:
            for name in sorted(names, key=lambda n: index[n].start):  # front to back: sequential reads
                stored, param = index[name], params[name]
                if param.device.type == "cpu" and param.dtype == stored.dtype and param.is_contiguous():
                    read_exactly(handle, stored.start, param.data)  # straight into place
                else:
                    scratch = torch.empty(stored.shape, dtype=stored.dtype)
                    read_exactly(handle, stored.start, scratch)
                    param.copy_(scratch)
