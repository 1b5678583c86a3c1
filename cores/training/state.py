"""``out/trainer_state/``: what an interrupted fine-tune needs to continue exactly.

One ``state.pt`` (written to a temporary name, then renamed) holds the step, the trained weights (LoRA and
the fully trained modules, by parameter name), the optimizer and scheduler states, the random number
generator states, the loss history, the validation scores before training, and the settings that must match
on resume. It loads with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cores.training.config import FinetuneError

logger = logging.getLogger(__name__)

STATE_DIR = "trainer_state"
STATE_FILE = "state.pt"


def state_path(out_dir: Path) -> Path:
    """Where the trainer state of an output folder lives."""
    return out_dir / STATE_DIR / STATE_FILE


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, weights_only-safe."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(
    out_dir: Path,
    *,
    step: int,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
) -> Path:
    """Write the state after ``step`` optimizer steps; ``extra`` holds JSON-like run data."""
    path = state_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "weights": {name: p.detach().to("cpu", copy=True) for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **extra,
    }
    tmp = path.with_name(STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    logger.info("saved trainer state at step %d to %s", step, path)
    return path


def load_trainer_state(out_dir: Path) -> dict[str, Any]:
    """Read the state saved in ``out_dir``.

    Raises:
        FinetuneError: there is none, or it cannot be read.
    """
    path = state_path(out_dir)
    if not path.exists():
        raise FinetuneError(f"--resume: no trainer state at {path}; start without --resume")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; torch raises many types
        raise FinetuneError(f"--resume: cannot read {path}: {exc}") from exc
    return state


def restore_weights(params: dict[str, nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    """Copy saved trained weights into ``params`` (names and shapes must match exactly).

    Raises:
        FinetuneError: the saved names or shapes differ from this run's trainable parameters.
    """
    if set(saved) != set(params):
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise FinetuneError(
            f"trainer state does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise FinetuneError(f"trainer state: {name} is {tuple(saved[name].shape)}, model {p.shape}")
            p.copy_(saved[name])
