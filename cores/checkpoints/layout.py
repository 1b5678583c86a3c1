"""The file layout of a checkpoint folder, read from its files alone (json and pathlib: no torch).

Shared by the loader (:mod:`cores.checkpoints.loading`) and by checks that must not import torch (the
backend's ``doctor`` on a web-only install).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cores.errors import CheckpointError

logger = logging.getLogger(__name__)

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLES = ("model.safetensors", "pytorch_model.bin")
#: The tokenizer model file: the SentencePiece model of the slow LLaMA tokenizer LISA/CoReS were trained with.
TOKENIZER_MODELS = ("tokenizer.model",)
#: The CLIP tower of every released LISA/CoReS checkpoint.
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
#: CoReS's training default ``--vision-tower``: a relative path that stands for :data:`CLIP_HUB_ID`.
CORES_TRAINING_TOWER = "huggingface/hub/clip-vit-large-patch14"


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


def resolve_vision_tower(name: str, checkpoint_dir: Path | None, *, fallback: bool = True) -> str:
    """Where to load the CLIP tower named by ``mm_vision_tower`` from: a folder or a hub id.

    In order: an absolute path must be a folder; a folder relative to the checkpoint folder, or to the working
    directory, is used as is; an ``org/name`` hub id stays a hub id; any other relative path that is not a
    folder (CoReS's training default ``huggingface/hub/clip-vit-large-patch14`` above all) means
    :data:`CLIP_HUB_ID`, and one log line says so. With ``fallback`` False (a name the user typed) that last
    case is an error instead.

    Raises:
        CheckpointError: an absolute path that is not a folder; without ``fallback``, a name that is neither a
            folder nor a hub id.
    """
    path = Path(name).expanduser()
    if path.is_absolute():
        if path.is_dir():
            return str(path)
        raise CheckpointError(
            f"the vision tower {name} (mm_vision_tower) is an absolute path but not a folder"
        )
    if checkpoint_dir is not None and (checkpoint_dir / path).is_dir():
        return str(checkpoint_dir / path)
    if path.is_dir():
        return str(path)
    if looks_like_hub_id(name):
        return name
    if not fallback:
        raise CheckpointError(f"the vision tower {name!r} is neither a folder nor an org/name hub id")
    log = logger.info if name == CORES_TRAINING_TOWER else logger.warning
    log(
        "mm_vision_tower %r is a relative path that is not a folder beside the checkpoint %s: loading %s, "
        "the CLIP tower such training paths stand for (CoReS's default is %r)",
        name,
        checkpoint_dir,
        CLIP_HUB_ID,
        CORES_TRAINING_TOWER,
    )
    return CLIP_HUB_ID
