"""Reference token ids: transformers 4.31's slow LLaMA tokenizer, as LISA/CoReS load and use it.

Runs in ``.venv-ref``. Request (JSON on stdin)::

    {"tokenizer": DIR, "prompts": [str], "texts": [str], "decode": [[int]]}

Answer (JSON on stdout): ``prompt_ids`` (the released ``tokenizer_image_token`` rule: the prompt split on
``<image>``, each chunk tokenised with BOS, chunks joined with -200, one BOS at the start), ``text_ids``
(``tokenizer(text).input_ids``), ``tokens`` (``tokenizer.tokenize(text)``), ``decoded``
(``tokenizer.decode(ids, skip_special_tokens=False)``), and ``vocab_size`` (``len(tokenizer)``).
"""

from __future__ import annotations

import json
import sys

import transformers
from transformers import AutoTokenizer

IMAGE_TOKEN_INDEX = -200


def image_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: chunks around ``<image>``, BOS kept once, -200 between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    separated = []
    for index, chunk in enumerate(chunks):
        if index:
            separated.append([IMAGE_TOKEN_INDEX] * (offset + 1))
        separated.append(chunk)
    for part in separated:
        ids.extend(part[offset:])
    return ids


def main() -> None:
    assert transformers.__version__ == "4.31.0", transformers.__version__
    request = json.load(sys.stdin)
    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(request["tokenizer"], use_fast=False)
    answer = {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "prompt_ids": [image_prompt_ids(tokenizer, p) for p in request.get("prompts", [])],
        "text_ids": [tokenizer(t).input_ids for t in request.get("texts", [])],
        "tokens": [tokenizer.tokenize(t) for t in request.get("texts", [])],
        "decoded": [tokenizer.decode(ids, skip_special_tokens=False) for ids in request.get("decode", [])],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
