"""A LLaMA-like SentencePiece tokenizer trained inside the tests, in the released files' layout.

Like LLaMA's ``tokenizer.model``: BPE, byte fallback, dummy prefix, digits split, identity normalisation,
unk/bos/eos = 0/1/2, a 32000-piece vocabulary (the trained pieces, padded with unused pieces through
SentencePiece's model proto: transformers 4.31 requires added-token ids to follow the vocabulary
consecutively), and added tokens at 32000+.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from cores.modeling.prompts import CORES_ANSWERS, CORES_SYSTEM, IN_CONTEXT_EXAMPLES, LLAVA_SYSTEM

LLAMA_VOCAB = 32000
_GENERAL = (
    "the cat sat on the mat . the dog is on the sofa . where would you sit ? it is the knife .",
    "What is the blade in this image ? It is usually found on a knife . It is on the table .",
    "numbers 0123456789 and 3.14 or 1/2 , dates 2024-05-01 , money $19.99 !",
    "Please output segmentation mask . USER : ASSISTANT : the red cup next to the blue plate .",
    "café naïve Straße Ελληνικά русский 日本語 中文 한국어",
)


def _train(corpus: list[str], vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def llama_like_model(extra_text: list[str], vocab_size: int = 1500) -> bytes:
    """The serialized model: trained on the prompt wording plus ``extra_text``, padded to 32000 pieces."""
    corpus = [CORES_SYSTEM, LLAVA_SYSTEM, *IN_CONTEXT_EXAMPLES.values(), *CORES_ANSWERS, *_GENERAL]
    corpus = corpus * 8 + [line for line in extra_text if line.strip()]
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(_train(corpus, vocab_size))
    unused = sentencepiece_model_pb2.ModelProto.SentencePiece.Type.UNUSED
    for i in range(len(proto.pieces), LLAMA_VOCAB):
        piece = proto.pieces.add()
        piece.piece = f"<unused{i}>"
        piece.score = 0.0
        piece.type = unused
    assert len(proto.pieces) == LLAMA_VOCAB
    return proto.SerializeToString()


def added_token(content: str, *, lstrip: bool = False, rstrip: bool = False) -> dict[str, Any]:
    """An ``AddedToken`` as 4.31 writes it in ``tokenizer_config.json``."""
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": lstrip,
        "normalized": False,
        "rstrip": rstrip,
        "single_word": False,
    }


def write_tokenizer(
    folder: Path,
    model: bytes,
    added: list[str],
    *,
    config: dict[str, Any] | None = None,
    special_map: dict[str, Any] | None = None,
) -> Path:
    """Write ``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json`` (omitted when
    ``special_map`` is ``{}``) and ``added_tokens.json`` (``added`` at 32000+)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    base_config: dict[str, Any] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added_token("<s>"),
        "eos_token": added_token("</s>"),
        "unk_token": added_token("<unk>"),
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    base_config.update(config or {})
    (folder / "tokenizer_config.json").write_text(json.dumps(base_config, indent=2))
    if special_map is None:
        special_map = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    if special_map:
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    ids = {token: LLAMA_VOCAB + i for i, token in enumerate(added)}
    (folder / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    return folder
