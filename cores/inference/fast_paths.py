"""Static-shape serving paths: the language model over a resident prefix in length buckets, CLIP and the
SAM decoder chain in batch buckets, each one call that a CUDA graph captures (``cuda_graphs``).

* Batches are split into bucket sizes (``batch_buckets``, greedy: 13 rows run as 8 + 4 + 1), so no row is
  ever padded and every shape is one of a few.
* The language model's rows are right-padded to the smallest length bucket that holds them (lengths
  past the largest bucket round up to a multiple of ``length_step``), masked with
  :func:`cores.modeling.static_cache.padded_causal_mask`: the real positions' states are those of the
  dynamic path. The prefix's keys/values are the pipeline's resident ones, served read-only.
* Graphs are captured on CUDA only (``graphs``), one per (prefix, batch, length) or batch size, on first
  use; workers call :meth:`FastPaths.warm_up` at start so no request pays for a capture. Elsewhere the
  same static calls run without capture.
* A model-version switch with the same architecture copies the new weights into the captured parameters
  (:meth:`FastPaths.adopt_weights`) and recomputes the resident prefixes in place; another architecture
  needs a new pipeline (a recapture).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch

from cores.inference.cuda_graphs import GraphedCall
from cores.modeling.model import CoresModel, PrefixCache
from cores.modeling.sam_encoder import compile_encoder
from cores.modeling.static_cache import padded_causal_mask, read_only_cache, refresh_in_place

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathConfig:
    """What :class:`FastPaths` does.

    ``graphs``: capture CUDA graphs (CUDA only). ``compile_sam``: ``torch.compile`` SAM's image encoder.
    ``batch_buckets``: batch sizes the model runs (must hold 1). ``length_buckets``: language-model lengths
    after the prefix (the image's 256 tokens + query + answer: ~280-400 with LLaMA's tokenizer).
    """

    graphs: bool = True
    compile_sam: bool = False
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    length_buckets: tuple[int, ...] = (320, 384, 448, 512, 640)
    length_step: int = 64

    def __post_init__(self) -> None:
        if 1 not in self.batch_buckets or any(b < 1 for b in self.batch_buckets):
            raise ValueError(f"batch buckets must be positive and hold 1, got {self.batch_buckets}")
        if any(n < 1 for n in self.length_buckets) or self.length_step < 1:
            raise ValueError(f"length buckets must be positive, got {self.length_buckets}")


def split_batch(n: int, buckets: Sequence[int]) -> list[int]:
    """``n`` rows as bucket-sized chunks, largest first (13 over 1,2,4,8 -> [8, 4, 1])."""
    sizes, left = [], n
    ordered = sorted(buckets, reverse=True)
    while left:
        size = next(b for b in ordered if b <= left)
        sizes.append(size)
        left -= size
    return sizes


def length_bucket(n: int, buckets: Sequence[int], step: int) -> int:
    """The smallest bucket >= ``n``; past the largest, ``n`` rounded up to a multiple of ``step``."""
    fitting = [b for b in buckets if b >= n]
    return min(fitting) if fitting else -(-n // step) * step


class FastPaths:
    """Static-shape (and, on CUDA, graph-captured) calls of a :class:`CoresModel` (see the module doc)."""

    def __init__(self, model: CoresModel, config: FastPathConfig | None = None) -> None:
        self.model = model
        self.config = config or FastPathConfig()
        self.capture = self.config.graphs and model.device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._calls: dict[tuple[Any, ...], GraphedCall] = {}
        self._prefixes: dict[tuple[int, ...], PrefixCache] = {}
        if self.config.compile_sam:
            compile_encoder(model.sam)

    # --- calls ---------------------------------------------------------------------------------------
    def _call(self, key: tuple[Any, ...], fn: Any, example: tuple[torch.Tensor, ...]) -> GraphedCall:
        call = self._calls.get(key)
        if call is None:
            call = GraphedCall(fn, example, capture=self.capture, pool=self._pool, name=str(key[0]))
            self._calls[key] = call
        return call

    def _chunks(self, n: int) -> list[slice]:
        out, start = [], 0
        for size in split_batch(n, self.config.batch_buckets):
            out.append(slice(start, start + size))
            start += size
        return out

    @torch.no_grad()
    def encode_sam(self, pixels: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS normalised pixels -> BxCxGxG SAM embeddings, in bucket-sized chunks (each a compiled
        shape with ``compile_sam``; the encoder is not graph-captured)."""
        return torch.cat([self.model.encode_sam(pixels[part]) for part in self._chunks(pixels.shape[0])])

    @torch.no_grad()
    def encode_clip(self, pixels: torch.Tensor) -> torch.Tensor:
        """Bx3x224x224 CLIP pixels -> BxPxH projected tokens (graph per chunk size)."""
        pixels = pixels.to(self.model.device, self.model.vision_tower.dtype)
        outs = []
        for part in self._chunks(pixels.shape[0]):
            chunk = pixels[part]
            call = self._call(("clip", chunk.shape[0]), self.model.encode_clip, (chunk,))
            outs.append(cast(torch.Tensor, call(chunk)))
        return torch.cat(outs)

    def _decode_step(self, images: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_chain(images, self.model.seg_embeddings(states))

    @torch.no_grad()
    def decode(self, images: torch.Tensor, chain_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BxCxGxG image embeddings + BxNxH chain states -> (low-res logits BxNxLxL, IoU scores BxN): the seg
        head and SAM's decoder chain (graph per chunk size)."""
        images = images.to(self.model.dtype)
        logits, scores = [], []
        for part in self._chunks(images.shape[0]):
            args = (images[part], chain_states[part])
            call = self._call(("sam_decoder", args[0].shape[0]), self._decode_step, args)
            low_res, iou = cast(tuple[torch.Tensor, torch.Tensor], call(*args))
            logits.append(low_res)
            scores.append(iou)
        return torch.cat(logits), torch.cat(scores)

    def _llm_step(self, prefix: PrefixCache, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cache = read_only_cache(self.model.llm.config, prefix.keys, prefix.values, embeds.shape[0])
        out = self.model.llm.model(inputs_embeds=embeds, attention_mask=mask, cache=cache, use_cache=False)
        return cast(torch.Tensor, out.last_hidden_state)

    @torch.no_grad()
    def hidden_states(self, embeds: Sequence[torch.Tensor], prefix: PrefixCache) -> list[torch.Tensor]:
        """As :meth:`CoresModel.hidden_states` with a prefix: per sequence TxH last-layer states, computed in
        bucket-sized batches padded to length buckets (graph per prefix, batch and length)."""
        self._prefixes.setdefault(prefix.ids, prefix)
        lengths = [int(e.shape[0]) for e in embeds]
        out: list[torch.Tensor] = []
        for part in self._chunks(len(embeds)):
            rows = list(embeds[part])
            size = length_bucket(max(lengths[part]), self.config.length_buckets, self.config.length_step)
            batch = rows[0].new_zeros((len(rows), size, rows[0].shape[-1]))
            for i, row in enumerate(rows):
                batch[i, : row.shape[0]] = row
            counts = torch.tensor(lengths[part], device=batch.device)
            mask = padded_causal_mask(counts, prefix.length, size)
            key = ("language_model", prefix.ids, len(rows), size)
            call = self._call(key, partial(self._llm_step, prefix), (batch, mask))
            hidden = cast(torch.Tensor, call(batch, mask))
            out.extend(hidden[i, :n] for i, n in enumerate(lengths[part]))
        return out

    # --- warm-up and weights -------------------------------------------------------------------------
    @torch.no_grad()
    def warm_up(self, prefix: PrefixCache, *, max_batch: int) -> dict[str, float]:
        """Run (compile, capture) every bucket shape up to ``max_batch`` rows once; returns seconds per shape
        (each also logged), the cold-start cost no request should pay."""
        model, timings = self.model, {}
        hidden = model.llm.config.hidden_size
        side = model.sam.image_encoder.img_size
        clip_side = cast(int, model.vision_tower.config.image_size)
        grid = model.sam.prompt_encoder.image_embedding_size[0]
        levels = len(model.chain_token_ids)
        embed_dim = model.sam.prompt_encoder.embed_dim
        for batch in sorted((b for b in self.config.batch_buckets if b <= max_batch), reverse=True):
            shapes: dict[str, Any] = {
                f"sam_encoder b={batch}": partial(self.encode_sam, self._zeros(batch, 3, side, side)),
                f"clip b={batch}": partial(self.encode_clip, self._zeros(batch, 3, clip_side, clip_side)),
                f"sam_decoder b={batch}": partial(
                    self.decode,
                    self._zeros(batch, embed_dim, grid, grid),
                    self._zeros(batch, levels, hidden),
                ),
            }
            for size in self.config.length_buckets:
                rows = [self._zeros(size, hidden)] * batch
                shapes[f"language_model b={batch} L={size}"] = partial(self.hidden_states, rows, prefix)
            for name, run in shapes.items():
                started = time.perf_counter()
                run()
                if model.device.type == "cuda":
                    torch.cuda.synchronize(model.device)
                timings[name] = time.perf_counter() - started
                logger.info("warm-up %s: %.2f s", name, timings[name])
        return timings

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.model.device, dtype=self.model.dtype)

    @torch.no_grad()
    def adopt_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a same-architecture model's state dict into this model's tensors in place (captured graphs
        keep reading the same addresses), then recompute the resident prefixes' keys/values in place.

        Raises:
            ValueError: the keys or a shape differ (another architecture: build a new pipeline instead).
        """
        held = self.model.state_dict()
        if set(held) != set(state):
            missing, extra = sorted(set(held) - set(state))[:5], sorted(set(state) - set(held))[:5]
            raise ValueError(f"the new weights do not fit this model: missing {missing}, unexpected {extra}")
        wrong = [k for k, t in held.items() if tuple(t.shape) != tuple(state[k].shape)]
        if wrong:
            raise ValueError(f"the new weights have other shapes than this model's: {wrong[:5]}")
        for key, tensor in held.items():
            tensor.copy_(state[key])
        for ids, prefix in self._prefixes.items():
            fresh = self.model.prefix_cache(torch.tensor(ids, dtype=torch.long))
            refresh_in_place(prefix.keys + prefix.values, fresh.keys + fresh.values)
        logger.info("adopted new weights in place (%d tensors, %d prefixes)", len(held), len(self._prefixes))
