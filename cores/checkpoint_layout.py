"""The file layout of a checkpoint folder, read from its files alone (json and pathlib: no torch).

Shared by the loader (:mod:`cores.checkpoint`) and by checks that must not import torch (the backend's
``doctor`` on a web-only install).
"""

from __future__ import annotations

import json
from pathlib import Path

from cores.errors import CheckpointError

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLES = ("model.safetensors", "pytorch_model.bin")
#: The tokenizer model file: the SentencePiece model of the slow LLaMA tokenizer LISA/CoReS were trained with.
TOKENIZER_MODELS = ("tokenizer.model",)


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` that is not a relative or absolute path."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def has_tokenizer(path: Path) -> bool:
    """Whether the folder holds a tokenizer model file."""
    return any((path / name).is_file() for name in TOKENIZER_MODELS)


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint folder: an index's shards, else a single weights file.

    Raises:
        CheckpointError: no weights, an unreadable index, or an index naming missing shards.
    """
    for index_name in WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"{index} is not a weight index: {exc}") from exc
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} names missing shards {missing}")
            return [path / s for s in shards]
    for single in WEIGHT_SINGLES:
        if (path / single).is_file():
            return [path / single]
    raise CheckpointError(f"checkpoint {path} has no weights ({', '.join(WEIGHT_INDEXES + WEIGHT_SINGLES)})")
