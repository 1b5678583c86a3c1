"""``GracefulWorker``: rq's non-forking worker with a bounded warm shutdown and job-tagged log lines.

Shutdown (SIGTERM or SIGINT, e.g. ``docker stop``, Ctrl+C, the ``serve`` supervisor):

1. An idle worker exits at once (exit code 0).
2. A busy worker stops taking jobs and lets the running job finish (rq's warm shutdown), then exits 0.
3. If the job is still running ``shutdown_grace`` seconds after the signal (``WORKER_SHUTDOWN_GRACE``),
   or a second signal arrives, the job is interrupted (``ShutdownInterrupt`` is raised inside it) and put
   back at the FRONT of its queue, status ``queued``, for the next worker; then the worker exits 0. Its
   ``job.meta["shutdown_requeues"]`` counts how often that happened. Nothing is lost unless the process
   is killed (SIGKILL) before that: choose the grace below the supervisor's kill timeout
   (docker's ``stop_grace_period``). A job killed that way is found by rq once its heartbeat expires
   and moved to the failed registry (see ``backend.jobs.queues``).

While a job runs, every log record of the process carries its id and queue
(``backend.operations.logs.bind_job``), from rq's "job started" line to its "job finished" line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import timedelta
from types import FrameType, TracebackType
from typing import Any

from rq import SimpleWorker, get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now

from backend.operations.logs import REQUEST_ID_META, bind_job

logger = logging.getLogger(__name__)

REQUEUE_COUNT_META = "shutdown_requeues"
"""``job.meta`` key: how many times shutdowns interrupted and requeued the job."""


class ShutdownInterrupt(BaseException):
    """Raised inside a running job when the worker must stop now; the worker requeues the job.

    A ``BaseException``, so that job code catching ``Exception`` does not swallow it.
    """


class GracefulWorker(SimpleWorker):
    """A ``SimpleWorker`` whose warm shutdown lasts at most ``shutdown_grace`` seconds (None: no bound),
    after which the running job is requeued rather than lost. See the module docstring."""

    def __init__(self, *args: Any, shutdown_grace: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if shutdown_grace is not None and shutdown_grace <= 0:
            raise ValueError(f"shutdown_grace must be > 0 seconds or None, got {shutdown_grace!r}")
        self.shutdown_grace = shutdown_grace
        self._grace_timer: threading.Timer | None = None
        self._grace_expired = threading.Event()
        self._interrupted_job_id: str | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        meta = job.meta if isinstance(job.meta, dict) else {}
        request_id = meta.get(REQUEST_ID_META)
        with bind_job(job.id, job.origin, str(request_id) if request_id else None):
            super().execute_job(job, queue)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First SIGTERM/SIGINT: rq's warm shutdown (raises ``StopRequested`` when idle), plus the grace
        timer when a job is running."""
        super().request_stop(signum, frame)
        job_id = self.get_current_job_id()
        if self.shutdown_grace is None:
            logger.info("shutdown requested: finishing job %s first (no grace limit)", job_id)
            return
        logger.info(
            "shutdown requested: finishing job %s first; it is requeued if still running in %.0f s",
            job_id,
            self.shutdown_grace,
        )
        if self._grace_timer is None:
            self._grace_timer = threading.Timer(self.shutdown_grace, self._end_grace)
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def _end_grace(self) -> None:
        """Timer thread: ask the main thread (where jobs run) to interrupt the job."""
        self._grace_expired.set()
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread by request_force_stop

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """Second signal, or the grace period ended: interrupt the running job so it is requeued.

        Outside a job function (rq is saving a result, say) there is nothing to interrupt: the grace
        timer's signal is ignored, since the warm shutdown ends by itself; an operator's second signal
        gets rq's cold shutdown.
        """
        from_timer = self._grace_expired.is_set()
        self._grace_expired.clear()
        requested = self._shutdown_requested_date
        if not from_timer and requested is not None and now() - requested < timedelta(seconds=1):
            return  # the same stop delivered twice (rq's rule: a second signal counts after 1 s)
        job = get_current_job()  # set only while a job function runs in this (the main) thread
        if job is None:
            if from_timer:
                return
            super().request_force_stop(signum, frame)
            return
        reason = "the shutdown grace period ended" if from_timer else "a second stop signal arrived"
        logger.warning("%s: interrupting job %s to requeue it", reason, job.id)
        self._interrupted_job_id = job.id
        raise ShutdownInterrupt(f"worker {self.name} shut down while job {job.id} ran ({reason})")

    def handle_exception(
        self,
        job: Job,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if job.id == self._interrupted_job_id:
            return  # not a job error: no traceback in the log
        super().handle_exception(job, exc_type, exc_value, tb)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if job.id != self._interrupted_job_id:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
            return
        self._interrupted_job_id = None
        job.meta[REQUEUE_COUNT_META] = int(job.meta.get(REQUEUE_COUNT_META, 0)) + 1
        with self.connection.pipeline() as pipeline:
            pipeline.multi()  # one transaction: out of the started registry and back on the queue
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            queue.enqueue_job(job, pipeline=pipeline, at_front=True)
            pipeline.execute()
        logger.warning(
            "job %s requeued at the front of queue %s (shutdown requeue #%d)",
            job.id,
            queue.name,
            job.meta[REQUEUE_COUNT_META],
        )

    def teardown(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        super().teardown()
