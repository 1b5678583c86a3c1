"""The model configuration: one dataclass, read from and written to the released ``config.json``.

Released LISA/CoReS checkpoints store a LLaVA-style ``config.json`` (transformers 4.31 naming). This module
maps it to :class:`CoresConfig`, the single source of truth for building the model. The SAM geometry is not
in ``config.json`` of the releases: it is read from the weights (see :mod:`cores.modeling.sam`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from cores.errors import CheckpointError

#: Chain tokens in level order. CoReS: ``[SEG_SEMA]`` (level 1, "[LOC]" in the paper) then ``[SEG]``.
CORES_CHAIN: tuple[str, ...] = ("[SEG_SEMA]", "[SEG]")
#: LISA is the one-level chain.
LISA_CHAIN: tuple[str, ...] = ("[SEG]",)
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"

_REQUIRED_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


@dataclass(frozen=True)
class CoresConfig:
    """Everything needed to build a CoReS/LISA model except the SAM geometry.

    Attributes:
        hidden_size .. max_position_embeddings: the LLaMA language model's sizes.
        vision_tower: CLIP vision tower, a hub id or a folder (relative folders resolve against the
            checkpoint folder).
        mm_hidden_size: CLIP feature width (1024 for ViT-L/14).
        mm_vision_select_layer: which CLIP hidden state feeds the projector (-2).
        out_dim: width of the seg head output = SAM prompt embedding width (256).
        chain_tokens: the special tokens of the chain, in level order.
        extra: every other ``config.json`` field, written back unchanged.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    vision_tower: str = "openai/clip-vit-large-patch14"
    mm_hidden_size: int = 1024
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_use_im_start_end: bool = True
    out_dim: int = 256
    chain_tokens: tuple[str, ...] = CORES_CHAIN
    torch_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], chain_tokens: tuple[str, ...] | None = None) -> CoresConfig:
        """Build from a released ``config.json`` dict.

        Args:
            raw: the parsed ``config.json``.
            chain_tokens: the chain read from the tokenizer; overrides ``cores_chain_tokens`` in ``raw``.

        Raises:
            CheckpointError: a required LLaMA size is missing, or the vision settings are not LLaVA-v1's.
        """
        missing = [name for name in _REQUIRED_FIELDS if name not in raw]
        if missing:
            raise CheckpointError(f"config.json lacks the language model fields {missing}")
        if raw.get("mm_vision_select_feature", "patch") != "patch":
            raise CheckpointError(
                "only mm_vision_select_feature='patch' (CLS dropped) is supported, "
                f"found {raw.get('mm_vision_select_feature')!r}"
            )
        names = {f for f in cls.__dataclass_fields__ if f not in ("extra", "chain_tokens")}
        values: dict[str, Any] = {name: raw[name] for name in names if name in raw and raw[name] is not None}
        tower = raw.get("mm_vision_tower") or raw.get("vision_tower")
        if tower:
            values["vision_tower"] = tower
        chain = chain_tokens or tuple(raw.get("cores_chain_tokens") or ()) or CORES_CHAIN
        extra = {k: v for k, v in raw.items() if k not in names}
        return cls(chain_tokens=tuple(chain), extra=extra, **values)

    @classmethod
    def from_file(cls, path: Path, chain_tokens: tuple[str, ...] | None = None) -> CoresConfig:
        """Read ``config.json``; raises :class:`CheckpointError` when it is absent or not JSON."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"checkpoint has no config.json at {path}") from exc
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, chain_tokens)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict in the released layout (LISA/LLaVA field names)."""
        out = dict(self.extra)
        values = asdict(self)
        values.pop("extra")
        out.update({k: v for k, v in values.items() if k != "chain_tokens" and v is not None})
        out["mm_vision_tower"] = self.vision_tower
        out["vision_tower"] = self.vision_tower
        out["cores_chain_tokens"] = list(self.chain_tokens)
        out.setdefault("architectures", ["LISAForCausalLM"])
        out.setdefault("model_type", "llava")
        return out

    def llama_config(self) -> LlamaConfig:
        """The transformers ``LlamaConfig`` of the language model."""
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            tie_word_embeddings=False,
        )


#: CoReS-7B / LISA-7B language model sizes (LLaMA-7B, CoReS vocabulary: 32000 + 4 added tokens).
CORES_7B = CoresConfig(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    vocab_size=32004,
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
)
