"""What one query returns: every level of the chain with its mask, score and text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class LevelResult:
    """One level of the chain.

    Attributes:
        index: 1-based level (1: where the target usually is; last: the target).
        token: the chain token that produced it (``[SEG_SEMA]``, ``[SEG]``).
        mask: HxW bool mask at the original image size.
        score: SAM's predicted IoU for the mask.
        text: the part of the chain text that ends with this level's token.
        stats: how sure the decoder was (``cores.inference.confidence.level_statistics``: ``margin``,
            ``band_fraction``, ``foreground_fraction``); empty when not measured.
    """

    index: int
    token: str
    mask: np.ndarray
    score: float
    text: str
    stats: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-safe description without the mask (area in pixels instead)."""
        return {
            "level": self.index,
            "token": self.token,
            "score": self.score,
            "text": self.text,
            "area": int(self.mask.sum()),
            "height": int(self.mask.shape[0]),
            "width": int(self.mask.shape[1]),
            "stats": {k: round(v, 6) for k, v in self.stats.items()},
        }


@dataclass
class ChainResult:
    """All levels for one (image, query), the full chain text, and timings in milliseconds.

    ``chain_embeddings``: the NxC SAM prompt embeddings of the chain (float32, CPU), what a refinement with
    clicks needs instead of rerunning the language model (``CoresPipeline.refine``).
    """

    query: str
    levels: list[LevelResult]
    text: str
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    chain_embeddings: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def final(self) -> LevelResult:
        """The last level: the answer to the query."""
        return self.levels[-1]

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary (levels without masks, text, timings)."""
        return {
            "query": self.query,
            "mode": self.mode,
            "text": self.text,
            "levels": [level.summary() for level in self.levels],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


def split_levels(text: str, chain_tokens: tuple[str, ...]) -> list[str]:
    """Cut the chain text after each chain token (and the punctuation glued to it), one piece per level.

    ``"It usually appears on [SEG_SEMA]. It is [SEG]."`` -> ``["It usually appears on [SEG_SEMA].",
    "It is [SEG]."]``. A token missing from the text gives an empty piece.
    """
    pieces, cursor = [], 0
    for token in chain_tokens:
        at = text.find(token, cursor)
        if at < 0:
            pieces.append("")
            continue
        end = at + len(token)
        while end < len(text) and not text[end].isspace() and text.startswith((".", ",", ";", "!", "?"), end):
            end += 1
        pieces.append(" ".join(text[cursor:end].split()))
        cursor = end
    return pieces


def stage_timings(start: float, encoded: float, llm_done: float, hit: bool | int) -> dict[str, float]:
    """A result's ``timings`` (ms) from ``time.perf_counter`` marks: image encoding, language model, total
    (until now), and whether the image encodings were cached."""
    return {
        "encode_images": (encoded - start) * 1000,
        "language_model": (llm_done - encoded) * 1000,
        "total": (time.perf_counter() - start) * 1000,
        "image_cache_hit": float(hit),
    }
