"""The GPU worker: loads the model once per process, then runs queue jobs without forking.

``python -m backend worker`` (``run_worker``) loads the checkpoint before it takes any job and fails fast
(exit code 2, one clear log line) when it cannot. It then runs an rq ``SimpleWorker``, which executes each
job in the worker process itself: a forked child could not use the CUDA context, and reloading 7B
weights per job would take minutes. It listens to ``interactive``, ``bulk``, ``train`` in that order.

Shutdown: SIGTERM or Ctrl+C asks rq for a warm shutdown (the current job finishes, then the worker exits);
a second signal stops it at once. Any number of workers on any number of machines can share one
``REDIS_URL``; each takes one job at a time.

Jobs reach the loaded model through ``get_context()`` / ``get_pipeline()``: a process-level
``ModelHolder``. torch and ``cores.pipeline`` are imported only when the model is loaded, never by the web.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from rq import SimpleWorker

from backend.images import ImageFetcher
from backend.ls_connection import LabelStudioConnection
from backend.queues import QUEUE_NAMES, SERIALIZER, connect, describe_connection, get_queue
from backend.settings import Settings
from backend.versions import ensure_checkpoint, model_version

if TYPE_CHECKING:
    from cores.pipeline import CoresPipeline

logger = logging.getLogger(__name__)

EXIT_BAD_MODEL = 2
EXIT_NO_REDIS = 3
_MAX_FETCHERS = 8


@dataclass
class WorkerContext:
    """What jobs in this process share: settings, the loaded pipeline, its model version, image fetchers."""

    settings: Settings
    pipeline: CoresPipeline
    model_version: str
    _fetchers: OrderedDict[tuple[str | None, str | None], ImageFetcher] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fetcher(self, ls: LabelStudioConnection | None) -> ImageFetcher:
        """An image fetcher for this Label Studio connection (one per connection, kept for reuse)."""
        key = (ls.url, ls.api_key) if ls else (None, None)
        with self._lock:
            found = self._fetchers.get(key)
            if found is None:
                found = ImageFetcher(
                    cache_dir=self.settings.image_cache_dir,
                    label_studio_url=key[0],
                    api_key=key[1],
                    allow_private_networks=self.settings.allow_private_networks,
                    allow_local_files_root=self.settings.local_files_root,
                )
                self._fetchers[key] = found
                while len(self._fetchers) > _MAX_FETCHERS:
                    self._fetchers.popitem(last=False)[1].close()
            self._fetchers.move_to_end(key)
            return found


class ModelHolder:
    """Holds this process's one loaded model. Thread-safe; loading the same checkpoint again is free."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: WorkerContext | None = None

    @property
    def loaded(self) -> bool:
        """True once a model is loaded."""
        return self._context is not None

    def load(self, settings: Settings) -> WorkerContext:
        """Load ``settings.checkpoint`` (unless the same checkpoint/device/dtype is already loaded).

        Raises:
            cores.errors.CoresError: a bad checkpoint, device or dtype.
            OSError: unreadable checkpoint files.
        """
        with self._lock:
            current = self._context
            if current is not None and _model_key(current.settings) == _model_key(settings):
                pipeline = current.pipeline
            else:
                from cores.pipeline import CoresPipeline

                if not settings.checkpoint:
                    raise ValueError("no checkpoint configured (CORES_CHECKPOINT)")
                logger.info(
                    "loading CoReS checkpoint %s (device=%s, dtype=%s)",
                    settings.checkpoint,
                    settings.device,
                    settings.dtype,
                )
                pipeline = CoresPipeline.from_pretrained(
                    settings.checkpoint, device=settings.device, dtype=settings.dtype
                )
                logger.info("model loaded on %s", pipeline.device)
            self._context = WorkerContext(
                settings=settings, pipeline=pipeline, model_version=model_version(settings)
            )
            return self._context

    def get(self) -> WorkerContext:
        """The loaded context; loads from the environment first if nothing was loaded (with a warning:
        workers should load at start, before taking jobs)."""
        context = self._context
        if context is None:
            logger.warning(
                "a job needs the model before the worker loaded it: loading from the environment now"
            )
            context = self.load(ensure_checkpoint(Settings.from_env()))
        return context


def _model_key(settings: Settings) -> tuple[str | None, str | None, str | None]:
    """What decides whether a loaded model can be reused: checkpoint, device, dtype."""
    return settings.checkpoint, settings.device, settings.dtype


_HOLDER = ModelHolder()


def load_model(settings: Settings) -> WorkerContext:
    """Load the model into this process's holder (see ``ModelHolder.load``)."""
    return _HOLDER.load(settings)


def get_context() -> WorkerContext:
    """This process's worker context (see ``ModelHolder.get``)."""
    return _HOLDER.get()


def get_pipeline() -> CoresPipeline:
    """This process's loaded ``CoresPipeline``."""
    return _HOLDER.get().pipeline


def build_worker(
    connection: redis.Redis,
    settings: Settings,
    *,
    queues: Sequence[str] = QUEUE_NAMES,
    name: str | None = None,
) -> SimpleWorker:
    """A non-forking rq worker on ``queues`` (priority order) with the JSON serializer."""
    return SimpleWorker(
        [get_queue(connection, queue) for queue in queues],
        connection=connection,
        name=name,
        serializer=SERIALIZER,
        default_result_ttl=settings.result_ttl,
    )


def run_worker(
    settings: Settings, *, burst: bool = False, queues: Sequence[str] = QUEUE_NAMES, name: str | None = None
) -> int:
    """Load the model, then work on the queues until stopped (or, with ``burst``, until they are empty).

    Returns:
        The process exit code: 0, ``EXIT_BAD_MODEL`` when the checkpoint cannot be loaded,
        ``EXIT_NO_REDIS`` when Redis cannot be reached.
    """
    from cores.errors import CoresError

    connection = connect(settings)
    try:
        connection.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.critical("cannot reach Redis at %s: %s", describe_connection(connection), exc)
        return EXIT_NO_REDIS
    try:
        settings = ensure_checkpoint(settings)
        context = load_model(settings)
    except (CoresError, OSError, ValueError, RuntimeError) as exc:
        logger.critical("cannot load the CoReS checkpoint %r: %s", settings.checkpoint, exc)
        return EXIT_BAD_MODEL
    worker = build_worker(connection, settings, queues=queues, name=name)
    logger.info(
        "worker %s serving %s on %s (queues %s)",
        worker.name,
        context.model_version,
        describe_connection(connection),
        ", ".join(queues),
    )
    worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    return 0
