"""Released LISA/CoReS checkpoints (Hugging Face layout): key table, strict loading, and saving.

Loading is key-exact: every checkpoint tensor is either mapped by :data:`KEY_TABLE` or explicitly ignored
(:data:`IGNORED_KEYS`), every model parameter is filled, and every shape is checked. Tensors are converted
to the target dtype one at a time (shards are memory-mapped), so no full fp32 copy is ever held.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from torch import nn
from transformers import CLIPImageProcessorPil

from cores.checkpoints.layout import looks_like_hub_id, resolve_vision_tower, weight_files
from cores.checkpoints.vision_tower import load_vision_tower
from cores.checkpoints.weights import check_fit, iter_tensors, read_shapes
from cores.errors import CheckpointError
from cores.modeling.build import build_model, reset_non_persistent_buffers
from cores.modeling.config import CORES_CHAIN, LISA_CHAIN, CoresConfig
from cores.modeling.llama_tokenizer import SlowLlamaTokenizer
from cores.modeling.model import CoresModel
from cores.modeling.sam import geometry_from_shapes
from cores.modeling.sam_encoder import SAM_ATTENTIONS, configure_encoder
from cores.modeling.tokenizer import detect_chain, load_tokenizer, token_id

__all__ = [
    "KEY_TABLE",
    "LoadedCheckpoint",
    "assign_weights",
    "iter_tensors",
    "load_checkpoint",
    "read_shapes",
    "resolve_checkpoint",
    "save_checkpoint",
    "to_checkpoint_key",
    "to_model_key",
    "weight_files",
]

logger = logging.getLogger(__name__)

#: Checkpoint key prefix -> model key prefix, first match wins. The refiner sits on the ForCausalLM class
#: in CoReS, so its keys have no ``model.`` prefix.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("model.visual_model.", "sam."),
    ("model.mm_projector.", "mm_projector."),
    ("model.text_hidden_fcs.", "text_hidden_fcs."),
    ("transformer_cross_attention_layers.", "refiner."),
    ("model.", "llm.model."),
    ("lm_head.", "llm.lm_head."),
)
#: Stored by transformers 4.31 but recomputed by today's LLaMA.
IGNORED_KEYS = (re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),)
REFINER_PREFIX = "transformer_cross_attention_layers."
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
#: Components whose weights the checkpoint holds (the vision tower's do not live there).
COMPONENTS = ("llm", "mm_projector", "text_hidden_fcs", "sam", "refiner")


def to_model_key(key: str) -> str | None:
    """Map a checkpoint key to the model's key; None for ignored keys.

    Raises:
        CheckpointError: the key belongs to no known part of the model.
    """
    if any(p.match(key) for p in IGNORED_KEYS):
        return None
    for source, target in KEY_TABLE:
        if key.startswith(source):
            return target + key[len(source) :]
    raise CheckpointError(f"unknown checkpoint key {key!r}")


def to_checkpoint_key(key: str) -> str:
    """Map a model key back to the released checkpoint key (inverse of :func:`to_model_key`)."""
    for source, target in KEY_TABLE:
        if key.startswith(target):
            return source + key[len(target) :]
    raise KeyError(f"model key {key!r} has no checkpoint name")


def resolve_checkpoint(name: str | Path) -> Path:
    """A local folder, or a Hugging Face hub id looked up in (or downloaded to) the hub cache.

    Raises:
        CheckpointError: neither a folder nor an available hub repository.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"checkpoint {path} is a file; expected a folder with config.json and weights")
    if not looks_like_hub_id(str(name)):
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    try:
        return Path(
            snapshot_download(str(name), allow_patterns=["*.json", "*.bin", "*.safetensors", "*.model"])
        )
    except Exception as exc:  # hub errors have many types; all mean "not available"
        raise CheckpointError(
            f"checkpoint {name!r} is not a folder and could not be fetched from the Hugging Face hub "
            f"or found in its cache ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns: the model, its tokenizer, processor, config and folder."""

    model: CoresModel
    tokenizer: SlowLlamaTokenizer
    image_processor: CLIPImageProcessorPil
    config: CoresConfig
    path: Path


def _component_state_dicts(
    model: CoresModel, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, device: torch.device
) -> dict[str, dict[str, torch.Tensor]]:
    """Sort checkpoint tensors into per-component state dicts, checking keys and shapes."""
    expected = {
        f"{name}.{key}": tuple(t.shape)
        for name in COMPONENTS
        if (module := getattr(model, name)) is not None
        for key, t in module.state_dict().items()
    }
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in COMPONENTS}
    unknown: list[str] = []
    mismatched: list[str] = []
    for key, tensor in tensors:
        try:
            target = to_model_key(key)
        except CheckpointError:
            unknown.append(key)
            continue
        if target is None:
            continue
        if target not in expected:
            unknown.append(key)
            continue
        if tuple(tensor.shape) != expected[target]:
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {expected[target]}")
            continue
        converted = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        component, _, rest = target.partition(".")
        states[component][rest] = converted
    loaded = {f"{c}.{k}" for c, sd in states.items() for k in sd}
    missing = sorted(set(expected) - loaded)
    check_fit("checkpoint does not fit the model", unknown, mismatched, missing)
    return states


def assign_weights(
    model: CoresModel,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Fill a meta-device model with checkpoint tensors (released key names), key-exact and shape-checked.

    Raises:
        CheckpointError: unknown or missing keys, or shape mismatches (naming them).
    """
    states = _component_state_dicts(model, tensors, dtype, device)
    for component in COMPONENTS:
        module: nn.Module | None = getattr(model, component)
        if module is not None:
            module.load_state_dict(states[component], strict=True, assign=True)
    reset_non_persistent_buffers(model, device)
    if device.type != "meta":
        tensors_now = [*model.named_parameters(), *model.named_buffers()]
        leftover = [n for n, t in tensors_now if t.is_meta and not n.startswith("vision_tower.")]
        if leftover:
            raise CheckpointError(f"weights still unset after loading: {leftover[:8]}")


def load_checkpoint(
    name: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vision_tower: str | None = None,
    sam_attention: str = "auto",
) -> LoadedCheckpoint:
    """Load a LISA (one level), CoReS (two levels) or CoReS token-refiner checkpoint, key-exact.

    The chain comes from the tokenizer's added tokens, the token refiner from the presence of its keys,
    the SAM geometry from the SAM weights, the CLIP tower from ``mm_vision_tower`` (or ``vision_tower``).
    ``sam_attention`` is how SAM's image encoder computes attention: ``auto`` (the default: the faster of
    ``sdpa`` and ``flex`` on CUDA, ``sdpa`` elsewhere), ``sdpa`` (folded fused SDPA), ``flex``
    (FlexAttention) or ``reference`` (segment-anything's own); the fast kernels also trim the padded
    windows. The same weights and results either way (see :mod:`cores.modeling.sam_encoder`).

    Raises:
        CheckpointError: missing files, unknown layout, or keys/shapes that do not fit.
        ValueError: an unknown ``sam_attention``.
    """
    if sam_attention not in SAM_ATTENTIONS:
        raise ValueError(f"unknown sam_attention {sam_attention!r}; expected one of {SAM_ATTENTIONS}")
    device = torch.device(device)
    path = resolve_checkpoint(name)
    files = weight_files(path)
    tokenizer = load_tokenizer(path)
    raw_config = _read_config(path)
    chain = tuple(raw_config.get("cores_chain_tokens") or ()) or detect_chain(tokenizer)
    config = CoresConfig.from_dict(raw_config, chain_tokens=chain)
    shapes = read_shapes(files)
    refiner_keys = sorted(k for k in shapes if k.startswith(REFINER_PREFIX))
    geometry = geometry_from_shapes(shapes, prefix="model.visual_model.")
    logger.info(
        "loading %s: chain %s, refiner %s, SAM %s px / %s-dim encoder, dtype %s on %s",
        path,
        list(chain),
        bool(refiner_keys),
        geometry.img_size,
        geometry.encoder_dim,
        dtype,
        device,
    )
    if vision_tower is not None:
        tower_name = resolve_vision_tower(vision_tower, None, fallback=False)
    else:
        tower_name = resolve_vision_tower(config.vision_tower, path)
    tower, processor = load_vision_tower(tower_name, dtype=dtype, device=device)
    chain_ids = tuple(token_id(tokenizer, t) for t in chain)
    with torch.device("meta"):
        model = build_model(
            config, geometry, vision_tower=tower, chain_token_ids=chain_ids, refiner=bool(refiner_keys)
        )
    assign_weights(model, iter_tensors(files), dtype=dtype, device=device)
    configure_encoder(model.sam, sam_attention)
    model.eval()
    return LoadedCheckpoint(
        model=model, tokenizer=tokenizer, image_processor=processor, config=config, path=path
    )


def _read_config(path: Path) -> dict:
    try:
        raw = json.loads((path / "config.json").read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} has no config.json") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path / 'config.json'} is not a JSON object")
    return raw


def save_checkpoint(
    model: CoresModel,
    config: CoresConfig,
    out_dir: Path,
    *,
    tokenizer_dir: Path,
    vision_tower_dir: Path | None = None,
    shard_bytes: int = 10 * 2**30,
) -> Path:
    """Write ``model`` in the released layout: ``pytorch_model-0000i-of-0000n.bin`` shards + index json,
    ``config.json``, the tokenizer files copied from ``tokenizer_dir`` and, when the vision tower is a local
    folder, a copy of it referenced by a relative ``mm_vision_tower``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for component in COMPONENTS:
        module = getattr(model, component)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            tensors[to_checkpoint_key(f"{component}.{key}")] = tensor.detach().to("cpu").contiguous()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, out_dir / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    raw = config.to_dict()
    if config.chain_tokens in (CORES_CHAIN, LISA_CHAIN):
        raw.pop("cores_chain_tokens", None)
    if vision_tower_dir is not None:
        target = out_dir / vision_tower_dir.name
        if vision_tower_dir.resolve() != target.resolve():
            shutil.copytree(vision_tower_dir, target, dirs_exist_ok=True)
        raw["mm_vision_tower"] = raw["vision_tower"] = vision_tower_dir.name
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists() and (tokenizer_dir / name).resolve() != (out_dir / name).resolve():
            shutil.copy2(tokenizer_dir / name, out_dir / name)
    return out_dir
