"""Language-model caches for answer mode and static shapes.

* :func:`refresh_in_place`: the shared prompt prefix's keys/values stay resident in their buffers: a
  model-version switch recomputes them and copies them *in place*, so a captured CUDA graph that reads
  them stays valid.
* :func:`read_only_cache`: a transformers cache that serves the prefix to every layer and keeps nothing of
  the new tokens: each layer concatenates the prefix with its new keys/values (``DynamicLayer``'s own
  ``torch.cat``, so the numbers are the same) and the result is freed with the layer. Answer mode needs
  hidden states only, so no batch's keys/values outlive their layer (a bulk batch of 32 x 585 positions
  kept 9 GiB of keys/values on the 7B model).
* :func:`padded_causal_mask`: the boolean 4-D mask for right-padded sequences after a prefix, built the way
  transformers builds it from a 2-D padding mask (key ``j`` is visible to query ``i`` when ``j <= P + i``
  and ``j < P + length``), so padding to a length bucket changes nothing for the real positions.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.cache_utils import DynamicLayer


class _PrefixLayer(DynamicLayer):
    """A ``DynamicLayer`` holding the prefix that returns prefix + new keys/values without storing them."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def read_only_cache(
    config: PreTrainedConfig, keys: list[torch.Tensor], values: list[torch.Tensor], batch: int
) -> DynamicCache:
    """A cache serving 1xHeadsxPxD prefix ``keys``/``values`` (expanded, not copied, to ``batch`` rows) that
    keeps none of the new tokens' keys/values."""
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(keys) or not all(type(layer) is DynamicLayer for layer in cache.layers):
        raise ValueError(f"a prefix of {len(keys)} layers does not fit this model's cache layers")
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        # Set, not ``update``d: no allocation, no host copy (safe inside a CUDA graph capture).
        held = cast(DynamicLayer, layer)
        held.__class__ = _PrefixLayer
        held.device = k.device
        held.keys = k.expand(batch, -1, -1, -1)
        held.values = v.expand(batch, -1, -1, -1)
        held.is_initialized = True
    return cache


def padded_causal_mask(lengths: torch.Tensor, past: int, length: int) -> torch.Tensor:
    """Bx1xLx(P+L) boolean mask for B right-padded sequences of ``lengths`` (a B-long tensor on the model's
    device) padded to ``length`` after a ``past``-long prefix."""
    queries = torch.arange(length, device=lengths.device).view(1, 1, length, 1)
    keys = torch.arange(past + length, device=lengths.device).view(1, 1, 1, past + length)
    causal = keys <= queries + past
    return causal & (keys < (past + lengths).view(-1, 1, 1, 1))


def refresh_in_place(held: list[torch.Tensor], fresh: list[torch.Tensor]) -> None:
    """Copy freshly computed prefix keys/values into the resident buffers ``held`` (same storage after, so
    a captured graph that reads them stays valid).

    Raises:
        ValueError: a shape differs (another model architecture: recapture instead).
    """
    if len(fresh) != len(held) or any(a.shape != b.shape for a, b in zip(fresh, held, strict=True)):
        raise ValueError("the new prefix keys/values do not fit the resident buffers (another model shape)")
    with torch.no_grad():
        for buffer, new in zip(held, fresh, strict=True):
            buffer.copy_(new)
