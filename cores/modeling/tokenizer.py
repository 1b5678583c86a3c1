"""The checkpoint's LLaMA tokenizer: loading, chain-token ids, and prompt tokenisation with the image slot.

The tokenizer is :class:`cores.modeling.llama_tokenizer.SlowLlamaTokenizer`: transformers 4.31's slow
``LlamaTokenizer`` rules (the stack LISA and CoReS were trained on) on the ``sentencepiece`` library, driven
by the checkpoint's tokenizer files. Special tokens are found by id with ``convert_tokens_to_ids`` (tokenising
``"[SEG]"`` as text can give two ids). The image placeholder is not a vocabulary token: the prompt is split on
``<image>``, each chunk is tokenised on its own, the chunks are joined with :data:`IMAGE_TOKEN_ID`, and only
the first chunk keeps its BOS (LLaVA's ``tokenizer_image_token``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cores.errors import CheckpointError
from cores.modeling.config import CORES_CHAIN, IM_END_TOKEN, IM_START_TOKEN, LISA_CHAIN
from cores.modeling.llama_tokenizer import SlowLlamaTokenizer
from cores.modeling.prompts import IMAGE_PLACEHOLDER, chain_prompt, looks_like_sentence
from cores.modeling.queries import check_query
from cores.modeling.tokenizer_files import read_tokenizer_files

logger = logging.getLogger(__name__)

#: Marks the image slot in token id lists; never a vocabulary id.
IMAGE_TOKEN_ID = -200


def load_tokenizer(path: Path) -> SlowLlamaTokenizer:
    """Load the LLaMA tokenizer of a checkpoint folder (slow, ``legacy`` as configured: as trained).

    Raises:
        CheckpointError: no ``tokenizer.model``, unreadable tokenizer files, no BOS/EOS token, or no
            ``<im_start>``/``<im_end>`` among the added tokens.
    """
    tokenizer = SlowLlamaTokenizer(read_tokenizer_files(Path(path)))
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise CheckpointError(f"the tokenizer of {path} has no BOS or EOS token")
    for token in (IM_START_TOKEN, IM_END_TOKEN):
        token_id(tokenizer, token)
    return tokenizer


def token_id(tokenizer: SlowLlamaTokenizer, token: str) -> int:
    """The id of one added token; raises :class:`CheckpointError` when the vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(token)
    if found == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise CheckpointError(f"the tokenizer has no token {token!r} (expected it among the added tokens)")
    return found


def detect_chain(tokenizer: SlowLlamaTokenizer) -> tuple[str, ...]:
    """The chain a released tokenizer was trained for: CoReS when it has ``[SEG_SEMA]``, else LISA."""
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in CORES_CHAIN):
        return CORES_CHAIN
    if all(token in vocab for token in LISA_CHAIN):
        return LISA_CHAIN
    raise CheckpointError("the tokenizer has neither [SEG] nor [SEG_SEMA]: not a LISA/CoReS checkpoint")


def tokenize_prompt(tokenizer: SlowLlamaTokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with exactly one :data:`IMAGE_TOKEN_ID` where ``<image>`` stood.

    LLaVA's rule: every chunk around ``<image>`` is encoded with the tokenizer's framing; when the first chunk
    starts with BOS, that BOS is kept once and the first id of every chunk is dropped.

    Raises:
        ValueError: the prompt does not hold exactly one ``<image>``.
    """
    texts = prompt.split(IMAGE_PLACEHOLDER)
    if len(texts) != 2:
        raise ValueError(f"expected exactly one {IMAGE_PLACEHOLDER} in the prompt, found {len(texts) - 1}")
    chunks = [tokenizer.encode(text) for text in texts]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:offset]
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(IMAGE_TOKEN_ID)
        ids.extend(chunk[offset:])
    return ids


def prompt_token_ids(
    tokenizer: SlowLlamaTokenizer,
    query: str,
    chain_tokens: tuple[str, ...],
    *,
    is_sentence: bool | None,
    with_answer: bool,
) -> list[int]:
    """The token ids a checkpoint of this chain is prompted with for ``query`` (one image slot): the query
    only stripped and checked (:func:`cores.modeling.queries.check_query`), the family's conversation
    (:func:`cores.modeling.prompts.chain_prompt`; ``is_sentence`` None: guessed), LLaVA's image-slot rule.

    Raises:
        QueryError: a query :func:`cores.modeling.queries.check_query` refuses.
    """
    text = check_query(query, tokenizer.no_split_tokens)
    sentence = looks_like_sentence(text) if is_sentence is None else is_sentence
    prompt = chain_prompt(
        text, chain_tokens, is_sentence=sentence, with_answer=with_answer, eos=str(tokenizer.eos_token)
    )
    return tokenize_prompt(tokenizer, prompt)


def decode_chain_text(tokenizer: SlowLlamaTokenizer, ids: list[int]) -> str:
    """The generated answer as text: 4.31's decode of ``ids`` without a final EOS, tidied for display
    (whitespace runs become one space; the space the decoder puts after an added token before punctuation
    goes: ``"[SEG] ."`` -> ``"[SEG]."``).

    Raises:
        ValueError: an id outside the vocabulary.
    """
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    text = " ".join(tokenizer.decode(ids).split())
    for mark in (".", ",", ";", ":", "!", "?"):
        text = text.replace(" " + mark, mark)
    return text
