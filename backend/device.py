"""Device and precision choice, and batch sizing by free memory.

``auto`` picks CUDA, then Apple MPS, then the CPU. Precision ``auto`` is bf16 on GPUs that support it
(fp16 otherwise), bf16 on CPUs with native bf16 instructions, fp32 elsewhere. The CLIP tower runs in
that precision; GeoCLIP's heads and the scoring stay in fp32, where the softmax over 100K places needs it.
"""

from __future__ import annotations

import torch

from .errors import GeoCLIPError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_NAMES = {v: k for k, v in PRECISIONS.items()}

# Inference memory per image for ViT-L/14 at 224 px in half precision: activations of one layer
# (257 tokens x 4096 MLP width) plus attention, with headroom. Used to size GPU batches.
BYTES_PER_IMAGE_HALF = 48 * 1024 * 1024
CPU_BATCH = 8
MAX_GPU_BATCH = 128


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def choose_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GeoCLIPError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise GeoCLIPError(f"device {name!r} asked for, but CUDA is not available (this torch is {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GeoCLIPError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not _mps_available():
        raise GeoCLIPError("device 'mps' asked for, but Apple MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise GeoCLIPError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX), where bf16 is ~3x fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    precision = (precision or "auto").strip().lower()
    if precision != "auto":
        if precision not in PRECISIONS:
            raise GeoCLIPError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def default_batch_size(device: torch.device, dtype: torch.dtype) -> int:
    if device.type != "cuda":
        return CPU_BATCH
    free, _total = torch.cuda.mem_get_info(device)
    per_image = BYTES_PER_IMAGE_HALF * (2 if dtype == torch.float32 else 1)
    return max(1, min(MAX_GPU_BATCH, int(free * 0.5) // per_image))


def available_devices() -> list[tuple[str, str]]:
    """(id, label) pairs for a device picker: auto, cpu, each CUDA device by name, mps."""
    devices = [("auto", "Automatic"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            devices.append((f"cuda:{index}", f"CUDA {index}: {torch.cuda.get_device_name(index)}"))
    if _mps_available():
        devices.append(("mps", "Apple GPU (MPS)"))
    return devices
