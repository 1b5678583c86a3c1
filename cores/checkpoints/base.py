"""Build a base (untrained-head) LISA/CoReS checkpoint from a LLaVA-v1 checkpoint and a SAM checkpoint.

This is where LISA and CoReS training start: LLaVA-v1 (LLaVA-Lightning-7B-v1-1) + ``sam_vit_h_4b8939.pth``.
The chain tokens and ``<im_start>``/``<im_end>`` are added to the tokenizer (in the released order); the
embedding and LM-head rows grow to the new vocabulary, new rows initialised to the mean of the old ones;
the seg head is freshly initialised; the token refiner (``cores-refiner``) starts as CoReS's training
script sets it (weights 1, biases 0). The result is written in the released layout and loads with
:func:`cores.checkpoints.loading.load_checkpoint`, key-exact, through the same strict check.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from cores.checkpoints.layout import resolve_vision_tower
from cores.checkpoints.loading import (
    TOKENIZER_FILES,
    _read_config,
    assign_weights,
    iter_tensors,
    resolve_checkpoint,
    save_checkpoint,
    to_checkpoint_key,
    weight_files,
)
from cores.errors import CheckpointError
from cores.modeling.build import build_model
from cores.modeling.config import CORES_CHAIN, IM_END_TOKEN, IM_START_TOKEN, LISA_CHAIN, CoresConfig
from cores.modeling.llama_tokenizer import SlowLlamaTokenizer
from cores.modeling.model import build_seg_head
from cores.modeling.refiner import TokenRefiner
from cores.modeling.sam import geometry_from_shapes
from cores.modeling.tokenizer_files import read_tokenizer_files

logger = logging.getLogger(__name__)

#: LLaVA keys that are not ours to load: the 4.31 rotary cache, and a vision tower saved inside the
#: checkpoint (LISA/CoReS load the tower from ``mm_vision_tower`` instead).
LLAVA_IGNORED = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"^model\.vision_tower\."))
GROWN_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def _grow_rows(tensor: torch.Tensor, rows: int, key: str) -> torch.Tensor:
    if tensor.shape[0] > rows:
        raise CheckpointError(f"{key} has {tensor.shape[0]} rows, more than the new vocabulary ({rows})")
    extra = tensor.float().mean(dim=0, keepdim=True).expand(rows - tensor.shape[0], -1)
    return torch.cat([tensor, extra.to(tensor.dtype)])


def _write_tokenizer(llava_dir: Path, out_dir: Path, wanted: list[str]) -> tuple[int, dict[str, int]]:
    """Copy the LLaVA tokenizer files, adding the missing tokens; returns (vocab size, added ids)."""
    tokenizer = SlowLlamaTokenizer(read_tokenizer_files(llava_dir))
    vocab = tokenizer.get_vocab()
    for name in TOKENIZER_FILES:
        if (llava_dir / name).exists():
            shutil.copy2(llava_dir / name, out_dir / name)
    added_path = out_dir / "added_tokens.json"
    added: dict[str, int] = json.loads(added_path.read_text()) if added_path.exists() else {}
    size = len(tokenizer)
    for token in wanted:
        if token not in vocab:
            added[token] = size
            size += 1
    added_path.write_text(json.dumps(added, indent=2))
    return size, added


def build_base_checkpoint(
    llava: str | Path,
    sam_checkpoint: Path,
    out_dir: Path,
    *,
    layout: str = "cores",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Write a base checkpoint of ``layout`` (lisa | cores | cores-refiner) to ``out_dir``.

    Raises:
        CheckpointError: a source is missing, or its keys/shapes do not fit.
    """
    if layout not in ("lisa", "cores", "cores-refiner"):
        raise ValueError(f"unknown layout {layout!r}")
    llava_dir = resolve_checkpoint(llava)
    out_dir.mkdir(parents=True, exist_ok=True)
    chain = LISA_CHAIN if layout == "lisa" else CORES_CHAIN
    vocab_size, added = _write_tokenizer(llava_dir, out_dir, [*chain, IM_START_TOKEN, IM_END_TOKEN])
    try:
        sam_state = torch.load(sam_checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the SAM checkpoint {sam_checkpoint}: {exc}") from exc
    geometry = geometry_from_shapes({k: tuple(t.shape) for k, t in sam_state.items()})
    raw = _read_config(llava_dir)
    raw.update({"vocab_size": vocab_size, "out_dim": geometry.prompt_dim, "train_mask_decoder": True})
    raw["architectures"] = ["LISAForCausalLM"]
    config = CoresConfig.from_dict(raw, chain_tokens=chain)
    tower_name = resolve_vision_tower(config.vision_tower, llava_dir)
    with torch.device("meta"):
        tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(tower_name))
        model = build_model(
            config,
            geometry,
            vision_tower=tower,
            chain_token_ids=tuple(added[t] for t in chain),
            refiner=layout == "cores-refiner",
        )
    torch.manual_seed(seed)
    head = build_seg_head(config.hidden_size, config.out_dim)
    refiner = TokenRefiner(config.out_dim) if layout == "cores-refiner" else None
    if refiner is not None:
        for name, param in refiner.named_parameters():
            torch.nn.init.constant_(param, 1.0 if "weight" in name else 0.0)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in iter_tensors(weight_files(llava_dir)):
            if any(p.search(key) for p in LLAVA_IGNORED):
                continue
            yield key, (_grow_rows(tensor, vocab_size, key) if key in GROWN_KEYS else tensor)
        for key, tensor in sam_state.items():
            yield f"model.visual_model.{key}", tensor
        for key, tensor in head.state_dict().items():
            yield to_checkpoint_key(f"text_hidden_fcs.{key}"), tensor
        if refiner is not None:
            for key, tensor in refiner.state_dict().items():
                yield to_checkpoint_key(f"refiner.{key}"), tensor

    assign_weights(model, tensors(), dtype=dtype, device=torch.device("cpu"))
    local_tower = (
        Path(tower_name) if Path(tower_name).is_dir() and Path(tower_name).is_relative_to(llava_dir) else None
    )
    save_checkpoint(model, config, out_dir, tokenizer_dir=out_dir, vision_tower_dir=local_tower)
    logger.info(
        "wrote a base %s checkpoint (vocabulary %d, SAM %d px) to %s",
        layout,
        vocab_size,
        geometry.img_size,
        out_dir,
    )
    return out_dir
