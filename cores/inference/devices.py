"""Device and dtype selection with clear errors."""

from __future__ import annotations

import gc

import torch

from cores.errors import DeviceError

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def release_memory() -> None:
    """Return freed tensors' memory: collect garbage, then empty the CUDA caching allocator (when CUDA is
    in use). Call it after dropping the last reference to a model."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def resolve_device(name: str | None) -> torch.device:
    """``None``/``"auto"`` -> the first CUDA device if any, else CPU.

    Raises:
        DeviceError: CUDA was asked for but this machine has none.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine (use 'cpu')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
        )
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> bfloat16 on CUDA, float32 on CPU.

    Raises:
        DeviceError: unknown dtype name.
    """
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError as exc:
        raise DeviceError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from exc
