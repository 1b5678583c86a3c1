"""A faster attention for SAM's ViT image encoder: the same module, computed by fused
``torch.nn.functional.scaled_dot_product_attention`` kernels (flash attention on GPU).

segment-anything's ``Attention`` materialises the full softmax matrix and adds decomposed relative-position
terms to it: ``attn[i, j] = scale * q_i.k_j + rel_h[i, row(j)] + rel_w[i, col(j)]``. Handing those terms to
SDPA as a dense bias would rule out flash attention and cost the same memory. Instead they are folded into
the dot product: each query is extended with its ``rel_h``/``rel_w`` rows and each key with one-hot codes of
its row and column, so ``q_ext . k_ext`` is exactly the biased score, and SDPA runs without a mask.

:class:`SdpaAttention` subclasses ``Attention`` without new parameters (state-dict keys unchanged);
:func:`use_sdpa` switches the encoder's blocks in place (and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.shape[-1])) if x.shape[-1] < size else x


def split_heads(attn: Attention, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BxHxWx3C ``qkv`` output -> q, k, v, each (B*heads)x(H*W)xhead_dim (segment-anything's layout)."""
    batch, height, width, _ = qkv.shape
    parts = qkv.reshape(batch, height * width, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = parts.reshape(3, batch * attn.num_heads, height * width, -1).unbind(0)
    return q, k, v


def rel_pos_terms(
    attn: Attention, q: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's decomposed relative-position terms of (B*heads)x(H*W)xD queries:
    ``rel_h`` (B*heads)x(H*W)xH (by key row) and ``rel_w`` (B*heads)x(H*W)xW (by key column)."""
    grid = q.reshape(-1, height, width, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid, get_rel_pos(height, height, attn.rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid, get_rel_pos(width, width, attn.rel_pos_w))
    return rel_h.reshape(q.shape[0], -1, height), rel_w.reshape(q.shape[0], -1, width)


def merge_heads(out: torch.Tensor, batch: int, heads: int, height: int, width: int) -> torch.Tensor:
    """(B*heads)x(H*W)xD or BxheadsxHWxD attention output -> BxHxWx(heads*D)."""
    head_dim = out.shape[-1]
    return (
        out.reshape(batch, heads, height, width, head_dim)
        .permute(0, 2, 3, 1, 4)
        .reshape(batch, height, width, -1)
    )


class SdpaAttention(Attention):
    """``Attention`` whose softmax(scale QK^T + rel_pos) V product runs in one fused SDPA call."""

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """BxHxWx3C ``qkv`` output -> BxHxWxC attention output before ``proj``."""
        batch, height, width, _ = qkv.shape
        q, k, v = split_heads(self, qkv)
        head_dim = q.shape[-1]
        scale = self.scale
        if self.use_rel_pos:
            rel_h, rel_w = rel_pos_terms(self, q, height, width)
            rows = torch.eye(height, dtype=q.dtype, device=q.device).repeat_interleave(width, dim=0)
            cols = torch.eye(width, dtype=q.dtype, device=q.device).repeat(height, 1)
            n = q.shape[0]
            q = torch.cat([q * scale, rel_h, rel_w], dim=-1)
            k = torch.cat([k, rows.expand(n, -1, -1), cols.expand(n, -1, -1)], dim=-1)
            scale = 1.0
        # Fused kernels want 4-D (batch, heads, sequence, dim) inputs and a dim that is a multiple of 8.
        dim = -(-q.shape[-1] // 8) * 8
        q, k, v = (_pad_last(t, dim).view(batch, self.num_heads, height * width, dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return merge_heads(out[..., :head_dim], batch, self.num_heads, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC tokens -> BxHxWxC."""
        return self.proj(self.attend(self.qkv(x)))


def use_sdpa(sam: Sam, enabled: bool = True) -> int:
    """Switch every attention block of SAM's image encoder to SDPA (or back); returns how many changed."""
    target = SdpaAttention if enabled else Attention
    changed = 0
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention) and type(module) is not target:
            module.__class__ = target
            changed += 1
    return changed
