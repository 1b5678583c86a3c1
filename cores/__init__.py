"""CoReS (Chains of Reasoning and Segmenting) on unmodified transformers and segment-anything modules.

Typical use::

    from cores import CoresPipeline
    pipe = CoresPipeline.from_pretrained("Shawnee-bxy/CoReS")
    result = pipe.segment(image, "the thing you would use to cut the bread")
    for level in result.levels:
        level.mask, level.score, level.text
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ChainResult", "CoresPipeline", "LevelResult"]

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline
    from cores.inference.result import ChainResult, LevelResult


def __getattr__(name: str) -> Any:
    # Lazy: importing ``cores`` must not import torch (the web process imports cores.modeling.prompts only).
    if name == "CoresPipeline":
        from cores.inference.pipeline import CoresPipeline

        return CoresPipeline
    if name in ("ChainResult", "LevelResult"):
        from cores.inference import result

        return getattr(result, name)
    raise AttributeError(name)
