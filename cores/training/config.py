"""The fine-tune configuration: one dataclass, saved in ``finetune.json`` and checked on ``--resume``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cores.errors import CoresError

#: AdamW settings and gradient clipping of the LISA/CoReS recipe.
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.0
GRAD_CLIP = 1.0
#: Fields that shape the training trajectory: a resumed run must match the saved ones.
TRAJECTORY_FIELDS = (
    "epochs",
    "steps",
    "lr",
    "batch_size",
    "grad_accum",
    "dtype",
    "val_fraction",
    "seed",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "warmup",
)


class FinetuneError(CoresError):
    """A fine-tune that cannot start or resume as asked (output folder, trainer state, settings)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tune run needs.

    Attributes:
        checkpoint: source checkpoint folder or hub id.
        data: ReasonSeg-format folder (optionally with per-level ``levels``).
        out: output folder: the merged checkpoint, ``finetune.json`` and ``trainer_state/``.
        epochs: passes over the training split; ignored when ``steps`` is set.
        steps: optimizer steps (overrides ``epochs``).
        lr: peak learning rate (linear warmup over ``warmup`` steps, then linear decay to 0).
        batch_size: samples per micro-batch; ``grad_accum`` micro-batches per optimizer step.
        dtype: ``bf16`` (frozen weights bf16, trained weights fp32, bf16 autocast) or ``fp32``;
            None: bf16 on CUDA, fp32 on CPU.
        grad_checkpointing: recompute the language model's activations in the backward pass.
        val_fraction: share of samples held out for gIoU/cIoU before and after (0: none).
        seed: seeds the split, the sample order, prompts and LoRA's initialisation and dropout.
        resume: continue from ``out/trainer_state``.
        lora_r, lora_alpha, lora_dropout: LoRA on the language model's q/v projections.
        device: cpu, cuda, cuda:1 (None: cuda if available).
        save_every: write the trainer state every this many steps (and at the end).
        stop_after: stop once this many steps are done, leaving the trainer state to resume from
            (time-limited jobs; tests).
        cache_bytes: bound of the per-image encoding cache.
        progress: show a tqdm bar on stderr.
    """

    checkpoint: str
    data: Path
    out: Path
    epochs: float = 3.0
    steps: int | None = None
    lr: float = 3e-4
    batch_size: int = 1
    grad_accum: int = 1
    dtype: str | None = None
    grad_checkpointing: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    resume: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    warmup: int = 100
    device: str | None = None
    save_every: int = 100
    stop_after: int | None = None
    cache_bytes: int = 8 * 2**30
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "--epochs must be > 0": self.epochs > 0,
            "--steps must be >= 1": self.steps is None or self.steps >= 1,
            "--lr must be > 0": self.lr > 0,
            "--batch-size must be >= 1": self.batch_size >= 1,
            "--grad-accum must be >= 1": self.grad_accum >= 1,
            "--warmup must be >= 0": self.warmup >= 0,
            "--save-every must be >= 1": self.save_every >= 1,
            "--dtype must be bf16 or fp32": self.dtype in (None, "bf16", "fp32"),
            "--seed must be >= 0": self.seed >= 0,
            "--val-fraction must be in [0, 1)": 0.0 <= self.val_fraction < 1.0,
            "stop_after must be >= 1": self.stop_after is None or self.stop_after >= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise FinetuneError("; ".join(failed))

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the run: ``steps``, else ``ceil(epochs * n_train / (batch * accum))``."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_train / (self.batch_size * self.grad_accum)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def trajectory(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        return {k: getattr(self, k) for k in TRAJECTORY_FIELDS}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step ``step``: linear warmup to 1 over
    ``warmup`` steps, then linear decay reaching ``1 / (total - warmup)`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
