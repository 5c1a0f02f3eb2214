"""Device choice, in one place for the pipeline, training and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" → CUDA, then MPS, then CPU; otherwise the named device (checked)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' (or 'cuda:N') or 'mps'"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device '{device}' was asked for but no CUDA GPU is available; use device='cpu' "
            "or 'auto'"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"device '{device}' was asked for but this machine has {count} CUDA GPU(s): "
            f"use cuda:0 … cuda:{count - 1}"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' was asked for but MPS is not available")
    return device


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device`` (GPU model or CPU processor)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the processor model
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (so that host timers measure it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a GPU out-of-memory error (CUDA, or MPS's RuntimeError)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def can_fall_back_to_cpu(device: torch.device) -> bool:
    """Whether work that ran ``device`` out of memory can go on on the CPU (a GPU's memory
    is not the CPU's; on the CPU itself there is nowhere to go)."""
    return device.type != "cpu"


def empty_cache(device: torch.device) -> None:
    """Give cached GPU memory back (after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def convolution_layout(device: torch.device) -> torch.memory_format:
    """The memory layout convolution weights run fastest in on ``device``: channels-last on
    CPUs and CUDA GPUs (oneDNN / cuDNN kernels; measured on a 2-core CPU, bfloat16: the
    deblurring U-Net at 512² 0.087 → 0.051 s, docs/benchmarks.md); the default contiguous
    layout elsewhere (MPS)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


#: Arithmetic of the networks at inference: "auto" (bfloat16 where the device computes it
#: natively, else float32), "float32", "bfloat16".
PRECISIONS = ("auto", "float32", "bfloat16")


#: CPU instructions for bfloat16 matrix products, by the name of PyTorch's probe for them.
_BFLOAT16_CPU_PROBES = {"_is_avx512_bf16_supported": "AVX512-BF16", "_is_amx_tile_supported": "AMX"}


def _bfloat16_cpu_features() -> list[str]:
    return [name for probe, name in _BFLOAT16_CPU_PROBES.items()
            if getattr(torch.cpu, probe, lambda: False)()]  # fmt: skip


def cpu_features() -> str:
    """What sets the networks' speed on this CPU (a benchmark records it): the widest vector
    instructions PyTorch's kernels use ("AVX2", "AVX512", …) and the bfloat16 ones, e.g.
    "AVX512, AVX512-BF16, AMX" (a 2-core CPU runs the networks 5× faster with AMX than
    with AVX2 alone, docs/benchmarks.md)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return ", ".join([capability, *_bfloat16_cpu_features()])


class PrecisionError(ValueError):
    """A precision the device cannot compute (bfloat16 asked for on a CPU without the
    instructions PyTorch's bfloat16 convolutions need)."""


@functools.cache
def _cpu_bfloat16_convolutions() -> bool:
    """Whether this CPU runs a bfloat16 convolution at all: PyTorch's oneDNN path needs
    AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT and raises elsewhere (e.g. on AVX2-only CPUs).
    Probed once with a tiny convolution, in the mode the pipeline uses."""
    with torch.inference_mode(False), torch.no_grad():
        try:
            x, weight = torch.ones(1, 2, 5, 5), torch.ones(2, 2, 3, 3)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.nn.functional.conv2d(x, weight, padding=1)
            return True
        except RuntimeError:
            return False


def bfloat16_available(device: torch.device) -> bool:
    """Whether ``device`` can run the networks in bfloat16 at all (natively or emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_bfloat16_convolutions()


def bfloat16_missing(device: torch.device) -> str | None:
    """Why ``device`` cannot run the networks in bfloat16, in a sentence; None if it can."""
    if bfloat16_available(device):
        return None
    if device.type == "cuda":
        return "bfloat16 is not available: this GPU does not support it"
    if device.type != "cpu":
        return f"bfloat16 inference needs a CPU or CUDA device, not {device.type}"
    return (
        f"bfloat16 is not available: this CPU ({cpu_features()}) lacks the AVX-512 (BW, VL, "
        "DQ) or AVX-NE-CONVERT instructions PyTorch's bfloat16 convolutions need"
    )


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX instructions (elsewhere bfloat16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_bfloat16_cpu_features()) and bfloat16_available(device)


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """ "float32" or "bfloat16" for the networks on ``device`` (see :data:`PRECISIONS`);
    :class:`PrecisionError` for bfloat16 on a device that cannot compute it.

    >>> resolve_precision(torch.device("cpu"), "float32")
    'float32'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if precision == "bfloat16" and not bfloat16_available(device):
        raise PrecisionError(f"{bfloat16_missing(device)}; use precision 'auto' or 'float32'")
    return precision


def inference_autocast(device: torch.device, precision: str = "auto"):
    """A context in which the networks run at ``precision`` on ``device`` (bfloat16
    autocast, or nothing for float32). Measured on the table1 benchmark (n = 100, all
    levels): bfloat16 changes mean SSIM by ≤ 0.003 and PSF SNR by ≤ 0.03 dB
    (docs/benchmarks.md)."""
    if resolve_precision(device, precision) == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def machine_info(device: torch.device) -> dict:
    """Where a benchmark ran: device, CPU instructions, CPU count, threads, versions."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
