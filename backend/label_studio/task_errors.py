"""Per-task errors: what went wrong for one task, as JSON that travels through jobs and /predict answers.

A batch never fails as a whole because one task is bad: the bad task gets ``{"error": {...}}`` in its slot
and the others are still predicted. Codes are stable (tests, metrics and clients rely on them):

==========================  =====================================================================
code                        meaning
==========================  =====================================================================
``missing_query``           no interactive prompt and no query in the task data field (for clicks: no
                            earlier query of the task either; type one first)
``empty_query``             the query is empty or whitespace
``query_too_long``          the query is longer than ``MAX_QUERY_CHARS`` or the model's context
``bad_query``               the query holds a lone surrogate or prompt-reserved text (``<image>``)
``missing_image``           the task data has no image URL in the Image tag's field
``image_fetch``             the image could not be fetched or decoded (``reason`` says why)
``query``                   the model rejected the query (e.g. too long for its context)
``model``                   the model could not answer (bad chain, unusable image)
``internal``                an unexpected error on this task (the worker log has the traceback)
``label_config``            the chain has more levels than the BrushLabels tag has labels
``model_version_mismatch``  the worker knows no model version of that name (set up unlike the web)
``job_failed``              the job holding this task raised (``GET /jobs/<job>`` has the traceback)
``queue_full``              a batch filled the bulk queue midway; this task was not queued
``bad_prompt``              a smart click or box that cannot refine the chain (coordinates, level)
==========================  =====================================================================
"""

from __future__ import annotations

from typing import Any


class TaskError(Exception):
    """One task cannot be predicted.

    Attributes:
        code: a stable machine-readable code (see the module docstring).
        message: what went wrong and what to do about it.
        extra: further JSON-safe fields (e.g. ``reason`` and ``url`` for image errors).
    """

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message
        self.extra = extra

    def to_json(self, task_id: Any = None) -> dict[str, Any]:
        """``{"code", "message", "task", ...extra}``, JSON-safe."""
        payload: dict[str, Any] = {"code": self.code, "message": self.message}
        if task_id is not None:
            payload["task"] = task_id
        payload.update(self.extra)
        return payload


def error_element(error: dict[str, Any], model_version: str) -> dict[str, Any]:
    """A per-task slot of a job result or a batch /predict answer that holds an error, not a prediction.

    It has no ``result`` key on purpose: Label Studio 1.23 skips (and logs) an element without
    ``result``, so nothing is stored for that task and a later "Retrieve predictions" retries it.
    """
    return {"error": error, "model_version": model_version}
