"""Loading the CLIP vision tower (transformers ``CLIPVisionModel``) and its PIL image processor.

Released LISA/CoReS checkpoints do not hold the tower's weights; ``mm_vision_tower`` names it: a hub id
(``openai/clip-vit-large-patch14``) or a folder, which may be relative to the checkpoint folder (see
:func:`cores.checkpoints.layout.resolve_vision_tower`).

The tower is usually a *full* CLIP checkpoint (text and vision towers). It is loaded key-exact, in the style
of :mod:`cores.checkpoints.loading`: ``CLIPVisionModel`` is built from the vision config and filled with the
``vision_model.*`` tensors (renamed by :data:`VISION_PREFIX`); the text tower's tensors
(:data:`TEXT_TOWER_KEYS`) and the recomputed ``position_ids`` buffer are ignored by rule, with one log line
saying so; anything else unknown, missing or mis-shaped is an error. The processor is always the PIL-backed
one (see :mod:`cores.modeling.vision` for why).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from cores.checkpoints.layout import weight_files
from cores.checkpoints.weights import check_fit, iter_tensors
from cores.errors import CheckpointError

logger = logging.getLogger(__name__)

#: Tensors of a full CLIP checkpoint that belong to the text side: LISA/CoReS use only the vision tower.
TEXT_TOWER_KEYS = (
    re.compile(r"^text_model\."),
    re.compile(r"^text_projection\."),
    re.compile(r"^visual_projection\."),
    re.compile(r"^logit_scale$"),
)
#: Stored by older transformers, recomputed by today's ``CLIPVisionEmbeddings``.
RECOMPUTED_KEYS = (re.compile(r"^(vision_model\.)?embeddings\.position_ids$"),)
#: CLIP checkpoints name the vision tower's tensors ``vision_model.<key>``; ``CLIPVisionModel`` calls them
#: ``<key>``.
VISION_PREFIX = "vision_model."
TOWER_FILES = ("config.json", "preprocessor_config.json")


def _tower_folder(name: str) -> Path:
    """A local folder with the tower's config, preprocessor config and weights (a hub id is looked up in, or
    downloaded to, the hub cache: safetensors when the repository has them, else ``.bin``)."""
    if Path(name).is_dir():
        return Path(name)
    try:
        folder = Path(
            snapshot_download(name, allow_patterns=[*TOWER_FILES, "*.safetensors", "*.safetensors.*"])
        )
        try:
            weight_files(folder)
        except CheckpointError:
            folder = Path(snapshot_download(name, allow_patterns=[*TOWER_FILES, "pytorch_model*.bin*"]))
    except Exception as exc:  # hub errors have many types; all mean "not available"
        raise CheckpointError(
            f"cannot load the CLIP vision tower {name!r} ({type(exc).__name__}: {exc}). Put it in the "
            "Hugging Face cache (huggingface-cli download) or point mm_vision_tower / --vision-tower at a "
            "local folder"
        ) from exc
    return folder


def read_vision_tower(folder: Path, *, dtype: torch.dtype, device: torch.device) -> CLIPVisionModel:
    """Build ``CLIPVisionModel`` from the folder's (vision or full CLIP) config; load its tensors key-exact.

    Raises:
        CheckpointError: no config or weights, unknown keys, missing vision weights or shape mismatches.
    """
    try:
        config = CLIPVisionConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the vision tower {folder} has no readable CLIP config.json: {exc}") from exc
    with torch.device("meta"):
        tower = CLIPVisionModel(config)
    expected = {key: tuple(t.shape) for key, t in tower.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    unknown, mismatched, ignored = [], [], 0
    for key, tensor in iter_tensors(weight_files(folder)):
        if any(p.search(key) for p in TEXT_TOWER_KEYS):
            ignored += 1
        elif any(p.search(key) for p in RECOMPUTED_KEYS):
            continue
        elif (target := key.removeprefix(VISION_PREFIX)) not in expected:
            unknown.append(key)
        elif tuple(tensor.shape) != expected[target]:
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {expected[target]}")
        else:
            state[target] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    missing = sorted(VISION_PREFIX + key for key in set(expected) - set(state))
    check_fit(f"the CLIP vision tower {folder} does not fit CLIPVisionModel", unknown, mismatched, missing)
    tower.load_state_dict(state, strict=True, assign=True)
    embeddings = tower.embeddings
    positions = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    embeddings.register_buffer("position_ids", positions, persistent=False)
    if ignored:
        logger.info(
            "CLIP vision tower %s: loaded %d vision tensors; ignored %d text-tower tensors (text_model.*, "
            "text_projection, visual_projection, logit_scale): LISA/CoReS use only the vision tower",
            folder,
            len(state),
            ignored,
        )
    return tower


def load_image_processor(folder: Path) -> CLIPImageProcessorPil:
    """The PIL-backed CLIP processor configured by the tower's ``preprocessor_config.json`` (whatever
    processor class the file names: the torchvision-backed one does not give 4.31's pixels).

    Raises:
        CheckpointError: the folder has no preprocessor config.
    """
    if not (folder / "preprocessor_config.json").is_file():
        raise CheckpointError(f"the vision tower {folder} has no preprocessor_config.json")
    return CLIPImageProcessorPil.from_pretrained(str(folder))


def load_vision_tower(
    name: str, *, dtype: torch.dtype, device: torch.device
) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """Load the CLIP vision tower and its PIL image processor from a folder or the Hugging Face hub cache.

    Raises:
        CheckpointError: the tower cannot be found (saying which name, and how to make it available offline),
            has no preprocessor config, or its weights do not fit (see :func:`read_vision_tower`).
    """
    folder = _tower_folder(name)
    tower = read_vision_tower(folder, dtype=dtype, device=device)
    processor = load_image_processor(folder)
    tower.requires_grad_(False)
    nn.Module.to(tower, device)
    return tower.eval(), processor
