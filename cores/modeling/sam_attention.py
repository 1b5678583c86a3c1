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


class SdpaAttention(Attention):
    """``Attention`` whose softmax(scale QK^T + rel_pos) V product runs in one fused SDPA call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC tokens -> BxHxWxC."""
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
        head_dim = q.shape[-1]
        scale = self.scale
        if self.use_rel_pos:
            rel_h = torch.einsum(
                "bhwc,hkc->bhwk",
                q.reshape(-1, height, width, head_dim),
                get_rel_pos(height, height, self.rel_pos_h),
            )
            rel_w = torch.einsum(
                "bhwc,wkc->bhwk",
                q.reshape(-1, height, width, head_dim),
                get_rel_pos(width, width, self.rel_pos_w),
            )
            rows = torch.eye(height, dtype=q.dtype, device=q.device).repeat_interleave(width, dim=0)
            cols = torch.eye(width, dtype=q.dtype, device=q.device).repeat(height, 1)
            n = q.shape[0]
            q = torch.cat([q * scale, rel_h.reshape(n, -1, height), rel_w.reshape(n, -1, width)], dim=-1)
            k = torch.cat([k, rows.expand(n, -1, -1), cols.expand(n, -1, -1)], dim=-1)
            scale = 1.0
        # Fused kernels want 4-D (batch, heads, sequence, dim) inputs and a dim that is a multiple of 8.
        dim = -(-q.shape[-1] // 8) * 8
        q, k, v = (_pad_last(t, dim).view(batch, self.num_heads, height * width, dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = (
            out[..., :head_dim].reshape(batch, self.num_heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
        )
        return self.proj(out.reshape(batch, height, width, -1))


def use_sdpa(sam: Sam, enabled: bool = True) -> int:
    """Switch every attention block of SAM's image encoder to SDPA (or back); returns how many changed."""
    target = SdpaAttention if enabled else Attention
    changed = 0
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention) and type(module) is not target:
            module.__class__ = target
            changed += 1
    return changed
