"""``cores finetune``: LoRA fine-tuning of a LISA/CoReS checkpoint on a ReasonSeg folder.

:func:`finetune` reads top to bottom: load the checkpoint and the data, split off a validation set and
score it, set up LoRA and the optimizer (or restore both from ``out/trainer_state``), train in one plain
loop, merge LoRA into the base weights, score again, then write the checkpoint (released layout: it loads
with ``CoresPipeline.from_pretrained(out)``) and ``out/finetune.json``.

Every chain level with a ground-truth mask is supervised (see :mod:`cores.training.data`); the forward pass
is the inference code path (see :mod:`cores.training.step`). With ``bf16`` the frozen weights stay bf16, the
trained ones are held in fp32 and the forward pass runs under bf16 autocast; the output is written in the
dtype the frozen weights were loaded in.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from cores.checkpoints.loading import load_checkpoint, save_checkpoint
from cores.inference.devices import resolve_device
from cores.inference.pipeline import CoresPipeline
from cores.training.config import BETAS, GRAD_CLIP, WEIGHT_DECAY, FinetuneConfig, FinetuneError, lr_factor
from cores.training.data import ExampleBuilder, load_training_samples, split_samples, stream_indices
from cores.training.lora import add_lora, merge_lora, trainable_parameters
from cores.training.state import (
    load_trainer_state,
    restore_weights,
    save_trainer_state,
    set_rng_state,
    state_path,
)
from cores.training.step import BatchLoss, batch_loss
from cores.training.validation import level_scores

logger = logging.getLogger(__name__)

REPORT_FILE = "finetune.json"
#: Entropy tag that keeps the prompt draws apart from the sample-order draws of the same seed.
_PROMPT_STREAM = 7


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.checkpoint`` on ``cfg.data`` and write the result to ``cfg.out``.

    Returns:
        The ``finetune.json`` report (or, when ``stop_after`` ended the run early, where its state is).

    Raises:
        FinetuneError: unusable output folder, missing or mismatched trainer state, a non-finite loss.
        cores.evaluation.reasonseg.ReasonSegError, QueryError, CheckpointError, DeviceError: bad data,
            checkpoint or device.
    """
    started = time.perf_counter()
    _check_out_dir(cfg)
    device = resolve_device(cfg.device)
    bf16 = (cfg.dtype or ("bf16" if device.type == "cuda" else "fp32")) == "bf16"
    load_dtype = torch.bfloat16 if bf16 else torch.float32  # of the frozen weights, and of the output
    loaded = load_checkpoint(cfg.checkpoint, device=device, dtype=load_dtype)
    model = loaded.model
    samples = load_training_samples(cfg.data, model.chain_tokens)
    train, val = split_samples(samples, cfg.val_fraction, cfg.seed)
    builder = ExampleBuilder(
        loaded.tokenizer,
        model.chain_tokens,
        model.image_token_count,
        model.llm.config.max_position_embeddings,
    )
    builder.check(samples)
    total = cfg.total_steps(len(train))
    identity = {"checkpoint": str(loaded.path.resolve()), "data": str(Path(cfg.data).resolve())}
    identity.update(cfg.trajectory())
    resumed = load_trainer_state(cfg.out) if cfg.resume else None
    if resumed is not None:
        _check_same_run(resumed["identity"], identity)
    logger.info("fine-tuning on %d sample(s), %d held out, %d step(s)", len(train), len(val), total)

    # --- held-out scores before training (kept in the trainer state: a resumed run reports the same)
    if resumed is not None:
        before = resumed["before"]
    else:
        before = level_scores(CoresPipeline(loaded), val, progress=cfg.progress) if val else None

    # --- trainable weights (fp32 master copies) and optimizer, fresh or restored
    torch.manual_seed(cfg.seed)
    tuner = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    params = trainable_parameters(model)
    for p in params.values():
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=cfg.warmup, total=total)
    )
    start, history = 0, []
    if resumed is not None:
        restore_weights(params, resumed["weights"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        set_rng_state(resumed["rng"])
        start, history = int(resumed["step"]), list(resumed["losses"])
        logger.info("resumed at step %d of %d", start, total)
    if cfg.grad_checkpointing:
        set_llm_checkpointing(model.llm, True)
    model.train()
    model.vision_tower.eval()
    model.sam.image_encoder.eval()
    pipe = CoresPipeline(loaded, cache_bytes=cfg.cache_bytes)  # the per-image encoding cache
    autocast: AbstractContextManager[Any] = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    )

    # --- the loop
    end = total if cfg.stop_after is None else min(total, cfg.stop_after)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=total,
        desc="finetune",
        file=sys.stderr,
        disable=not cfg.progress,
    )
    for step in bar:
        parts: list[BatchLoss] = []
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size
            picks = stream_indices(len(train), cfg.seed, first, cfg.batch_size)
            examples = [
                builder.example(train[i], np.random.default_rng((cfg.seed, _PROMPT_STREAM, first + j)))
                for j, i in enumerate(picks)
            ]
            with autocast:
                loss = batch_loss(model, pipe, examples)
            if not math.isfinite(float(loss.total.detach())):
                raise FinetuneError(f"step {step + 1}: the loss is {float(loss.total)}; lower --lr")
            (loss.total / cfg.grad_accum).backward()
            parts.append(loss)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), GRAD_CLIP))
        lr = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(_record(step + 1, parts, lr, grad_norm))
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            extra = {"identity": identity, "losses": history, "before": before}
            save_trainer_state(
                cfg.out, step=step + 1, params=params, optimizer=optimizer, scheduler=scheduler, extra=extra
            )
    bar.close()
    if end < total:
        logger.info("stopped after step %d of %d; continue with --resume", end, total)
        return {"stopped_at": end, "total_steps": total, "trainer_state": str(state_path(cfg.out))}

    # --- merge LoRA, back to the loaded dtype, score the held-out split again, write everything
    merge_lora(tuner)
    if cfg.grad_checkpointing:
        set_llm_checkpointing(model.llm, False)
    model.requires_grad_(False)
    for p in params.values():
        p.data = p.data.to(load_dtype)
    model.eval()
    after = level_scores(CoresPipeline(loaded), val, progress=cfg.progress) if val else None
    tower = Path(loaded.config.vision_tower)
    tower_dir = loaded.path / tower if not tower.is_absolute() and (loaded.path / tower).is_dir() else None
    save_checkpoint(model, loaded.config, cfg.out, tokenizer_dir=loaded.path, vision_tower_dir=tower_dir)
    report = {
        "args": cfg.to_dict(),
        "checkpoint": str(cfg.out),
        "source_checkpoint": str(loaded.path),
        "chain_tokens": list(model.chain_tokens),
        "device": str(device),
        "dtype": "bf16" if bf16 else "fp32",
        "train_samples": len(train),
        "steps": total,
        "resumed_from_step": int(resumed["step"]) if resumed is not None else None,
        "final_loss": history[-1]["loss"] if history else None,
        "losses": history,
        "validation": _validation(val, before, after),
        "seconds": time.perf_counter() - started,
    }
    (cfg.out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    logger.info("wrote %s and %s", cfg.out, cfg.out / REPORT_FILE)
    return report


def set_llm_checkpointing(llm: PreTrainedModel, enabled: bool) -> None:
    """Turn (non-reentrant) activation checkpointing of the language model's decoder layers on or off.

    transformers 5 names it ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` is its
    deprecated alias); it also makes the input embeddings require grad, undone when turning it off.
    """
    if enabled and hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable()
    elif enabled:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        if hasattr(llm, "activation_checkpointing_disable"):
            llm.activation_checkpointing_disable()
        else:
            llm.gradient_checkpointing_disable()
        llm.disable_input_require_grads()


def _record(step: int, parts: list[BatchLoss], lr: float, grad_norm: float) -> dict[str, Any]:
    """One optimizer step's log line: micro-batch means of the loss parts."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return {
        "step": step,
        "loss": mean([float(p.total.detach()) for p in parts]),
        "ce": mean([p.ce for p in parts]),
        "mask": mean([p.mask for p in parts]),
        "bce": mean([p.bce for p in parts]),
        "dice": mean([p.dice for p in parts]),
        "masks": sum(p.masks for p in parts),
        "lr": lr,
        "grad_norm": grad_norm,
    }


def _validation(val: list[Any], before: dict | None, after: dict | None) -> dict[str, Any]:
    if not val:
        logger.info("--val-fraction 0: no held-out split, before/after scores skipped")
        return {"skipped": "--val-fraction 0: no held-out split, so no before/after gIoU/cIoU"}
    return {"samples": [s.stem for s in val], "before": before, "after": after}


def _check_out_dir(cfg: FinetuneConfig) -> None:
    """Refuse to overwrite the source or an earlier run's output unless resuming it."""
    out = Path(cfg.out).expanduser().resolve()
    if Path(cfg.checkpoint).expanduser().resolve() == out:
        raise FinetuneError(f"--out {cfg.out} is the source checkpoint; choose another folder")
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {cfg.out} is a file; expected a folder")
    if not cfg.resume and (state_path(out).exists() or (out / "config.json").exists()):
        raise FinetuneError(
            f"--out {cfg.out} already holds a fine-tune; pass --resume to continue it or choose a new --out"
        )


def _check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        listed = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise FinetuneError(f"--resume: the trainer state belongs to another run ({listed})")
