"""The GPU worker: loads the model once per process, then runs queue jobs without forking.

``python -m backend worker`` (``run_worker``) loads the checkpoint before it takes any job and fails fast
(exit code 2, one clear log line) when it cannot. It then runs an rq ``SimpleWorker``, which executes each
job in the worker process itself: a forked child could not use the CUDA context, and reloading 7B
weights per job would take minutes. It listens to ``interactive``, ``bulk``, ``warm``, ``train`` in order.

Shutdown: SIGTERM or Ctrl+C asks for a warm shutdown: the current job finishes, then the worker exits 0;
if it still runs ``WORKER_SHUTDOWN_GRACE`` seconds later (or at a second signal) it is interrupted and
requeued at the front of its queue (``backend.jobs.shutdown``). Workers anywhere share one ``REDIS_URL``.

Jobs reach the loaded model through ``get_context()`` / ``get_pipeline()``: a process-level
``ModelHolder``. torch and ``cores.inference.pipeline`` are imported only when the model is loaded, never by
the web.

Model versions: the worker loads the served version (``CORES_MODEL_VERSION``, else the one
``MODEL_DIR/versions/current`` names, else the base ``CORES_CHECKPOINT``; ``backend.versions.serving``). A
prediction job names the version the web promised its project (projects can be served their own
fine-tunes, ``backend.versions.store``); before each job ``CoresWorker`` compares the job's version (or, for
other jobs, the served one) with the loaded one and, when they differ, frees the old model and loads the
new one (or, with captured CUDA graphs, copies its weights in place: ``fast_start``): a published fine-tune,
a pin or a rollback reaches every worker at its next job, without a restart. A switch costs one load.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from rq import Queue
from rq.job import Job

from backend.images.fetcher import ImageFetcher
from backend.jobs.encodings import use_store
from backend.jobs.fast_start import adopt_in_place, build_pipeline, warm_up_pipeline
from backend.jobs.queues import PREDICT_JOB, QUEUE_NAMES, SERIALIZER, get_queue
from backend.jobs.redis_outages import MAINTENANCE_INTERVAL_S, WORKER_TTL_S, OutageTolerantWorker
from backend.jobs.shutdown import GracefulWorker
from backend.label_studio.connection import LabelStudioConnection
from backend.operations.redis_client import connect, describe_connection
from backend.operations.settings import Settings
from backend.versions.model_version import ServedVersion
from backend.versions.serving import ensure_checkpoint, served_version, version_store
from backend.versions.store import VersionStore

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline

logger = logging.getLogger(__name__)

EXIT_BAD_MODEL = 2
EXIT_NO_REDIS = 3
_MAX_FETCHERS = 8


class FetcherPool:
    """Image fetchers by Label Studio connection (one per connection, kept for reuse, at most a few)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fetchers: OrderedDict[tuple[str | None, str | None], ImageFetcher] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ls: LabelStudioConnection | None) -> ImageFetcher:
        """An image fetcher for this Label Studio connection."""
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
                    trusted_label_studio_url=self.settings.label_studio_url,
                )
                self._fetchers[key] = found
                while len(self._fetchers) > _MAX_FETCHERS:
                    self._fetchers.popitem(last=False)[1].close()
            self._fetchers.move_to_end(key)
            return found


@dataclass
class WorkerContext:
    """What jobs in this process share: settings, the loaded pipeline, the version it is, image fetchers.

    Attributes:
        settings: the worker's settings (``checkpoint`` is the base checkpoint, not necessarily the served).
        pipeline: the loaded model.
        model_version: the name of the loaded version; every prediction made with ``pipeline`` carries it.
        checkpoint: the checkpoint ``pipeline`` was loaded from.
        fetchers: image fetchers, kept across model reloads.
    """

    settings: Settings
    pipeline: CoresPipeline
    model_version: str
    checkpoint: str
    fetchers: FetcherPool

    def fetcher(self, ls: LabelStudioConnection | None) -> ImageFetcher:
        """An image fetcher for this Label Studio connection (one per connection, kept for reuse)."""
        return self.fetchers.get(ls)


class ModelHolder:
    """Holds this process's one loaded model and knows which version it is. Thread-safe.

    ``load`` loads the version the settings serve (``backend.versions.serving.served_version``); ``refresh``,
    called by ``CoresWorker`` before every job, reloads when that version changed (the pointer moved, or a
    pin); ``unload`` frees the model (the training job does, to give the fine-tuner the memory).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._context: WorkerContext | None = None
        self._settings: Settings | None = None
        self._fetchers: FetcherPool | None = None
        self._store: tuple[Settings, VersionStore] | None = None

    def _versions(self, settings: Settings) -> VersionStore:
        """The version store of ``settings`` (kept, so its pointer cache saves re-reading per job)."""
        if self._store is None or self._store[0] != settings:
            self._store = (settings, version_store(settings))
        return self._store[1]

    @property
    def loaded(self) -> bool:
        """True while a model is loaded."""
        return self._context is not None

    @property
    def settings(self) -> Settings | None:
        """The settings of the last ``load`` (kept across ``unload``)."""
        return self._settings

    def load(self, settings: Settings, version: str | None = None) -> WorkerContext:
        """Load ``version`` (a name), or the version ``settings`` serve, unless the same
        checkpoint/device/dtype is already loaded. A different one replaces the loaded model, which is freed
        first.

        Raises:
            backend.versions.store.VersionError: no such version, or a pin or pointer names a missing one.
            cores.errors.CoresError: a bad checkpoint, device or dtype.
            OSError: unreadable checkpoint files.
        """
        with self._lock:
            store = self._versions(settings)
            served = (
                ServedVersion(store.get(version), "request", False)
                if version is not None
                else served_version(settings, store)
            )
            current = self._context
            key = (served.checkpoint, settings.device, settings.dtype)
            if self._fetchers is None or self._settings != settings:
                self._fetchers = FetcherPool(settings)
            self._settings = settings
            if (
                current is not None
                and _device_key(current.settings) == key[1:]
                and (current.checkpoint == key[0] or adopt_in_place(current.pipeline, served.checkpoint))
            ):
                pipeline = current.pipeline
            else:
                if current is not None:
                    logger.info(
                        "model version changed: %s -> %s (%s); reloading",
                        current.model_version,
                        served.name,
                        served.source,
                    )
                    current = None  # drop every reference to the old model before freeing it
                    self._free()
                logger.info(
                    "loading CoReS checkpoint %s, model version %s (device=%s, dtype=%s)",
                    served.checkpoint,
                    served.name,
                    settings.device,
                    settings.dtype,
                )
                pipeline = build_pipeline(served.checkpoint, settings)
                logger.info("model %s loaded on %s", served.name, pipeline.device)
            use_store(pipeline, settings)
            self._context = WorkerContext(
                settings=settings,
                pipeline=pipeline,
                model_version=served.name,
                checkpoint=served.checkpoint,
                fetchers=self._fetchers,
            )
            return self._context

    def refresh(self, version: str | None = None) -> WorkerContext | None:
        """Reload when ``version`` (else the served version) is not the loaded one (cheap otherwise: one
        ``stat``). Without settings (nothing was ever loaded) it does nothing.

        Raises:
            as ``load``.
        """
        with self._lock:
            if self._settings is None:
                return None
            current = self._context
            if current is not None:
                store = self._versions(self._settings)
                wanted = store.get(version) if version is not None else served_version(self._settings, store)
                if wanted.name == current.model_version and wanted.checkpoint == current.checkpoint:
                    return current
            return self.load(self._settings, version)

    def unload(self) -> None:
        """Free the loaded model (its GPU memory too); the next ``get``/``refresh`` loads again."""
        with self._lock:
            if self._context is not None:
                logger.info("unloading model %s", self._context.model_version)
                self._free()

    def _free(self) -> None:
        self._context = None
        if "cores.inference.devices" in sys.modules:  # a model was loaded: torch is there to ask
            from cores.inference.devices import release_memory

            release_memory()

    def fetchers(self) -> FetcherPool:
        """The image fetchers (settings from the last ``load``, else the environment)."""
        with self._lock:
            if self._fetchers is None:
                self._fetchers = FetcherPool(self._settings or Settings.from_env())
            return self._fetchers

    def get(self) -> WorkerContext:
        """The loaded context; loads first if nothing is loaded (from the environment when nothing was ever
        loaded, with a warning: workers should load at start, before taking jobs)."""
        context = self._context
        if context is None:
            with self._lock:
                if self._context is not None:
                    return self._context
                if self._settings is None:
                    logger.warning(
                        "a job needs the model before the worker loaded it: loading from the environment now"
                    )
                    return self.load(ensure_checkpoint(Settings.from_env()))
                return self.load(self._settings)
        return context


def _device_key(settings: Settings) -> tuple[str | None, str | None]:
    """Besides the checkpoint, what decides whether a loaded model can be reused: device, dtype."""
    return settings.device, settings.dtype


_HOLDER = ModelHolder()


def load_model(settings: Settings) -> WorkerContext:
    """Load the served model version into this process's holder (see ``ModelHolder.load``)."""
    return _HOLDER.load(settings)


def refresh_model(version: str | None = None) -> WorkerContext | None:
    """Reload if ``version`` (else the served version) is not the loaded one (see ``ModelHolder.refresh``)."""
    return _HOLDER.refresh(version)


def unload_model() -> None:
    """Free this process's model (see ``ModelHolder.unload``)."""
    _HOLDER.unload()


def worker_settings() -> Settings:
    """The settings this process's model was loaded with, else the environment's."""
    return _HOLDER.settings or ensure_checkpoint(Settings.from_env())


def image_fetcher(ls: LabelStudioConnection | None) -> ImageFetcher:
    """This process's image fetcher for a Label Studio connection (shared with prediction jobs)."""
    return _HOLDER.fetchers().get(ls)


def get_context() -> WorkerContext:
    """This process's worker context (see ``ModelHolder.get``)."""
    return _HOLDER.get()


def serving_context(version: str | None = None) -> WorkerContext:
    """The context with ``version`` (else the version served now) loaded: reloads first when needed
    (``ModelHolder.refresh``). ``CoresWorker`` already refreshes before each job; jobs call this once at
    their start too, so that a job run by any worker uses the version it asks for, and never switches
    models midway.

    Raises:
        as ``ModelHolder.load``: the version cannot be loaded (``VersionError`` when it does not exist).
    """
    _HOLDER.refresh(version)
    return _HOLDER.get()


def get_pipeline() -> CoresPipeline:
    """This process's loaded ``CoresPipeline``."""
    return _HOLDER.get().pipeline


class CoresWorker(OutageTolerantWorker, GracefulWorker):
    """rq's non-forking worker that, before each job, loads the model version the job needs when another
    one is loaded (a published fine-tune, ``versions pin``/``rollback``, a project's own version): workers
    switch versions between jobs, without a restart. A failed reload is logged and the job runs anyway (it
    fails with the loading error). Redis outages are ridden out (``backend.jobs.redis_outages``)."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        version = requested_version(job)
        try:
            refresh_model(version)
        except Exception:  # the model cannot be reloaded: log it, let the job report its own failure
            logger.exception("cannot switch to model version %s before job %s", version or "(served)", job.id)
        super().execute_job(job, queue)


def requested_version(job: Job) -> str | None:
    """The model version a prediction job asks for (its request's ``model_version``), else None."""
    try:
        if job.func_name != PREDICT_JOB or not job.args or not isinstance(job.args[0], dict):
            return None
    except Exception:  # an unreadable job: let rq report it
        return None
    version = job.args[0].get("model_version")
    return version if isinstance(version, str) and version else None


def build_worker(
    connection: redis.Redis,
    settings: Settings,
    *,
    queues: Sequence[str] = QUEUE_NAMES,
    name: str | None = None,
) -> CoresWorker:
    """A non-forking rq worker (``CoresWorker``) on ``queues`` (priority order) with the JSON serializer."""
    return CoresWorker(
        [get_queue(connection, queue) for queue in queues],
        connection=connection,
        name=name,
        serializer=SERIALIZER,
        default_result_ttl=settings.result_ttl,
        shutdown_grace=settings.shutdown_grace,
        worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
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
        warm_up_pipeline(context.pipeline)  # before the worker registers: no request waits on a capture
    except (CoresError, OSError, ValueError, RuntimeError) as exc:  # VersionError is a ValueError
        logger.critical(
            "cannot load the CoReS checkpoint of the served model version (base %r): %s",
            settings.checkpoint,
            exc,
        )
        return EXIT_BAD_MODEL
    worker = build_worker(connection, settings, queues=queues, name=name)
    logger.info(
        "worker %s serving %s on %s (queues %s)",
        worker.name,
        context.model_version,
        describe_connection(connection),
        ", ".join(queues),
    )
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    except (redis.exceptions.RedisError, OSError) as exc:  # Redis down at shutdown: rq cannot say goodbye
        logger.warning("worker %s stopped while Redis was unreachable: %s", worker.name, exc)
    return 0
