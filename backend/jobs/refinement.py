"""Refine a task's chain with the smart tools' clicks and boxes, inside a prediction job.

A task whose request carries ``prompts`` (``backend.label_studio.interactive_prompts``) is answered by
``CoresPipeline.refine``: the query's chain embeddings come from the ``ChainCache`` (this worker, else Redis),
else one ``segment`` recomputes them; the image encodings come from the pipeline's caches (memory, then the
encoding store). Percent coordinates become pixels of the original image here; a prompt with level null
refines the final level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from backend.jobs.chain_cache import CachedChain, ChainCache, chain_key
from backend.jobs.payloads import TaskInput
from backend.label_studio.task_errors import TaskError

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline
    from cores.inference.refine import LevelPrompt
    from cores.inference.result import ChainResult

logger = logging.getLogger(__name__)

CHAINS = ChainCache()
"""This worker process's chain embeddings."""


def level_prompts(
    prompts: Sequence[Mapping[str, Any]], width: int, height: int, levels: int
) -> dict[int, LevelPrompt]:
    """JSON prompts (percent of the image) -> 1-based level -> ``LevelPrompt`` in pixels.

    Raises:
        TaskError: ``bad_prompt`` for a malformed prompt or a level the chain does not have.
    """
    from cores.errors import PromptError
    from cores.inference.refine import LevelPrompt

    points: dict[int, list[tuple[float, float, int]]] = {}
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    try:
        for prompt in prompts:
            level = levels if prompt.get("level") is None else int(prompt["level"])
            if not 1 <= level <= levels:
                raise TaskError(
                    "bad_prompt",
                    f"a click or box names chain level {level}; this model has levels 1..{levels}",
                )
            for x, y, label in prompt.get("points") or ():
                points.setdefault(level, []).append((x / 100 * width, y / 100 * height, int(label)))
            for x, y, w, h in prompt.get("boxes") or ():
                corners = (x / 100 * width, y / 100 * height, (x + w) / 100 * width, (y + h) / 100 * height)
                boxes.setdefault(level, []).append(corners)
        return {
            level: LevelPrompt(points=tuple(points.get(level, ())), boxes=tuple(boxes.get(level, ())))
            for level in sorted(set(points) | set(boxes))
        }
    except (PromptError, TypeError, ValueError) as exc:
        raise TaskError("bad_prompt", f"the clicks or boxes cannot be used: {exc}") from exc


def keep_chain(
    connection: redis.Redis | None, version: str, image_key: str, result: ChainResult, ttl_s: int
) -> None:
    """Keep a query's chain embeddings for later clicks (memory and Redis), by the image's cache key."""
    if result.chain_embeddings is None:
        return
    chain = CachedChain(result.chain_embeddings.numpy(), result.text)
    CHAINS.put(connection, chain_key(version, image_key, result.query), chain, ttl_s)


def refine_task(
    pipeline: CoresPipeline,
    connection: redis.Redis | None,
    version: str,
    image: np.ndarray,
    image_key: str,
    task: TaskInput,
    ttl_s: int,
) -> ChainResult | TaskError:
    """The task's chain refined with its clicks and boxes, or the task's error. ``image_key``: the image's
    cache key (``image_prefetch.cache_key``), under which its encodings and chains are kept."""
    import torch

    from cores.errors import CoresError, PromptError, QueryError

    height, width = image.shape[:2]
    try:
        prompts = level_prompts(task.prompts, width, height, len(pipeline.chain_tokens))
        key = chain_key(version, image_key, task.query)
        chain = CHAINS.get(connection, key)
        if chain is None:
            logger.info("task %s: no chain embeddings for its query here; recomputing them", task.id)
            base = pipeline.segment(image, task.query, key=image_key)
            keep_chain(connection, version, image_key, base, ttl_s)
            assert base.chain_embeddings is not None
            chain = CachedChain(base.chain_embeddings.numpy(), base.text)
        embeddings = torch.from_numpy(chain.embeddings)
        return pipeline.refine(image, task.query, embeddings, prompts, text=chain.text, key=image_key)
    except TaskError as exc:
        return exc
    except QueryError as exc:
        return TaskError("query", f"the model rejected the query: {exc}")
    except PromptError as exc:
        return TaskError("bad_prompt", f"the clicks or boxes cannot refine this chain: {exc}")
    except CoresError as exc:
        return TaskError("model", f"the model could not answer: {exc}")
    except Exception as exc:
        logger.exception("task %s: refining its chain raised", task.id)
        return TaskError("internal", f"refining this task failed: {type(exc).__name__}: {str(exc)[:300]}")
