"""The CoReS model: unmodified transformers LLaMA + CLIP, a linear projector, the seg head and pip SAM.

``CoresModel`` receives finished sub-modules and holds no size logic (see :mod:`cores.modeling.build`). Its
methods are the steps of the chain; :class:`cores.inference.pipeline.CoresPipeline` strings them together.

Hidden-state convention (as the released checkpoints were trained): for a chain token at position ``j`` of
the image-expanded sequence, the last-layer (post-norm) hidden state at ``j - 1`` feeds the seg head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from segment_anything.modeling import Sam
from torch import nn
from transformers import CLIPVisionModel, DynamicCache, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from cores.errors import ChainError
from cores.modeling.refiner import TokenRefiner
from cores.modeling.static_cache import read_only_cache
from cores.modeling.tokenizer import IMAGE_TOKEN_ID

#: ``allowed(generated_ids) -> allowed next ids or None`` constrains generation (like HF's
#: ``prefix_allowed_tokens_fn``).
AllowedTokensFn = Callable[[list[int]], Sequence[int] | None]


def build_seg_head(hidden_size: int, out_dim: int) -> nn.ModuleList:
    """LISA's ``text_hidden_fcs``: one Linear(H,H) -> ReLU -> Linear(H,out) -> Dropout(0) branch."""
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.Linear(hidden_size, hidden_size),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_size, out_dim),
                nn.Dropout(0.0),
            )
        ]
    )


@dataclass
class PrefixCache:
    """Keys/values of a prompt prefix shared by every query (system prompt, in-context example, ...).

    ``keys``/``values``: one 1xHeadsxPxD tensor per layer; ``ids``: the P prefix token ids.
    """

    ids: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class Generation:
    """Result of :meth:`CoresModel.generate_chain`: new token ids and the states before chain tokens."""

    token_ids: list[int]
    chain_states: torch.Tensor  # NxH, level order
    chain_positions: list[int]  # index into token_ids of each chain token

    def emitted(self) -> list[int]:
        """The chain token ids in the order the model produced them."""
        return [self.token_ids[p] for p in self.chain_positions]


class CoresModel(nn.Module):
    """LLaVA-v1 language model + SAM, joined by chain tokens.

    Args:
        llm: the language model (its ``model`` gives post-norm last hidden states, ``lm_head`` logits).
        vision_tower: CLIP vision tower; ``vision_select_layer`` picks its hidden state (-2), CLS dropped.
        mm_projector: Linear(CLIP width -> LLM width).
        text_hidden_fcs: the seg head (LLM width -> SAM prompt width).
        sam: segment-anything ``Sam``.
        refiner: the token refiner, or None for the plain chain.
        chain_tokens: chain token strings in level order; ``chain_token_ids`` their vocabulary ids.
    """

    def __init__(
        self,
        *,
        llm: LlamaForCausalLM,
        vision_tower: CLIPVisionModel,
        mm_projector: nn.Linear,
        text_hidden_fcs: nn.ModuleList,
        sam: Sam,
        refiner: TokenRefiner | None,
        chain_tokens: tuple[str, ...],
        chain_token_ids: tuple[int, ...],
        vision_select_layer: int = -2,
    ) -> None:
        super().__init__()
        if len(chain_tokens) != len(chain_token_ids) or not chain_tokens:
            raise ValueError(f"chain tokens {chain_tokens} and ids {chain_token_ids} must pair up")
        self.llm = llm
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.text_hidden_fcs = text_hidden_fcs
        self.sam = sam
        self.refiner = refiner
        self.chain_tokens = chain_tokens
        self.chain_token_ids = chain_token_ids
        self.vision_select_layer = vision_select_layer

    @property
    def dtype(self) -> torch.dtype:
        return self.mm_projector.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mm_projector.weight.device

    @property
    def image_token_count(self) -> int:
        """Image tokens the vision tower gives per image: (side / patch)^2 (256 for ViT-L/14 at 224 px)."""
        cfg = self.vision_tower.config
        side = cast(int, cfg.image_size) // cast(int, cfg.patch_size)
        return side * side

    # --- images -------------------------------------------------------------------------------------
    def encode_sam(self, pixels: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS normalised, padded pixels -> BxCxGxG SAM image embeddings."""
        return self.sam.image_encoder(pixels.to(self.device, self.dtype))

    def encode_clip(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Bx3x224x224 CLIP pixels -> BxPxH projected patch tokens (P=256 for ViT-L/14 at 224 px)."""
        tower_dtype = self.vision_tower.dtype
        out = self.vision_tower(
            pixel_values=pixel_values.to(self.device, tower_dtype), output_hidden_states=True
        )
        patches = out.hidden_states[self.vision_select_layer][:, 1:]
        return self.mm_projector(patches.to(self.dtype))

    # --- language model -----------------------------------------------------------------------------
    def embed_sequence(
        self, ids: torch.Tensor, image_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed token ids and splice the image tokens into the image slot.

        Args:
            ids: L token ids holding exactly one :data:`IMAGE_TOKEN_ID`.
            image_tokens: PxH projected image tokens.

        Returns:
            (embeddings (L-1+P)xH, expanded ids (L-1+P) with P image ids) — positions after the slot shift
            by P-1.
        """
        slots = (ids == IMAGE_TOKEN_ID).nonzero().flatten()
        if slots.numel() != 1:
            raise ValueError(f"expected exactly one image slot in the sequence, found {slots.numel()}")
        slot = int(slots[0])
        ids = ids.to(self.device)
        text = self.llm.get_input_embeddings()(ids.clamp(min=0))
        embeds = torch.cat([text[:slot], image_tokens.to(text.dtype), text[slot + 1 :]])
        image_ids = ids.new_full((image_tokens.shape[0],), IMAGE_TOKEN_ID)
        return embeds, torch.cat([ids[:slot], image_ids, ids[slot + 1 :]])

    @torch.no_grad()
    def prefix_cache(self, ids: torch.Tensor) -> PrefixCache:
        """Run the language model over prefix token ids (P, no image slot) once and keep its keys/values."""
        cache = DynamicCache(config=self.llm.config)
        self.llm.model(input_ids=ids.to(self.device).unsqueeze(0), cache=cache, use_cache=True)
        layers = [cast(DynamicLayer, layer) for layer in cache.layers]
        return PrefixCache(
            ids=tuple(int(i) for i in ids),
            keys=[cast(torch.Tensor, layer.keys) for layer in layers],
            values=[cast(torch.Tensor, layer.values) for layer in layers],
        )

    def _cache_from(self, prefix: PrefixCache | None, batch: int) -> DynamicCache | None:
        if prefix is None:
            return None
        cache = DynamicCache(config=self.llm.config)
        for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
        return cache

    def hidden_states(
        self, embeds: Sequence[torch.Tensor], prefix: PrefixCache | None = None
    ) -> list[torch.Tensor]:
        """One forward pass over a batch of embedded sequences (right-padded) -> per sequence TxH
        last-layer post-norm hidden states.

        With ``prefix`` the sequences continue a cached prefix (their positions start at its length); the
        returned states cover the sequences only. No keys/values are kept (``read_only_cache``).
        """
        lengths = [int(e.shape[0]) for e in embeds]
        batch = torch.nn.utils.rnn.pad_sequence(list(embeds), batch_first=True)
        past = prefix.length if prefix is not None else 0
        mask = torch.zeros((batch.shape[0], past + batch.shape[1]), dtype=torch.long, device=batch.device)
        for row, length in enumerate(lengths):
            mask[row, : past + length] = 1
        cache = (
            read_only_cache(self.llm.config, prefix.keys, prefix.values, batch.shape[0])
            if prefix is not None
            else None
        )
        out = self.llm.model(inputs_embeds=batch, attention_mask=mask, cache=cache, use_cache=False)
        return [out.last_hidden_state[row, :length] for row, length in enumerate(lengths)]

    def select_chain_states(self, hidden: torch.Tensor, expanded_ids: torch.Tensor) -> torch.Tensor:
        """TxH hidden states -> NxH states feeding the seg head, one per chain level, in level order.

        Raises:
            ChainError: a chain token is missing, repeated, or out of order.
        """
        positions = []
        for token, tid in zip(self.chain_tokens, self.chain_token_ids, strict=True):
            found = (expanded_ids == tid).nonzero().flatten().tolist()
            if len(found) != 1:
                raise ChainError(
                    f"expected one {token} in the model's chain {list(self.chain_tokens)}, found {len(found)}"
                )
            positions.append(found[0])
        if positions != sorted(positions) or positions[0] == 0:
            raise ChainError(f"chain tokens {list(self.chain_tokens)} appear out of order at {positions}")
        return hidden[torch.tensor(positions, device=hidden.device) - 1]

    def seg_embeddings(self, states: torch.Tensor) -> torch.Tensor:
        """...xH hidden states -> ...xD SAM prompt embeddings (sum over the seg head's branches)."""
        return torch.stack([fc(states) for fc in self.text_hidden_fcs]).sum(0)

    @torch.no_grad()
    def generate_chain(
        self,
        embeds: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        allowed_tokens: AllowedTokensFn | None = None,
        prefix: PrefixCache | None = None,
    ) -> Generation:
        """Greedy, KV-cached generation from a TxH embedded prompt.

        The hidden state that predicts a chain token is the state at the position before it, so it is
        recorded when the chain token is emitted (the released convention, without a second pass).
        Check the chain with :meth:`Generation.emitted` before using ``chain_states``. With ``prefix``,
        ``embeds`` continue the cached prefix.
        """
        cache = self._cache_from(prefix, 1) or DynamicCache(config=self.llm.config)
        out = self.llm.model(inputs_embeds=embeds.unsqueeze(0), cache=cache, use_cache=True)
        last = out.last_hidden_state[0, -1]
        generated: list[int] = []
        states: list[torch.Tensor] = []
        positions: list[int] = []
        embed = self.llm.get_input_embeddings()
        for _ in range(max_new_tokens):
            logits = self.llm.lm_head(last).float()
            allowed = allowed_tokens(generated) if allowed_tokens else None
            if allowed is not None:
                keep = torch.full_like(logits, float("-inf"))
                keep[list(allowed)] = 0.0
                logits = logits + keep
            next_id = int(logits.argmax())
            if next_id in self.chain_token_ids:
                states.append(last)
                positions.append(len(generated))
            generated.append(next_id)
            if next_id == eos_token_id:
                break
            step = embed(torch.tensor([[next_id]], device=self.device))
            out = self.llm.model(inputs_embeds=step, cache=cache, use_cache=True)
            last = out.last_hidden_state[0, -1]
        hidden = self.llm.config.hidden_size
        stacked = torch.stack(states) if states else embeds.new_zeros((0, hidden))
        return Generation(token_ids=generated, chain_states=stacked, chain_positions=positions)

    # --- masks --------------------------------------------------------------------------------------
    def decode_chain(
        self,
        image_embedding: torch.Tensor,
        chain_embeds: torch.Tensor,
        extra_sparse: Mapping[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the chain through SAM's decoder for B queries, on one image or on one image each.

        Level 1 has no dense prompt; level k >= 2 gets level k-1's raw low-res logits as SAM's mask prompt
        (and, with the refiner, a prompt refined by the prototype under level k-1's mask).

        SAM's ``MaskDecoder`` takes one image per call (it repeats the embedding for every prompt). To
        decode prompts of different images in one call, the image embedding rides in the dense prompt
        (the decoder adds the two first thing: ``src = image + dense``) and a zero image is passed; the
        sum is the same to the bit.

        Args:
            image_embedding: 1xCxGxG (one image) or BxCxGxG (one per query) SAM embeddings.
            chain_embeds: BxNxC prompt embeddings, N levels.
            extra_sparse: 0-based level -> 1xKxC or BxKxC point/box prompt tokens (SAM's prompt encoder),
                placed before that level's chain embedding (``cores.inference.refine``).

        Returns:
            (low-res logits BxNxLxL, IoU scores BxN), L = 4G (256 for SAM at 1024 px).
        """
        batch = chain_embeds.shape[0]
        encoder = self.sam.prompt_encoder
        image_pe = encoder.get_dense_pe().to(self.dtype)
        images = image_embedding.to(self.dtype).expand(batch, -1, -1, -1)
        no_image = torch.zeros_like(images[:1])
        previous: torch.Tensor | None = None
        logits, scores = [], []
        for level in range(chain_embeds.shape[1]):
            sparse, dense = encoder(points=None, boxes=None, masks=previous)
            sparse = sparse.to(self.dtype).expand(batch, -1, -1)
            if extra_sparse is not None and level in extra_sparse:
                clicks = extra_sparse[level].to(self.dtype).expand(batch, -1, -1)
                sparse = torch.cat([sparse, clicks], dim=1)
            text = chain_embeds[:, level : level + 1].to(self.dtype)
            sparse = torch.cat([sparse, text], dim=1)
            if self.refiner is not None and previous is not None:
                sparse = self.refiner(sparse, images, previous)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=no_image,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense.to(self.dtype).expand(batch, -1, -1, -1) + images,
                multimask_output=False,
            )
            logits.append(low_res)
            scores.append(iou)
            previous = low_res
        return torch.cat(logits, dim=1), torch.cat(scores, dim=1)
