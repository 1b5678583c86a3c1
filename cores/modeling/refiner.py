"""The CoReS token refiner (``CORES2seg2mask``): the next level's prompt attends to a prototype of the
previous level's region.

The prototype is the SAM image embedding averaged over the previous level's binarised mask (logits > 0,
resized to the embedding grid). One post-norm cross-attention layer (d=256, 8 heads, sequence-first
``nn.MultiheadAttention``, the released key names) updates the sparse prompt:
``sparse = sparse + LayerNorm(sparse + MHA(q=sparse, k=v=prototype))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Added to the mask area so an empty previous mask gives a zero prototype, not NaN.
PROTOTYPE_EPS = 5e-4


class TokenRefiner(nn.Module):
    """Refines a level's sparse prompt with a prototype pooled under the previous level's mask."""

    def __init__(self, dim: int = 256, heads: int = 8) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.norm = nn.LayerNorm(dim)

    @staticmethod
    def prototype(image_embedding: torch.Tensor, previous_logits: torch.Tensor) -> torch.Tensor:
        """Masked average of the image embedding.

        Args:
            image_embedding: 1xCxGxG or BxCxGxG SAM image embedding(s).
            previous_logits: Bx1xLxL low-res logits of the previous level.

        Returns:
            BxC prototypes.
        """
        grid = image_embedding.shape[-2:]
        mask = (previous_logits > 0).to(image_embedding.dtype)
        mask = F.interpolate(mask, size=grid, mode="bilinear", align_corners=False)
        pooled = (image_embedding * mask).sum(dim=(-2, -1))
        return pooled / (mask.sum(dim=(-2, -1)) + PROTOTYPE_EPS)

    def forward(
        self, sparse: torch.Tensor, image_embedding: torch.Tensor, previous_logits: torch.Tensor
    ) -> torch.Tensor:
        """``sparse`` BxTxC prompt embeddings -> refined BxTxC."""
        proto = self.prototype(image_embedding, previous_logits).unsqueeze(0)  # 1xBxC (sequence-first)
        query = sparse.transpose(0, 1)  # TxBxC
        attended = self.multihead_attn(query=query, key=proto, value=proto, need_weights=False)[0]
        return sparse + self.norm(query + attended).transpose(0, 1)
