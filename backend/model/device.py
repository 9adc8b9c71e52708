"""Device and precision choice, and batch sizing by free memory.

``auto`` picks CUDA, then Apple MPS, then the CPU. Precision ``auto`` is bf16 on GPUs that support it
(fp16 otherwise), bf16 on CPUs with native bf16 instructions, fp32 elsewhere. The CLIP tower runs in
that precision; GeoCLIP's heads and the scoring stay in fp32, where the softmax over 100K places needs it.

On a GPU, batches are gathered in page-locked host memory and copied on a side stream while the
previous batch computes (:class:`Staging`); running out of GPU memory halves the batch and goes on
(:class:`HalvingBatches`); any other device failure is recognised (:func:`is_device_failure`) so that
the engine can go on on the CPU, saying so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import GeoCLIPError

LOG = logging.getLogger("geoclip_qgis")

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


# ------------------------------------------------------------------------------ running on a GPU

_DEVICE_WORDS = ("cuda", "cudnn", "cublas", "cufft", "nccl", "hip", "mps", "device-side", "out of memory")


def is_device_failure(exc: BaseException) -> bool:
    """True for errors that come from the accelerator (out of memory, a CUDA or MPS error, a kernel the
    GPU cannot run) rather than from the input: the work can go on on the CPU."""
    accelerator = getattr(torch, "AcceleratorError", None)
    if isinstance(exc, torch.OutOfMemoryError) or (accelerator is not None and isinstance(exc, accelerator)):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _DEVICE_WORDS)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the RuntimeErrors other allocators raise (MPS, the CPU's)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def release_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class HalvingBatches:
    """Runs ``fn`` over a batch in slices of at most ``limit`` rows; when one runs out of memory the
    limit is halved and that slice tried again, down to single rows. The limit is kept for later
    batches, so memory is found out once per run, not once per batch."""

    def __init__(self, limit: int | None = None, device: torch.device | None = None):
        self.limit = limit
        self.device = device or torch.device("cpu")

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(batch):
            size = min(self.limit or len(batch), len(batch) - start)
            try:
                outputs.append(fn(batch[start : start + size]))
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or size == 1:
                    raise  # another error, or not even one photo fits: the caller decides (CPU fallback)
                self.limit = size // 2
                release_device_memory(self.device)
                LOG.warning(
                    "%s ran out of memory encoding %d photos at once; going on with %d per batch",
                    self.device,
                    size,
                    self.limit,
                )
                continue
            start += size
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class Staging:
    """Moves pixel batches to the encoder's device and embeddings back.

    On CUDA, batches are gathered straight into page-locked host buffers (two, used in turn, so one
    is filled while the other is still being copied), copied on a side stream with ``non_blocking``
    so the copy of batch k+1 overlaps the compute of batch k, and embeddings come back the same way,
    with an event to wait on; ``ahead`` (1) batch is launched before the previous one is awaited.
    Elsewhere the same calls are plain ``np.stack`` and ``.to``, nothing ahead. ``reuse`` and ``ahead``
    can be asked for on a CPU too: the tests' way through the GPU's code."""

    def __init__(self, device: torch.device, slots: int = 2, reuse: bool | None = None, ahead: int | None = None):
        self.device = device
        self.pinned = device.type == "cuda"
        self.reuse = self.pinned if reuse is None else reuse
        self.ahead = (1 if self.pinned else 0) if ahead is None else ahead
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._freed: list[object | None] = [None] * slots  # per buffer: event after which it may be refilled
        self._turn = 0
        self._stream = torch.cuda.Stream(device) if self.pinned else None

    def gather(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One (B, ...) float32 batch from B equal-shaped arrays, in the next host buffer on CUDA."""
        if not self.reuse:
            return np.stack(arrays)
        slot, self._turn = self._turn, (self._turn + 1) % len(self._buffers)
        if self._freed[slot] is not None:
            self._freed[slot].synchronize()  # its previous batch has reached the GPU
            self._freed[slot] = None
        shape = (len(arrays), *arrays[0].shape)
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < math.prod(shape):
            buffer = torch.empty(math.prod(shape), dtype=torch.float32, pin_memory=self.pinned)
            self._buffers[slot] = buffer
        out = buffer[: math.prod(shape)].view(shape).numpy()
        np.stack(arrays, out=out)
        return out

    def _slot_of(self, tensor: torch.Tensor) -> int | None:
        for slot, buffer in enumerate(self._buffers):
            if buffer is not None and buffer.data_ptr() <= tensor.data_ptr() < buffer.data_ptr() + buffer.nbytes:
                return slot
        return None

    def upload(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch on the device; on CUDA an asynchronous copy the compute stream waits for."""
        if not self.pinned or batch.device.type != "cpu":
            return batch.to(self.device)
        slot = self._slot_of(batch)
        if slot is None:  # not gathered here: page-lock a copy so the transfer can still be asynchronous
            batch = torch.from_numpy(self.gather(list(batch.numpy())))
            slot = self._slot_of(batch)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            moved = batch.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._freed[slot] = event
        compute.wait_stream(self._stream)
        moved.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return moved

    def download(self, embeddings: torch.Tensor) -> Callable[[], np.ndarray]:
        """Start bringing (B, D) results to the host; the returned function waits for them."""
        if not self.pinned or embeddings.device.type != "cuda":
            host = embeddings.cpu().numpy()
            return lambda: host
        host = torch.empty(embeddings.shape, dtype=embeddings.dtype, pin_memory=True)
        host.copy_(embeddings, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))

        def wait() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return wait
