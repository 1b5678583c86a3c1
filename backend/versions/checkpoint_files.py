"""What a CoReS checkpoint folder must hold, checked from its files alone (no torch, no ``huggingface_hub``).

A checkpoint is a folder with ``config.json``, weights (a ``*.index.json`` and every shard it names, or one
``model.safetensors`` / ``pytorch_model.bin``), a tokenizer (``tokenizer.model``) and a
CLIP vision tower named by ``mm_vision_tower`` (a folder beside the checkpoint, a folder, or a hub id). A hub
id (``org/name``) is found in the Hugging Face cache the way ``huggingface_hub`` finds it, so the doctor can
check a deployment where only the web's packages are installed. The layout rules are
:mod:`cores.checkpoints.layout`'s, shared with the loader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cores.checkpoints.layout import TOKENIZER_MODELS, has_tokenizer, looks_like_hub_id, weight_files
from cores.errors import CheckpointError


@dataclass(frozen=True)
class Location:
    """Where a checkpoint's files are: ``folder``, or None with the ``problem`` in words; ``fatal`` is False
    when the worker can still get it (a hub id it downloads at start)."""

    folder: Path | None
    problem: str = ""
    fatal: bool = True


def locate(name: str) -> Location:
    """A checkpoint's folder: a path, or a hub id's snapshot in the Hugging Face cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Location(path)
    if path.exists() or not looks_like_hub_id(name):
        return Location(None, f"{path} is not a folder")
    cache = hub_cache_dir()
    snapshot = cached_snapshot(name, cache)
    if snapshot is not None:
        return Location(snapshot)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return Location(None, f"hub id not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set")
    return Location(
        None,
        f"hub id not in the Hugging Face cache ({cache}): the worker downloads it at start "
        "(needs the network and ~16 GB of disk for the 7B model)",
        fatal=False,
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, found as ``huggingface_hub`` finds it: ``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache``). (The web image has no
    ``huggingface_hub``.)"""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or xdg / "huggingface").expanduser() / "hub"


def cached_snapshot(repo_id: str, cache: Path) -> Path | None:
    """The cached snapshot folder of a hub model's ``main`` revision (holding config.json), or None."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if (snapshot / "config.json").is_file() else None


def missing_files(folder: Path) -> list[str]:
    """What a checkpoint folder lacks, in words (empty when complete)."""
    config_path = folder / "config.json"
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except FileNotFoundError:
        return [f"no config.json in {folder}"]
    except (OSError, ValueError) as exc:
        return [f"{config_path} is unreadable: {exc}"]
    problems = []
    try:
        weight_files(folder)
    except CheckpointError as exc:
        problems.append(str(exc))
    if not has_tokenizer(folder):
        problems.append(f"no tokenizer ({' or '.join(TOKENIZER_MODELS)})")
    if not isinstance(config.get("mm_vision_tower") or config.get("vision_tower"), str):
        problems.append("config.json names no vision tower (mm_vision_tower)")
    return problems


def vision_tower_name(folder: Path) -> str | None:
    """The CLIP vision tower the checkpoint's config.json names (``mm_vision_tower``), or None."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("mm_vision_tower") or config.get("vision_tower")
    return name if isinstance(name, str) else None
