"""The checkpoint's LLaMA tokenizer: loading, chain-token ids, and prompt tokenisation with the image slot.

Special tokens are found by id with ``convert_tokens_to_ids`` (calling the tokenizer on ``"[SEG]"`` can give
two ids). The image placeholder is not a vocabulary token: each text chunk around ``<image>`` is tokenised
on its own, only the first chunk keeps its BOS, and :data:`IMAGE_TOKEN_ID` marks the slot (LLaVA's rule).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cores.checkpoint_layout import TOKENIZER_MODELS, has_tokenizer
from cores.config import CORES_CHAIN, IM_END_TOKEN, IM_START_TOKEN, LISA_CHAIN
from cores.errors import CheckpointError
from cores.prompts import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

#: Marks the image slot in token id lists; never a vocabulary id.
IMAGE_TOKEN_ID = -200


def load_tokenizer(path: Path, model_max_length: int | None = None) -> PreTrainedTokenizerBase:
    """Load the LLaMA tokenizer of a checkpoint folder (``legacy=True``, as the releases were trained).

    Raises:
        CheckpointError: no tokenizer files, or the chain/image tokens are not in its vocabulary.
    """
    if not has_tokenizer(path):
        raise CheckpointError(f"checkpoint {path} has no tokenizer ({' or '.join(TOKENIZER_MODELS)})")
    kwargs: dict[str, object] = {"legacy": True, "padding_side": "right"}
    if model_max_length:
        kwargs["model_max_length"] = model_max_length
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    for token in (IM_START_TOKEN, IM_END_TOKEN):
        token_id(tokenizer, token)
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one added token; raises :class:`CheckpointError` when the vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise CheckpointError(f"the tokenizer has no token {token!r} (expected it among the added tokens)")
    return int(found)


def detect_chain(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The chain a released tokenizer was trained for: CoReS when it has ``[SEG_SEMA]``, else LISA."""
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in CORES_CHAIN):
        return CORES_CHAIN
    if all(token in vocab for token in LISA_CHAIN):
        return LISA_CHAIN
    raise CheckpointError("the tokenizer has neither [SEG] nor [SEG_SEMA]: not a LISA/CoReS checkpoint")


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with exactly one :data:`IMAGE_TOKEN_ID` where ``<image>`` stood.

    Raises:
        ValueError: the prompt does not hold exactly one ``<image>``.
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    if len(chunks) != 2:
        raise ValueError(f"expected exactly one {IMAGE_PLACEHOLDER} in the prompt, found {len(chunks) - 1}")
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        chunk_ids = list(tokenizer(chunk).input_ids)
        if chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
            chunk_ids = chunk_ids[1:]
        if index == 0:
            ids.append(int(tokenizer.bos_token_id))
        else:
            ids.append(IMAGE_TOKEN_ID)
        ids.extend(chunk_ids)
    return ids
