"""Tiny random-weight checkpoints in the released layouts, for tests and demos only.

The layout matches the releases (``xinlai/LISA-7B-v1``, ``Shawnee-bxy/CoReS``): LISA/LLaVA ``config.json``
fields, sharded ``pytorch_model-*.bin`` + index json with the released key names, a SentencePiece
``tokenizer.model`` with the added tokens in the released order, and a local CLIP vision tower referenced by
``mm_vision_tower``. Only the sizes are toy (hidden 32, 2 layers, 56 px CLIP, 128 px SAM).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Literal

import sentencepiece as spm
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel, LlamaForCausalLM

from cores.checkpoints.loading import save_checkpoint
from cores.checkpoints.vision_tower import read_vision_tower
from cores.modeling.build import build_model
from cores.modeling.config import CORES_CHAIN, IM_END_TOKEN, IM_START_TOKEN, LISA_CHAIN, CoresConfig
from cores.modeling.prompts import CORES_ANSWERS, CORES_SYSTEM, IN_CONTEXT_EXAMPLES, LLAVA_SYSTEM
from cores.modeling.sam import SAM_GEOMETRIES, build_sam

logger = logging.getLogger(__name__)

Layout = Literal["lisa", "cores", "cores-refiner"]
LAYOUTS: tuple[str, ...] = ("lisa", "cores", "cores-refiner")
TINY_BASE_VOCAB = 400
TINY_TOWER = "clip-vit-tiny"
_CORPUS_EXTRA = (
    "the dog on the sofa next to a red cup; where would you put the bread knife? "
    "segment the thing you would use to cut the bread, the wheel of the car, a person riding a horse. "
    "0123456789 What is the cat in this image? It is the cat."
)


def _train_sentencepiece(vocab_size: int) -> bytes:
    """A LLaMA-style SentencePiece BPE model (byte fallback, unk/bos/eos = 0/1/2) trained on prompt text
    (past :data:`TINY_BASE_VOCAB`, as many pieces as the text gives, up to ``vocab_size``)."""
    lines = [CORES_SYSTEM, LLAVA_SYSTEM, *IN_CONTEXT_EXAMPLES.values(), *CORES_ANSWERS, _CORPUS_EXTRA] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=vocab_size <= TINY_BASE_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _write_tokenizer(out: Path, added: list[str], base_vocab: int = TINY_BASE_VOCAB) -> int:
    """Write the tokenizer files; returns the SentencePiece vocabulary size (added tokens follow it)."""
    model = _train_sentencepiece(base_vocab)
    (out / "tokenizer.model").write_bytes(model)
    size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()

    def token(content: str) -> dict:
        return {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("</s>"),
        "legacy": True,
        "model_max_length": 512,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": token("<unk>"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    ids = {name: size + i for i, name in enumerate(added)}
    (out / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    return size


def _write_vision_tower(out: Path) -> CLIPVisionModel:
    """A full CLIP model folder (text + vision), like ``openai/clip-vit-large-patch14``; the vision tower
    is read back from it the way released checkpoints read theirs."""
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "vocab_size": 128,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        },
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, do_center_crop=True
    ).save_pretrained(out)
    return read_vision_tower(out, dtype=torch.float32, device=torch.device("cpu"))


def _tiny_config(vocab_size: int, chain: tuple[str, ...]) -> CoresConfig:
    return CoresConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        vision_tower=TINY_TOWER,
        mm_hidden_size=32,
        out_dim=SAM_GEOMETRIES["tiny"].prompt_dim,
        chain_tokens=chain,
        torch_dtype="float32",
        extra={
            "architectures": ["LISAForCausalLM"],
            "model_type": "llava",
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "mm_use_im_patch_token": False,
            "image_aspect_ratio": "square",
            "train_mask_decoder": True,
            "use_cache": False,
            "tie_word_embeddings": False,
        },
    )


def make_tiny_llava(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA-v1 checkpoint (the base LISA/CoReS start from): LLaMA + ``mm_projector`` weights under
    LLaVA key names (with transformers 4.31 rotary ``inv_freq``), a plain LLaMA tokenizer, a local CLIP."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _write_tokenizer(out_dir, [])
    _write_vision_tower(out_dir / TINY_TOWER)
    config = _tiny_config(TINY_BASE_VOCAB, LISA_CHAIN)
    llm = LlamaForCausalLM(config.llama_config())
    projector = torch.nn.Linear(config.mm_hidden_size, config.hidden_size)
    state = {key: t.clone() for key, t in llm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": t.clone() for k, t in projector.state_dict().items()})
    head_dim = config.hidden_size // config.num_attention_heads
    for i in range(config.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(head_dim // 2)
    torch.save(state, out_dir / "pytorch_model.bin")
    raw = config.to_dict()
    raw.pop("cores_chain_tokens")
    raw.update({"architectures": ["LlavaLlamaForCausalLM"], "out_dim": None, "train_mask_decoder": None})
    (out_dir / "config.json").write_text(
        json.dumps({k: v for k, v in raw.items() if v is not None}, indent=2)
    )
    return out_dir


def make_tiny_sam(path: Path, *, seed: int = 0) -> Path:
    """A tiny SAM checkpoint file with stock segment-anything key names (like ``sam_vit_h_4b8939.pth``)."""
    torch.manual_seed(seed)
    torch.save(build_sam(SAM_GEOMETRIES["tiny"]).state_dict(), path)
    return path


def make_tiny_checkpoint(
    out_dir: Path, *, layout: str = "cores", seed: int = 0, base_vocab: int = TINY_BASE_VOCAB
) -> Path:
    """Write a tiny random checkpoint of ``layout`` (lisa | cores | cores-refiner) to ``out_dir``.

    ``base_vocab`` above the default trains a tokenizer with whole-word pieces for the prompt text, which
    spells prompts about as long as LLaMA's tokenizer does (benchmarks).

    Raises:
        ValueError: unknown layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    chain = LISA_CHAIN if layout == "lisa" else CORES_CHAIN
    added = [*chain, IM_START_TOKEN, IM_END_TOKEN]
    vocab = _write_tokenizer(out_dir, added, base_vocab)
    tower = _write_vision_tower(out_dir / TINY_TOWER)
    geometry = SAM_GEOMETRIES["tiny"]
    config = _tiny_config(vocab + len(added), chain)
    chain_ids = tuple(vocab + i for i in range(len(chain)))
    model = build_model(
        config, geometry, vision_tower=tower, chain_token_ids=chain_ids, refiner=layout == "cores-refiner"
    )
    save_checkpoint(model, config, out_dir, tokenizer_dir=out_dir, shard_bytes=400_000)
    logger.info("wrote tiny %s checkpoint to %s", layout, out_dir)
    return out_dir
