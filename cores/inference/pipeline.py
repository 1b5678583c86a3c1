"""``CoresPipeline``: image in, query in, every chain level's mask out.

``set_image`` runs the two image encoders once (SAM ViT and CLIP) and caches their outputs by content hash;
``segment`` runs the language model and SAM's decoder per query. Two modes:

* ``answer`` (default): one forward pass over the prompt with the fixed chain answer (CoReS's evaluation
  protocol); deterministic, no decode loop.
* ``generate``: greedy KV-cached generation; the chain text is the model's own, masks come from the hidden
  states that emitted the chain tokens.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cores.checkpoints.loading import LoadedCheckpoint, load_checkpoint
from cores.errors import ChainError, QueryError
from cores.inference.confidence import level_statistics
from cores.inference.devices import resolve_device, resolve_dtype
from cores.inference.encoding_store import EncodingStore, ModelEncodings
from cores.inference.fast_paths import FastPathConfig, FastPaths
from cores.inference.image_keys import check_image, encoded_image_key, image_key
from cores.inference.image_states import ImageState, PreparedInputs
from cores.inference.images import load_image
from cores.inference.refine import LevelPrompt, refine_chain
from cores.inference.result import ChainResult, LevelResult, split_levels, stage_timings
from cores.modeling.model import AllowedTokensFn, PrefixCache
from cores.modeling.prompts import chain_answer, style_for_chain
from cores.modeling.queries import MAX_QUERY_CHARS
from cores.modeling.sam import SamInput, prepare_sam_input, sam_batch, upscale_logits
from cores.modeling.tokenizer import IMAGE_TOKEN_ID, decode_chain_text, prompt_token_ids
from cores.modeling.vision import clip_pixels

logger = logging.getLogger(__name__)

MODES = ("answer", "generate")
__all__ = ["MAX_QUERY_CHARS", "MODES", "CoresPipeline", "ImageState", "encoded_image_key", "image_key"]
__all__ += ["load_image"]


class CoresPipeline:
    """Segment by reasoning: ``pipe.segment(image, "what would you cut the bread with?")``.

    Args:
        checkpoint: a loaded checkpoint (see :meth:`from_pretrained`).
        cache_bytes: memory bound of the per-image cache (SAM embedding + CLIP tokens); 0 disables it.
        max_new_tokens: generation budget in ``generate`` mode.
        prefix_cache: reuse the keys/values of the prompt part before the image (system prompt and
            in-context example) across queries.
        encoding_store: a persistent store of image encodings consulted before encoding an image that is
            not in memory, and filled after (``cores.inference.encoding_store``); None: memory only.
        fast_paths: run the encoders, the language model and SAM's decoder through static-shape calls
            (CUDA graphs on CUDA; see :mod:`cores.inference.fast_paths`); None runs them as they come.
        micro_batch: most items ``segment_batch`` passes through the model at once (a larger batch runs
            in micro-batches; see :mod:`cores.inference.memory`); None: all at once.

    SAM's attention kernel belongs to the loaded model, not to a pipeline (``load_checkpoint``'s
    ``sam_attention``): a pipeline never changes the model it is given.
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        *,
        cache_bytes: int = 2 * 2**30,
        max_new_tokens: int = 64,
        prefix_cache: bool = True,
        encoding_store: EncodingStore | None = None,
        fast_paths: FastPathConfig | None = None,
        micro_batch: int | None = None,
    ):
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.chain_tokens = checkpoint.model.chain_tokens
        self.style = style_for_chain(self.chain_tokens)
        self.answer = chain_answer(self.chain_tokens)
        self.max_new_tokens = max_new_tokens
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, ImageState] = OrderedDict()
        self._img_size = self.model.sam.image_encoder.img_size
        self.use_prefix_cache = prefix_cache
        self._prefix: PrefixCache | None = None
        self.encodings = ModelEncodings(encoding_store, self.model) if encoding_store is not None else None
        self.fast = FastPaths(self.model, fast_paths) if fast_paths is not None else None
        self.micro_batch = micro_batch
        self._prepared = PreparedInputs()

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        vision_tower: str | None = None,
        sam_attention: str = "auto",
        **kwargs: Any,
    ) -> CoresPipeline:
        """Load a checkpoint folder or hub id (see :func:`cores.checkpoints.loading.load_checkpoint`)."""
        dev = resolve_device(device)
        loaded = load_checkpoint(
            checkpoint,
            device=dev,
            dtype=resolve_dtype(dtype, dev),
            vision_tower=vision_tower,
            sam_attention=sam_attention,
        )
        return cls(loaded, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- images -------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> ImageState:
        """Encode an HxWx3 uint8 RGB image with SAM and CLIP, or return the cached encodings."""
        return self.set_images([image])[0]

    def prepare(self, image: np.ndarray, key: str) -> None:
        """Resize ``image`` for SAM and CLIP now (from any thread: an image loader's pool), kept by ``key``
        until the next encoding of that key uses it (at most ``MAX_PREPARED`` kept)."""
        checked = check_image(image)
        if key in self._cache:
            return
        self._prepared.put(key, self._inputs("", checked))

    def set_images(self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None) -> list[ImageState]:
        """Encode several images; the ones not in the cache go through each encoder as one batch.

        ``keys``: the images' content keys (:func:`image_key`) when the caller already has them (a
        fine-tune's samples are hashed once, not at every step); None hashes each image here.
        """
        return self._encode(images, keys)[0]

    @torch.no_grad()
    def _encode(
        self, images: Sequence[np.ndarray], given_keys: Sequence[str] | None = None
    ) -> tuple[list[ImageState], int]:
        """(states, number of cache hits)."""
        checked = [check_image(image) for image in images]
        if given_keys is not None and len(given_keys) != len(checked):
            raise ValueError(f"{len(given_keys)} image keys for {len(checked)} images")
        keys = list(given_keys) if given_keys is not None else [image_key(image) for image in checked]
        fresh: dict[str, np.ndarray] = {}
        for key, image in zip(keys, checked, strict=True):
            if key not in self._cache:
                fresh.setdefault(key, image)
        encoded: dict[str, ImageState] = {}
        for key in list(fresh) if self.encodings is not None else ():
            if (stored := self.encodings.load(key)) is not None:  # type: ignore[union-attr]
                sizes = SamInput(torch.empty(0, dtype=torch.uint8), stored.input_size, stored.original_size)
                encoded[key] = ImageState(key, sizes, *stored.tensors(self.device))
                del fresh[key]
        if fresh:
            ready = [self._inputs(key, image) for key, image in fresh.items()]
            sam_inputs = [sam_input for sam_input, _ in ready]
            encoders = self.fast or self.model
            sam = encoders.encode_sam(sam_batch(sam_inputs, self._img_size, self.device))
            pixels = torch.cat([clip for _, clip in ready])
            clip = encoders.encode_clip(pixels)
            for i, (key, prepared) in enumerate(zip(fresh, sam_inputs, strict=True)):
                encoded[key] = ImageState(key, prepared.sizes_only(), sam[i : i + 1], clip[i])
                if self.encodings is not None:
                    self.encodings.save(key, sam[i : i + 1], clip[i], prepared)
        states = []
        for key in keys:
            state = encoded.get(key) or self._cache[key]
            states.append(state)
            if self.cache_bytes > 0:
                self._cache[key] = state
                self._cache.move_to_end(key)
        while len(self._cache) > 1 and sum(s.nbytes for s in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return states, len(keys) - sum(key in fresh for key in keys)

    def _inputs(self, key: str, image: np.ndarray) -> tuple[SamInput, torch.Tensor]:
        """SAM input and CLIP pixels of an image: prepared ahead (:meth:`prepare`) or now."""
        held = self._prepared.take(key)
        if held is not None:
            return held
        return prepare_sam_input(image, self._img_size), clip_pixels(self.checkpoint.image_processor, image)

    def clear_cache(self) -> None:
        """Forget every cached image encoding."""
        self._cache.clear()

    # --- queries ------------------------------------------------------------------------------------
    def prompt_ids(self, query: str, *, is_sentence: bool | None, with_answer: bool) -> torch.Tensor:
        """Token ids of the full prompt for ``query`` (one image slot).

        The query is only stripped (see :func:`cores.modeling.queries.check_query`); the ids are those
        transformers 4.31's slow LLaMA tokenizer gives (see :mod:`cores.modeling.llama_tokenizer`).

        Raises:
            QueryError: an empty or invisible query, one holding a special token or a lone surrogate, or a
                prompt that does not fit the language model's context.
        """
        ids = prompt_token_ids(
            self.tokenizer, query, self.chain_tokens, is_sentence=is_sentence, with_answer=with_answer
        )
        limit = self.model.llm.config.max_position_embeddings
        image_tokens = self.model.image_token_count
        total = len(ids) - 1 + image_tokens + (0 if with_answer else self.max_new_tokens)
        if total > limit:
            raise QueryError(
                f"the query is too long: the prompt needs {total} positions with the image "
                f"({image_tokens} tokens), the model's context holds {limit}"
            )
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def segment(
        self,
        image: np.ndarray,
        query: str,
        *,
        is_sentence: bool | None = None,
        mode: str = "answer",
        allowed_tokens: AllowedTokensFn | None = None,
        key: str | None = None,
    ) -> ChainResult:
        """Every chain level's mask for one query on one image (its encodings cached under ``key``, e.g.
        :func:`encoded_image_key`; None: the pixels' hash).

        Args:
            image: HxWx3 uint8 RGB.
            query: free-form text; ``is_sentence`` picks the template (None: guessed).
            mode: ``answer`` (one teacher-forced pass) or ``generate`` (greedy decoding).
            allowed_tokens: optional constraint on generated tokens (``generate`` only).

        Raises:
            ImageError, QueryError, ChainError; ValueError for an unknown mode.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode == "answer":
            return self.segment_batch([(image, query, is_sentence)], None if key is None else [key])[0]
        start = time.perf_counter()
        encodings, hit = self._encode([image], None if key is None else [key])
        state = encodings[0]
        encoded = time.perf_counter()
        full_ids = self.prompt_ids(query, is_sentence=is_sentence, with_answer=False)
        prefix, suffixes = self._split_prefix([full_ids])
        embeds, _ = self.model.embed_sequence(suffixes[0], state.clip_tokens)
        eos_id = self.tokenizer.eos_token_id
        assert eos_id is not None, "load_tokenizer refuses tokenizers without EOS"
        gen = self.model.generate_chain(
            embeds,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=eos_id,
            allowed_tokens=allowed_tokens,
            prefix=prefix,
        )
        text = self._decode_text(gen.token_ids)
        if gen.emitted() != list(self.model.chain_token_ids):
            produced = self.tokenizer.convert_ids_to_tokens(gen.emitted())
            raise ChainError(
                f"the model's answer has chain tokens {produced}, expected {list(self.chain_tokens)} "
                f"once each in order; it answered: {text!r}"
            )
        llm_done = time.perf_counter()
        result = self._masks([state], gen.chain_states.unsqueeze(0), [query], [text], "generate")[0]
        result.timings.update(stage_timings(start, encoded, llm_done, hit))
        return result

    @torch.no_grad()
    def segment_batch(
        self, items: Sequence[tuple[np.ndarray, str, bool | None]], keys: Sequence[str] | None = None
    ) -> list[ChainResult]:
        """``answer`` mode for many (image, query, is_sentence) items: one language-model pass per
        micro-batch (all items when ``micro_batch`` is None). ``keys``: the images' cache keys, as in
        :meth:`set_images`."""
        step = self.micro_batch or len(items) or 1
        if len(items) > step:
            parts = [slice(i, i + step) for i in range(0, len(items), step)]
            return [r for p in parts for r in self.segment_batch(items[p], keys[p] if keys else None)]
        start = time.perf_counter()
        states, hits = self._encode([image for image, _, _ in items], keys)
        encoded = time.perf_counter()
        all_ids = [self.prompt_ids(q, is_sentence=s, with_answer=True) for _, q, s in items]
        prefix, all_ids = self._split_prefix(all_ids)
        embeds, expanded = [], []
        for ids, state in zip(all_ids, states, strict=True):
            e, x = self.model.embed_sequence(ids, state.clip_tokens)
            embeds.append(e)
            expanded.append(x)
        if self.fast is not None and prefix is not None:
            hidden = self.fast.hidden_states(embeds, prefix)
        else:
            hidden = self.model.hidden_states(embeds, prefix)
        chain_states = torch.stack(
            [self.model.select_chain_states(h, x) for h, x in zip(hidden, expanded, strict=True)]
        )
        llm_done = time.perf_counter()
        queries = [query for _, query, _ in items]
        results = self._masks(states, chain_states, queries, [self.answer] * len(items), "answer")
        for result in results:
            result.timings.update(stage_timings(start, encoded, llm_done, hits == len(items)))
        return results

    @torch.no_grad()
    def refine(
        self,
        image: np.ndarray,
        query: str,
        chain_embeddings: torch.Tensor,
        prompts: Mapping[int, LevelPrompt],
        *,
        text: str | None = None,
        key: str | None = None,
    ) -> ChainResult:
        """Re-decode a query's chain with clicks and boxes (``cores.inference.refine``), without the
        language model: ``chain_embeddings`` is the NxC ``ChainResult.chain_embeddings`` of ``query`` on
        ``image``; ``prompts`` maps 1-based levels to their clicks. Levels before the first clicked one come
        out as ``segment`` gave them; the image encoders run only when the image is not cached.

        Raises:
            ImageError; PromptError for a level outside the chain, a point outside the image, or chain
            embeddings of the wrong shape.
        """
        return refine_chain(self, image, query, chain_embeddings, prompts, text=text, key=key)

    # --- helpers ------------------------------------------------------------------------------------
    def _split_prefix(self, all_ids: list[torch.Tensor]) -> tuple[PrefixCache | None, list[torch.Tensor]]:
        """Cut the shared part before the image slot off every prompt and return its (cached) keys/values.

        The text before ``<image>`` is tokenised on its own (LLaVA's rule), so it is the same token ids for
        every query of a prompt style; a prompt whose prefix differs is an invariant violation.
        """
        if not self.use_prefix_cache:
            return None, all_ids
        slot = int((all_ids[0] == IMAGE_TOKEN_ID).nonzero()[0])
        prefix_ids = all_ids[0][:slot]
        for ids in all_ids:
            assert torch.equal(ids[:slot], prefix_ids), "prompts of one style share their prefix"
        if self._prefix is None or self._prefix.ids != tuple(prefix_ids.tolist()):
            self._prefix = self.model.prefix_cache(prefix_ids)
        return self._prefix, [ids[slot:] for ids in all_ids]

    def _masks(
        self,
        states: list[ImageState],
        chain_states: torch.Tensor | None,
        queries: list[str],
        texts: list[str],
        mode: str,
        embeddings: torch.Tensor | None = None,
        extra_sparse: Mapping[int, torch.Tensor] | None = None,
    ) -> list[ChainResult]:
        """BxNxH chain states (or BxNxC chain ``embeddings``), one image state per item -> B results with
        full-size masks (one SAM-decoder call per level for the whole batch)."""
        started = time.perf_counter()
        if embeddings is None:
            assert chain_states is not None, "chain states or chain embeddings"
            embeddings = self.model.seg_embeddings(chain_states)
        prompts = embeddings
        images = torch.cat([s.sam_embedding for s in states])
        if self.fast is not None and extra_sparse is None and chain_states is not None:
            low_res, scores = self.fast.decode(images, chain_states)
        else:
            low_res, scores = self.model.decode_chain(images, prompts, extra_sparse)
        scores = scores.float().cpu()
        results = []
        for b, (state, query, text) in enumerate(zip(states, queries, texts, strict=True)):
            logits = upscale_logits(self.model.sam, low_res[b].unsqueeze(1), state.sam_input)
            masks = (logits[:, 0] > 0).cpu().numpy()
            pieces = split_levels(text, self.chain_tokens)
            side = low_res.shape[-1]  # the low-res map covers the padded square: read the image's part only
            valid_h, valid_w = (-(-n * side // self._img_size) for n in state.sam_input.input_size)
            stats = level_statistics(low_res[b, :, :valid_h, :valid_w])
            levels = [
                LevelResult(k + 1, tok, masks[k], float(scores[b, k]), pieces[k], stats[k])
                for k, tok in enumerate(self.chain_tokens)
            ]
            result = ChainResult(query=query, levels=levels, text=text, mode=mode)
            result.chain_embeddings = prompts[b].detach().float().cpu()
            result.timings["masks"] = (time.perf_counter() - started) * 1000
            results.append(result)
        return results

    def _decode_text(self, ids: list[int]) -> str:
        try:
            return decode_chain_text(self.tokenizer, ids)
        except ValueError as exc:
            raise ChainError(f"the model generated a token the tokenizer cannot decode: {exc}") from exc
