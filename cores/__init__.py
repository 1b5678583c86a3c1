"""CoReS (Chains of Reasoning and Segmenting) on unmodified transformers and segment-anything modules.

Typical use::

    from cores import CoresPipeline
    pipe = CoresPipeline.from_pretrained("Shawnee-bxy/CoReS")
    result = pipe.segment(image, "the thing you would use to cut the bread")
    for level in result.levels:
        level.mask, level.score, level.text

Packages (each ``__init__`` says what it holds and what it may import; tests/test_layout.py enforces it):

- ``modeling``: the model's parts (LLM, CLIP, projector, seg head, SAM, refiner), tokenizer, prompts, config,
  builders.
- ``checkpoints``: the released layout, key-exact loading and saving, tiny checkpoints, base building.
- ``inference``: the pipeline, its results, image decoding, devices, overlays.
- ``evaluation``: ReasonSeg data and ground truth, gIoU/cIoU, ``cores eval``.
- ``training``: the fine-tune loop, its data, losses, LoRA and trainer state.

At the top: ``python -m cores`` (``cli``), the benchmark (``bench``) and the errors every package raises.
``cores`` never imports ``backend``.
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
