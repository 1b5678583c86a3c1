"""SAM's image-encoder attention through FlexAttention (``torch.nn.attention.flex_attention``).

The decomposed relative-position terms ride in a ``score_mod``: ``score + rel_h[b, h, q, row(k)] +
rel_w[b, h, q, col(k)]``, so no dense bias is materialised and no one-hot columns widen the head dimension
(the folded SDPA of :mod:`cores.modeling.sam_attention` grows ViT-H's global head dim from 80 to 208).
Queries are scaled before the product and the kernel's own scale is 1, as segment-anything computes
``(q * scale) @ k^T``. On CUDA the kernel is the compiled one (``torch.compile(flex_attention)``, compiled
per shape on first use); elsewhere FlexAttention's eager reference runs (slow: tests and CPU only).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, cast

import torch
from segment_anything.modeling.image_encoder import Attention
from torch.nn.attention.flex_attention import flex_attention

from cores.modeling.sam_attention import merge_heads, rel_pos_terms, split_heads


@cache
def _compiled_flex() -> Callable[..., Any]:
    return torch.compile(flex_attention, dynamic=False)


def flex_kernel(device: torch.device) -> Callable[..., Any]:
    """The FlexAttention entry point for ``device``: compiled on CUDA, eager elsewhere."""
    return _compiled_flex() if device.type == "cuda" else cast(Callable[..., Any], flex_attention)


class FlexAttention(Attention):
    """``Attention`` computed by FlexAttention with the relative positions as a score modifier. No new
    parameters (state-dict keys unchanged)."""

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """BxHxWx3C ``qkv`` output -> BxHxWxC attention output before ``proj``."""
        batch, height, width, _ = qkv.shape
        q, k, v = split_heads(self, qkv)
        tokens, head_dim = q.shape[1], q.shape[2]
        score_mod = None
        if self.use_rel_pos:
            rel_h, rel_w = rel_pos_terms(self, q, height, width)
            rel_h = rel_h.view(batch, self.num_heads, tokens, height)
            rel_w = rel_w.view(batch, self.num_heads, tokens, width)

            def score_mod(
                score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
            ) -> torch.Tensor:
                return score + rel_h[b, h, q, kv // width] + rel_w[b, h, q, kv % width]

        shape = (batch, self.num_heads, tokens, head_dim)
        out = flex_kernel(q.device)(
            (q * self.scale).view(shape), k.view(shape), v.view(shape), score_mod=score_mod, scale=1.0
        )
        return merge_heads(cast(torch.Tensor, out), batch, self.num_heads, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC tokens -> BxHxWxC."""
        return self.proj(self.attend(self.qkv(x)))
