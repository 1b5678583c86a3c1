"""The model's chain over a job's items: batched where the mode allows, each item's failure its own
``TaskError`` (``run_chains``), so one bad image or query never fails its neighbours."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from backend.label_studio.task_errors import TaskError

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline
    from cores.inference.result import ChainResult

logger = logging.getLogger(__name__)


def run_chains(
    pipeline: CoresPipeline,
    items: Sequence[tuple[np.ndarray, str]],
    *,
    mode: str,
    batch_size: int,
    keys: Sequence[str] | None = None,
) -> list[ChainResult | TaskError]:
    """Run the chain for every (image, query); a failing item gets a ``TaskError`` in its place.

    ``answer`` mode runs ``segment_batch`` on groups of ``batch_size`` (one language-model pass each) and
    falls back to one ``segment`` per item when a group fails, so one bad item does not sink the group.
    ``generate`` mode runs ``segment`` per item. ``keys``: the images' cache keys (the encoded bytes'
    digests, ``image_prefetch.cache_key``), used by the batched pass. Any exception of an item
    (``QueryError``, ``ValueError``, ``UnicodeError``, anything) becomes that item's ``TaskError``; only
    ``BaseException`` s that are not ``Exception`` s (a shutdown interrupt) pass through.
    """
    from cores.errors import CoresError

    results: list[ChainResult | TaskError] = []
    if mode == "answer" and len(items) > 1:
        for start in range(0, len(items), batch_size):
            group = items[start : start + batch_size]
            try:
                part = keys[start : start + batch_size] if keys is not None else None
                results.extend(pipeline.segment_batch([(image, q, None) for image, q in group], part))
                continue
            except Exception as exc:  # one bad item must not sink the group: retry each alone
                level = logging.INFO if isinstance(exc, CoresError) else logging.WARNING
                logger.log(
                    level,
                    "batched pass failed (%s: %s); retrying its %d items one by one",
                    type(exc).__name__,
                    exc,
                    len(group),
                )
            part_keys = keys[start : start + batch_size] if keys is not None else [None] * len(group)
            results.extend(
                segment_one(pipeline, image, query, mode, key)
                for (image, query), key in zip(group, part_keys, strict=True)
            )
        return results
    each = keys if keys is not None else [None] * len(items)
    return [
        segment_one(pipeline, image, query, mode, key)
        for (image, query), key in zip(items, each, strict=True)
    ]


def segment_one(
    pipeline: CoresPipeline, image: np.ndarray, query: str, mode: str, key: str | None = None
) -> ChainResult | TaskError:
    from cores.errors import CoresError, QueryError

    try:
        return pipeline.segment(image, query, mode=mode, key=key)
    except QueryError as exc:
        return TaskError("query", f"the model rejected the query: {exc}")
    except CoresError as exc:
        return TaskError("model", f"the model could not answer: {exc}")
    except Exception as exc:
        logger.exception("the chain raised on one task (query %r)", query[:80])
        return internal_error(exc)


def internal_error(exc: Exception) -> TaskError:
    """The per-task error for an unexpected exception (its type and message; the log has the traceback)."""
    return TaskError("internal", f"predicting this task failed: {type(exc).__name__}: {str(exc)[:300]}")
