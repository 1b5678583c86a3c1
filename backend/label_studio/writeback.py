"""Write predictions to Label Studio through its API, at most once per task and model version.

Used by jobs whose predictions the web did not return (``backend.jobs.delivery``) and by bulk pre-annotation.
Before creating a prediction for a task, the task's predictions are listed: when one already carries this
model version (an earlier run, a retried job, Label Studio's own /predict answer), nothing is written.
That makes write-back idempotent and pre-annotation resumable. Two jobs racing on the same task within
milliseconds could still both write; Label Studio then shows two identical predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)


@dataclass
class WriteBackReport:
    """Task ids whose prediction was created, skipped (already there) or failed (with the reason)."""

    created: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (failed keys are task ids as strings)."""
        return {"created": self.created, "skipped": self.skipped, "failed": self.failed}


def has_prediction(client: LabelStudio, task_id: int, model_version: str) -> bool:
    """True when task ``task_id`` already holds a prediction of ``model_version``."""
    return any(p.model_version == model_version for p in client.predictions.list(task=task_id))


def write_predictions(
    client: LabelStudio,
    items: Iterable[tuple[int, Mapping[str, Any]]],
    model_version: str,
    project: int | None = None,
) -> WriteBackReport:
    """Create one prediction per ``(task_id, prediction)`` unless the task has one of ``model_version``.

    ``prediction`` is a ``backend.label_studio.predictions.build_prediction`` dict (``result``, ``score``);
    ``project`` is the tasks' Label Studio project (sent with each prediction: Label Studio 1.23 warns for
    every prediction created without it). Errors are recorded per task (``report.failed``) and never stop the
    other tasks.
    """
    report = WriteBackReport()
    for task_id, prediction in items:
        try:
            if has_prediction(client, task_id, model_version):
                report.skipped.append(task_id)
                logger.info("task %s already has a %s prediction: not written again", task_id, model_version)
                continue
            extra: dict[str, Any] = {"project": project} if project is not None else {}
            client.predictions.create(
                task=task_id,
                result=list(prediction["result"]),
                score=float(prediction.get("score") or 0.0),
                model_version=model_version,
                **extra,
            )
            report.created.append(task_id)
        except Exception as exc:  # the SDK raises ApiError, httpx errors, pydantic errors
            reason = f"{type(exc).__name__}: {exc}"[:500]
            report.failed[str(task_id)] = reason
            logger.error("writing the prediction of task %s to Label Studio failed: %s", task_id, reason)
    logger.info(
        "write-back: %d created, %d skipped, %d failed",
        len(report.created),
        len(report.skipped),
        len(report.failed),
    )
    return report
