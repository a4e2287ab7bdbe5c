"""The one place where device and numeric precision are chosen (`--device auto|cpu|cuda`,
`--precision auto|bf16|fp32`).

A precision is asked for by name ("auto", "bf16", "fp32") and resolved per device to what actually runs:
"bf16" (bfloat16 autocast; features stored as bfloat16), "fp16" (float16 AMP on CUDA) or "fp32" (no autocast,
float32 everywhere). "auto" picks bfloat16 only on CPUs where it is fast (AMX / AVX512-BF16), float16 on CUDA and
float32 elsewhere, so the default works on every CPU, including those without any bfloat16 hardware."""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "bf16", "fp32")
"""What a user may ask for."""

_STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. Raises ValueError for an unknown name or a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r} (use auto, cpu or cuda)")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AMX or AVX512-BF16, where bfloat16 matmuls are several times faster than float32.
    Asked of torch's own CPU detection once per process (it is called on every autocast)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def check_precision(name: str) -> str:
    """`name` if it is one of PRECISIONS, else ValueError."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (use {', '.join(PRECISIONS)})")
    return name


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision that runs for the asked-for `name` on `device`: "bf16", "fp16" or "fp32"."""
    check_precision(name)
    if name == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return name


def storage_dtype(precision: str, device: torch.device) -> torch.dtype:
    """dtype in which features are kept (training buffer) for the asked-for precision on `device`."""
    return _STORAGE_DTYPES[resolve_precision(precision, device)]


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed-precision context for the asked-for precision on `device`: bfloat16 or float16 autocast, or nothing
    (fp32). Heads keep their output layer in float32 whatever this says."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_STORAGE_DTYPES[resolved])
