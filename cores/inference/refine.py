"""Refine a chain with clicks and boxes: SAM's point/box prompts on one or more chain levels.

A chain is decoded level by level (``CoresModel.decode_chain``): level k's dense prompt is level k-1's raw
low-res logits, its sparse prompt the level's chain embedding. A refinement adds SAM's point and box tokens
(from the model's own prompt encoder, whose positional encoding follows the released dtype rule of
``cores.modeling.sam.DtypePositionEmbedding``) before the chain embedding of the clicked level; levels before
the first clicked one decode exactly as without clicks, every later level is decoded from the refined
level's logits. The language model and the image encoders do not run: the caller passes the query's chain
embeddings (``ChainResult.chain_embeddings``) and the image's cached SAM embedding.

Coordinates are pixels of the ORIGINAL image (x right, y down); they are mapped to SAM's input frame by
segment-anything's ``ResizeLongestSide.apply_coords`` / ``apply_boxes``, as its ``SamPredictor`` does.
Points without a box get SAM's padding point (the prompt encoder adds it, as in the released predictor).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from segment_anything.modeling import PromptEncoder
from segment_anything.utils.transforms import ResizeLongestSide

from cores.errors import PromptError
from cores.inference.result import ChainResult, stage_timings

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline

POSITIVE = 1
NEGATIVE = 0


@dataclass(frozen=True)
class LevelPrompt:
    """Clicks and boxes on one chain level, in pixels of the original image.

    Attributes:
        points: ``(x, y, label)`` with label 1 (positive: part of the target) or 0 (negative: not part).
        boxes: ``(x0, y0, x1, y1)`` corners.
    """

    points: tuple[tuple[float, float, int], ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.points and not self.boxes:
            raise PromptError("a level prompt needs at least one point or box")
        for x, y, label in self.points:
            if label not in (POSITIVE, NEGATIVE):
                raise PromptError(f"a point label is 1 (positive) or 0 (negative), found {label!r}")
            if not (np.isfinite(x) and np.isfinite(y)):
                raise PromptError(f"a point has a non-finite coordinate ({x}, {y})")
        for box in self.boxes:
            x0, y0, x1, y1 = box
            if not all(np.isfinite(v) for v in box) or x1 < x0 or y1 < y0:
                raise PromptError(f"a box is (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, found {box}")


def to_sam_coords(points_xy: np.ndarray, original_size: tuple[int, int], img_size: int) -> np.ndarray:
    """Kx2 (x, y) pixels of the original (H, W) image -> SAM's ``img_size`` input frame (float32)."""
    coords = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    return ResizeLongestSide(img_size).apply_coords(coords, original_size).astype(np.float32)


def to_sam_boxes(boxes: np.ndarray, original_size: tuple[int, int], img_size: int) -> np.ndarray:
    """Kx4 (x0, y0, x1, y1) pixels of the original (H, W) image -> SAM's input frame (float32)."""
    coords = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ResizeLongestSide(img_size).apply_boxes(coords, original_size).astype(np.float32)


def prompt_tokens(
    encoder: PromptEncoder,
    prompt: LevelPrompt,
    original_size: tuple[int, int],
    img_size: int,
) -> torch.Tensor:
    """1xKxC sparse prompt tokens of one level: points (plus SAM's padding point when there is no box),
    then two corner tokens per box, from the model's own prompt encoder."""
    height, width = original_size
    for x, y, _ in prompt.points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptError(f"a point ({x:.1f}, {y:.1f}) lies outside the {width}x{height} image")
    device = encoder.point_embeddings[0].weight.device
    parts = []
    if prompt.points:
        xy = to_sam_coords(np.array([(x, y) for x, y, _ in prompt.points]), original_size, img_size)
        coords = torch.from_numpy(xy).to(device).unsqueeze(0)
        labels = torch.tensor([[label for _, _, label in prompt.points]], device=device, dtype=torch.int64)
        parts.append(encoder._embed_points(coords, labels, pad=not prompt.boxes))
    for box in prompt.boxes:
        sam_box = torch.from_numpy(to_sam_boxes(np.array([box]), original_size, img_size)).to(device)
        parts.append(encoder._embed_boxes(sam_box))
    dtype = encoder.point_embeddings[0].weight.dtype
    return torch.cat([part.to(dtype) for part in parts], dim=1)


def level_tokens(
    encoder: PromptEncoder,
    prompts: Mapping[int, LevelPrompt],
    levels: int,
    original_size: tuple[int, int],
    img_size: int,
) -> dict[int, torch.Tensor]:
    """1-based level -> prompt dict to ``decode_chain``'s ``extra_sparse`` (0-based level -> tokens).

    Raises:
        PromptError: a level outside 1..levels, or a point outside the image.
    """
    extra = {}
    for level, prompt in prompts.items():
        if not 1 <= level <= levels:
            raise PromptError(f"the chain has levels 1..{levels}; a click or box names level {level}")
        extra[level - 1] = prompt_tokens(encoder, prompt, original_size, img_size)
    return extra


def refine_chain(
    pipeline: CoresPipeline,
    image: np.ndarray,
    query: str,
    chain_embeddings: torch.Tensor,
    prompts: Mapping[int, LevelPrompt],
    *,
    text: str | None = None,
    key: str | None = None,
) -> ChainResult:
    """``CoresPipeline.refine``: ``image``'s encodings (cached under ``key``, else its pixel hash), the
    clicked levels' prompt tokens, then SAM's decoder chain from the given chain embeddings."""
    start = time.perf_counter()
    states, hit = pipeline._encode([image], None if key is None else [key])
    encoded = time.perf_counter()
    levels, width = len(pipeline.chain_tokens), pipeline.model.sam.prompt_encoder.embed_dim
    if tuple(chain_embeddings.shape) != (levels, width):
        raise PromptError(
            f"chain embeddings of shape {tuple(chain_embeddings.shape)}, expected ({levels}, {width})"
        )
    state = states[0]
    image_size = pipeline.model.sam.image_encoder.img_size
    extra = level_tokens(
        pipeline.model.sam.prompt_encoder, prompts, levels, state.sam_input.original_size, image_size
    )
    embeds = chain_embeddings.to(pipeline.device, pipeline.model.dtype).unsqueeze(0)
    answer = text or pipeline.answer
    result = pipeline._masks([state], None, [query], [answer], "refine", embeds, extra)[0]
    result.timings.update(stage_timings(start, encoded, encoded, hit == 1))
    return result
