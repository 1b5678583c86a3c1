"""Tensors of weight files (safetensors or torch ``.bin``), read lazily: shapes without data, tensors one at a
time (safetensors) or memory-mapped (``.bin``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from cores.errors import CheckpointError


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) lazily: safetensors one tensor at a time, .bin shards memory-mapped."""
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield key, handle.get_tensor(key)
        else:
            try:
                state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"cannot read weights {file}: {exc}") from exc
            yield from state.items()
            del state


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor, without reading the data."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        else:
            for key, tensor in iter_tensors([file]):
                shapes[key] = tuple(tensor.shape)
    return shapes


def check_fit(what: str, unknown: list[str], mismatched: list[str], missing: list[str]) -> None:
    """Raise :class:`CheckpointError` saying how ``what`` does not fit: unexpected keys, shape mismatches
    (``"key: checkpoint (a,) vs model (b,)"``) and missing keys, the first eight of each named.

    Raises:
        CheckpointError: when any of the three lists is not empty.
    """
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unexpected checkpoint keys: {unknown[:8]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {mismatched[:8]}")
    if missing:
        problems.append(f"{len(missing)} weights missing from the checkpoint: {missing[:8]}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
