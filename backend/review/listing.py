"""The tasks of a project most in need of review: each task's newest prediction (stored in Label Studio, or
remembered by the workers in Redis: interactive predictions are never stored by Label Studio), ordered by
its review score (``backend.review.score``), lowest first, with the reasons; tasks that already have an
annotation are left out unless asked for."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from backend.corrections.prediction_memory import recall_project
from backend.corrections.records import utc_iso
from backend.label_studio.task_pages import iter_tasks
from backend.review.score import ReviewScore

logger = logging.getLogger(__name__)

UNSCORED = "no review score (predicted before review scoring, or by another model): its own score is used"


@dataclass(frozen=True)
class ReviewItem:
    """One task's newest prediction: its review ``score`` (None: it has none), why it is low, where it was
    read (``label_studio`` or ``memory``) and when it was made (UTC ISO)."""

    task: int
    score: float | None
    reasons: tuple[str, ...]
    model_version: str
    source: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "score": self.score,
            "reasons": list(self.reasons),
            "model_version": self.model_version,
            "source": self.source,
            "created_at": self.created_at,
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def item_from_result(
    task: int,
    result: Iterable[Mapping[str, Any]],
    score: Any,
    model_version: str,
    source: str,
    created_at: str,
) -> ReviewItem:
    """A task's item from a prediction's ``result`` (its regions' ``meta.review``) and top-level score."""
    review = ReviewScore.from_result(result)
    if review is not None:
        return ReviewItem(task, review.score, tuple(review.reasons()), model_version, source, created_at)
    return ReviewItem(task, _number(score), (UNSCORED,), model_version, source, created_at)


def _when(value: Any) -> str:
    if isinstance(value, datetime | str) and value:
        try:
            return utc_iso(value)
        except ValueError:
            return ""
    return ""


def from_label_studio(client: Any, project: int) -> dict[int, ReviewItem]:
    """The newest prediction per task of ``project`` stored in Label Studio (``GET /api/predictions``)."""
    found: dict[int, ReviewItem] = {}
    for prediction in client.predictions.list(project=project):
        task = getattr(prediction, "task", None)
        if not isinstance(task, int):
            continue
        item = item_from_result(
            task,
            [region for region in (prediction.result or []) if isinstance(region, Mapping)],
            prediction.score,
            str(prediction.model_version or ""),
            "label_studio",
            _when(getattr(prediction, "created_at", None)),
        )
        if task not in found or item.created_at >= found[task].created_at:
            found[task] = item
    return found


def from_memory(connection: redis.Redis, project: int) -> dict[int, ReviewItem]:
    """The newest prediction per task of ``project`` the workers remember in Redis."""
    found: dict[int, ReviewItem] = {}
    for task, entry in recall_project(connection, project).items():
        review = None
        if entry.review is not None:
            try:
                review = ReviewScore.from_json(entry.review)
            except ValueError as exc:
                logger.warning("task %s: unreadable review score in the prediction memory: %s", task, exc)
        score: float | None = entry.score
        reasons: tuple[str, ...] = (UNSCORED,)
        if review is not None:
            reasons, score = tuple(review.reasons()), review.score
        found[task] = ReviewItem(task, score, reasons, entry.model_version, "memory", entry.created_at)
    return found


def annotated_tasks(client: Any, project: int) -> set[int]:
    """Ids of the tasks of ``project`` that have at least one annotation."""
    done: set[int] = set()
    for task in iter_tasks(client, project):
        if (getattr(task, "total_annotations", 0) or 0) > 0 or getattr(task, "is_labeled", False):
            done.add(int(task.id))
    return done


def most_in_need(
    *sources: Mapping[int, ReviewItem], skip: set[int] | None = None, top: int | None = None
) -> list[ReviewItem]:
    """Merge ``sources`` (the newest item per task wins), drop the tasks in ``skip``, and order lowest
    score first (items without any score last, by task id); at most ``top``."""
    merged: dict[int, ReviewItem] = {}
    for source in sources:
        for task, item in source.items():
            if task not in merged or item.created_at > merged[task].created_at:
                merged[task] = item
    chosen = [item for task, item in merged.items() if task not in (skip or set())]
    chosen.sort(key=lambda item: (item.score is None, item.score or 0.0, item.task))
    return chosen if top is None else chosen[:top]
