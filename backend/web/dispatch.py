"""The web side of ``POST /predict``: resolve tasks, enqueue jobs, wait until the deadline, answer.

Interactive (one task and ``params.context``): one job on the ``interactive`` queue; the web blocks on
the job's rq result stream (``XREAD BLOCK``, woken the moment the worker records a result) for at most
``PREDICT_DEADLINE`` seconds and answers with its prediction. Past the deadline it cancels the job if no
worker took it yet (the job also expires from the queue) and answers 504; Label Studio stores nothing
for interactive calls, so nothing is lost but the annotator's wait.

Batch (anything else, e.g. "Retrieve predictions" on many tasks): tasks go to the ``bulk`` queue in jobs
of ``PREDICT_BATCH_SIZE`` tasks (fewer, larger jobs when the queue has less room than that needs). The
web waits on all of them until the deadline, then answers ``len(tasks)`` results in task order:

- a finished task: its prediction (Label Studio stores it);
- a task with an error: ``{"error": {...}, "model_version"}``, without ``result``: Label Studio 1.23
  logs and skips an element without ``result``, so no empty prediction is stored and the task is
  retried by the next "Retrieve predictions";
- a task still queued or running: ``[]``, an empty list of predictions. Label Studio 1.23 iterates a list
  element as that task's predictions, so it stores nothing for it, and it does not fall back to
  task-by-task retries because the answer still has exactly ``len(tasks)`` elements. The job writes that
  prediction through the Label Studio API when it finishes (``backend.jobs.delivery`` decides, atomically,
  whether the web or the job delivers each job's predictions, so each lands exactly once).

Returning an empty prediction (``{"result": []}``) instead would be wrong: Label Studio would store it
with the current model version and then skip the task forever.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from backend.jobs import queues
from backend.jobs.delivery import Deliverer, abandon_claim, claim_key, open_claim
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.jobs.warm_requests import request_warm
from backend.label_studio.interactive_prompts import interactive_prompts
from backend.label_studio.label_config import LabelConfigError, SegmentationSchema, cached_label_config
from backend.label_studio.queries import resolve_image_url, resolve_query
from backend.label_studio.task_errors import TaskError, error_element
from backend.operations.ids import IdError, parse_id, project_id
from backend.operations.metrics import MetricsStore
from backend.operations.settings import Settings
from backend.web.click_queries import last_query

logger = logging.getLogger(__name__)

HANDOFF_GRACE_S = 3.0
"""Seconds the web waits for the result of a job that finished just as the deadline passed."""
_BLOCK_S = 1.0


class PayloadError(ValueError):
    """The /predict body is not a Label Studio predict request (answered 400)."""


class PayloadTooLargeError(PayloadError):
    """A /predict body with more tasks than ``MAX_PREDICT_TASKS`` (answered 413)."""


class InteractiveTimeoutError(Exception):
    """An interactive job did not finish before the deadline (answered 504)."""

    def __init__(self, job_id: str, deadline: float) -> None:
        super().__init__(
            f"the model did not answer within PREDICT_DEADLINE={deadline:g} s (job {job_id}); the workers "
            "may be busy or down: check GET /metrics (cores_workers, cores_queue_depth)"
        )
        self.job_id = job_id


class JobFailedError(Exception):
    """An interactive job raised (answered 500); ``GET /jobs/<job_id>`` shows its traceback."""

    def __init__(self, job_id: str, error: str) -> None:
        last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        super().__init__(f"prediction job {job_id} failed: {last}; see GET /jobs/{job_id}")
        self.job_id = job_id


@dataclass(frozen=True)
class PredictCall:
    """A parsed /predict body."""

    tasks: list[Mapping[str, Any]]
    schema: SegmentationSchema
    context: Mapping[str, Any] | None
    project: int | None

    @property
    def interactive(self) -> bool:
        """One task with an interactive context: an annotator is waiting."""
        return len(self.tasks) == 1 and bool(self.context)


def parse_predict_call(payload: Any, max_tasks: int | None = None) -> PredictCall:
    """Check a /predict body (tasks, label_config, params.context) and parse its labeling config.

    Raises:
        PayloadTooLargeError: more than ``max_tasks`` tasks (``MAX_PREDICT_TASKS``).
        PayloadError: with a message saying what is missing or wrong.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("expected a JSON object with 'tasks' and 'label_config'")
    tasks = payload.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise PayloadError("expected 'tasks' to be a non-empty list of Label Studio tasks")
    if max_tasks is not None and len(tasks) > max_tasks:
        raise PayloadTooLargeError(
            f"this /predict call carries {len(tasks)} tasks; at most MAX_PREDICT_TASKS={max_tasks} are "
            "accepted per call: select fewer tasks, or pre-annotate the project with "
            "`python -m backend preannotate`"
        )
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise PayloadError(f"expected tasks[{position}] to be an object with a 'data' object")
        if not isinstance(task.get("id"), int):
            raise PayloadError(
                f"expected tasks[{position}].id to be an integer task id, got {task.get('id')!r}"
            )
        try:
            parse_id(task["id"], f"tasks[{position}].id")
        except IdError as exc:
            raise PayloadError(str(exc)) from None
    config = payload.get("label_config")
    if not isinstance(config, str):
        raise PayloadError("expected 'label_config' (the project's labeling config XML) in the request")
    try:
        schema = cached_label_config(config)
    except LabelConfigError as exc:
        raise PayloadError(f"the labeling config cannot be used by the CoReS backend: {exc}") from exc
    params = payload.get("params")
    context = params.get("context") if isinstance(params, Mapping) else None
    project = project_id(payload.get("project")) or project_id(tasks[0].get("project"))
    return PredictCall(
        tasks=tasks, schema=schema, context=context if isinstance(context, Mapping) else None, project=project
    )


class Dispatcher:
    """Runs /predict calls against the queues (see the module docstring). One per web app; thread-safe.

    Args:
        model_version: returns the version served now to a project (None: no project); read once per
            call, sent to the jobs (which load and answer with that version).
    """

    def __init__(
        self,
        settings: Settings,
        connection: redis.Redis,
        metrics: MetricsStore,
        model_version: Callable[[int | None], str],
    ):
        self.settings = settings
        self.connection = connection
        self.metrics = metrics
        self.current_version = model_version

    def predict(self, call: PredictCall) -> dict[str, Any]:
        """Answer a parsed /predict call: ``{"results": [...], "model_version": ...}``.

        Raises:
            queues.QueueFull, queues.QueueUnavailableError, InteractiveTimeoutError, JobFailedError.
        """
        version = self.current_version(call.project)
        slots: list[Any] = [None] * len(call.tasks)
        inputs: list[tuple[int, TaskInput]] = []
        codes: Counter[str] = Counter()
        unqueried: list[tuple[int, str]] = []  # images opened without a query: warmed for the first one
        for i, task in enumerate(call.tasks):
            prompts: list[dict[str, Any]] = []
            image: str | None = None
            try:
                image = resolve_image_url(task, call.schema)
                prompts = interactive_prompts(call.context, call.schema) if call.interactive else []
                query = self._query(task, call, bool(prompts))
            except TaskError as exc:
                if exc.code == "missing_query" and not prompts and image is not None:
                    unqueried.append((int(task["id"]), image))
                slots[i] = error_element(exc.to_json(task["id"]), version)
                codes[exc.code] += 1
                if sum(codes.values()) <= self.settings.max_task_log_lines:
                    logger.info("task %s: %s", task["id"], exc)
                continue
            task_input = TaskInput(id=int(task["id"]), image=image, query=query, prompts=tuple(prompts))
            inputs.append((i, task_input))
        request_warm(self.connection, self.settings, unqueried, version=version, project=call.project)
        if codes:
            for code, count in codes.items():  # one Redis call per code, not per task
                self.metrics.incr("task_errors_total", {"code": code}, count)
            if sum(codes.values()) > self.settings.max_task_log_lines:
                logger.info(
                    "%d of %d tasks refused (%s); the first %d are logged above (MAX_TASK_LOG_LINES)",
                    sum(codes.values()),
                    len(call.tasks),
                    ", ".join(f"{code}: {count}" for code, count in codes.most_common()),
                    self.settings.max_task_log_lines,
                )
        if call.interactive:
            answer = self._interactive(call, slots, inputs, version)
        else:
            answer = self._batch(call, slots, inputs, version)
        outcomes = Counter(
            "deferred" if slot == [] else "error" if "error" in slot else "predicted"
            for slot in answer["results"]
        )
        for outcome, count in outcomes.items():  # one Redis call per outcome, not per task
            self.metrics.incr("tasks_total", {"outcome": outcome}, count)
        return answer

    def _query(self, task: Mapping[str, Any], call: PredictCall, clicked: bool) -> str:
        """The task's query; for clicks without a prompt text, the task's last query (``click_queries``)."""
        try:
            return resolve_query(task, call.schema, call.context if call.interactive else None)
        except TaskError as exc:
            if not clicked or exc.code != "missing_query":
                raise
        return last_query(self.connection, call.project, int(task["id"]))

    def _request(
        self, call: PredictCall, tasks: Sequence[TaskInput], *, kind: str, claim: str | None, version: str
    ) -> PredictRequest:
        return PredictRequest(
            tasks=tuple(tasks),
            schema=call.schema,
            model_version=version,
            kind=kind,
            level_labels=self.settings.level_labels,
            project=call.project,
            write_back=kind == "bulk",
            claim_key=claim,
        )

    def _interactive(
        self, call: PredictCall, slots: list[Any], inputs: list[tuple[int, TaskInput]], version: str
    ) -> dict[str, Any]:
        if not inputs:
            return {"results": [_interactive_slot(slots[0])], "model_version": version}
        job_id = uuid.uuid4().hex
        request = self._request(call, [inputs[0][1]], kind="interactive", claim=None, version=version)
        deadline = time.monotonic() + self.settings.predict_deadline
        queues.enqueue(
            self.connection,
            self.settings,
            queues.INTERACTIVE,
            queues.PREDICT_JOB,
            request.to_json(),
            job_id=job_id,
            ttl=queues.interactive_ttl(self.settings),
            description=f"interactive predict task {inputs[0][1].id}",
        )
        outcome = queues.wait_for_outcomes(self.connection, [job_id], deadline, block_s=_BLOCK_S).get(job_id)
        if outcome is None:
            self._cancel_if_queued(job_id)
            raise InteractiveTimeoutError(job_id, self.settings.predict_deadline)
        value, error = outcome
        if error is not None or not isinstance(value, Mapping):
            raise JobFailedError(job_id, error or "the job returned no result")
        return {
            "results": [_interactive_slot(value["results"][0])],
            "model_version": value.get("model_version", version),
        }

    def _batch(
        self, call: PredictCall, slots: list[Any], inputs: list[tuple[int, TaskInput]], version: str
    ) -> dict[str, Any]:
        if inputs:
            deadline = time.monotonic() + self.settings.predict_deadline
            jobs = self._enqueue_bulk(call, slots, inputs, version)
            finished = queues.wait_for_outcomes(self.connection, list(jobs), deadline, block_s=_BLOCK_S)
            for job_id in jobs:
                if job_id not in finished:
                    with queues.redis_errors(self.connection):
                        deliverer = abandon_claim(self.connection, claim_key(job_id))
                    if deliverer is Deliverer.WEB:
                        grace = time.monotonic() + HANDOFF_GRACE_S
                        finished.update(queues.wait_for_outcomes(self.connection, [job_id], grace))
                for i in jobs[job_id]:
                    slots[i] = []  # delivered later by the job, unless filled from its result below
                if job_id in finished:
                    self._fill(job_id, finished[job_id], jobs[job_id], slots, version)
        return {"results": slots, "model_version": _answer_version(slots, version)}

    def _enqueue_bulk(
        self, call: PredictCall, slots: list[Any], inputs: list[tuple[int, TaskInput]], version: str
    ) -> dict[str, list[int]]:
        """Enqueue the tasks in as many jobs as the queue has room for; returns job id -> task positions."""
        free = queues.room(self.connection, self.settings, queues.BULK)
        if free == 0:
            raise queues.QueueFull(queues.BULK, self.settings.max_queued, self.settings.max_queued)
        n_jobs = min(math.ceil(len(inputs) / self.settings.predict_batch_size), free)
        size = math.ceil(len(inputs) / n_jobs)
        jobs: dict[str, list[int]] = {}
        for start in range(0, len(inputs), size):
            chunk = inputs[start : start + size]
            job_id = uuid.uuid4().hex
            with queues.redis_errors(self.connection):
                claim = open_claim(self.connection, job_id, self.settings.predict_deadline)
            request = self._request(
                call, [task for _, task in chunk], kind="bulk", claim=claim, version=version
            )
            try:
                queues.enqueue(
                    self.connection,
                    self.settings,
                    queues.BULK,
                    queues.PREDICT_JOB,
                    request.to_json(),
                    job_id=job_id,
                    description=f"batch predict {len(chunk)} tasks",
                )
            except queues.QueueFull:
                self.connection.delete(claim)
                if not jobs:
                    raise
                logger.warning("bulk queue filled up mid-batch: %d tasks not queued", len(inputs) - start)
                for i, task in inputs[start:]:
                    error = TaskError(
                        "queue_full", "the bulk queue is full; retrieve predictions again later"
                    )
                    slots[i] = error_element(error.to_json(task.id), version)
                break
            jobs[job_id] = [i for i, _ in chunk]
        logger.info("batch of %d tasks queued as %d bulk jobs", len(inputs), len(jobs))
        return jobs

    def _fill(
        self, job_id: str, outcome: queues.Outcome, positions: list[int], slots: list[Any], version: str
    ) -> None:
        value, error = outcome
        if error is not None or not isinstance(value, Mapping):
            failure = TaskError(
                "job_failed", f"the prediction job failed; see GET /jobs/{job_id}", job=job_id
            )
            for i in positions:
                slots[i] = error_element(failure.to_json(), version)
            return
        if value.get("delivered_by") == Deliverer.JOB.value:
            return  # the job wrote its predictions to Label Studio: answering them too would double them
        for i, result in zip(positions, value["results"], strict=True):
            slots[i] = result

    def _cancel_if_queued(self, job_id: str) -> None:
        job = queues.fetch_job(self.connection, job_id)
        if job is not None and job.is_queued:
            job.cancel()
            logger.info("interactive job %s cancelled after the deadline", job_id)


def _answer_version(slots: Sequence[Any], version: str) -> str:
    """The ``model_version`` of a batch answer: the version that produced its predictions when they all
    agree (a worker may have switched versions since the call began), else the one served at the call."""
    produced = {slot.get("model_version") for slot in slots if isinstance(slot, Mapping) and "result" in slot}
    return str(produced.pop()) if len(produced) == 1 and None not in produced else version


def _interactive_slot(slot: Mapping[str, Any]) -> dict[str, Any]:
    """An interactive answer element: errors get ``result: []`` so the editor gets a usable (empty)
    suggestion; Label Studio never stores interactive answers, so this stores nothing."""
    if "result" in slot:
        return dict(slot)
    return {"result": [], "score": 0.0, **slot}
