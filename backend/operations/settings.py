"""Backend settings read from the environment, validated once, shared by the web, the worker and the CLIs.

Every value has the environment variable named in ``Settings``' attribute docs. ``Settings.from_env``
raises ``SettingsError`` naming the variable, the value it found and what it expected, so a typo in a
deployment fails at start instead of at the first request.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.operations.level_labels import LEVEL_LABELS_ENV, LevelMappingError, parse_level_mapping
from backend.operations.logs import LOG_FORMATS
from backend.operations.loop_settings import LoopSettings, LoopSettingsError
from backend.operations.version_names import PIN_ENV, VersionError, check_name

logger = logging.getLogger(__name__)

MODES = ("answer", "generate")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LS_PREDICT_TIMEOUT_S = 100.0
"""Label Studio's default ``ML_TIMEOUT_PREDICT``: a /predict answer must come well before it."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """An environment variable holds a value the backend cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Backend configuration (environment variable in brackets).

    Attributes:
        checkpoint: CoReS checkpoint folder or hub id [CORES_CHECKPOINT]; None: ``serve``/``worker`` build
            a tiny random demo checkpoint under ``model_dir/tiny-demo`` (masks are random).
        device: torch device for the worker, e.g. ``cuda:0`` [CORES_DEVICE]; None: CUDA if available.
        dtype: ``bfloat16``/``float16``/``float32`` [CORES_DTYPE]; None: bf16 on GPU, fp32 on CPU.
        mode: ``answer`` (one forward pass, batched) or ``generate`` (greedy decoding) [CORES_MODE].
        redis_url: Redis for the job queues [REDIS_URL]; None: ``serve`` starts an embedded Redis.
        model_dir: folder for model files, the demo checkpoint, the image cache and the embedded Redis
            [MODEL_DIR], default ``./models``.
        model_version: overrides the base checkpoint's version, derived from its name [MODEL_VERSION].
        pinned_version: serve this model version (a name from ``python -m backend versions list``) whatever
            ``MODEL_DIR/versions/current`` says [CORES_MODEL_VERSION]; None: the pointer decides.
        label_studio_url: Label Studio base URL, for images and writing predictions [LABEL_STUDIO_URL].
        label_studio_api_key: Label Studio API key (legacy token or personal access token)
            [LABEL_STUDIO_API_KEY].
        basic_auth_user: user name required on every route but /health [BASIC_AUTH_USER].
        basic_auth_pass: its password [BASIC_AUTH_PASS]; both or neither must be set.
        host: address the web server binds [HOST], default ``0.0.0.0``.
        port: web server port [PORT], default 9090.
        predict_deadline: seconds /predict waits for the worker [PREDICT_DEADLINE], default 60; must stay
            below Label Studio's 100 s predict timeout.
        job_timeout: seconds a job may run before the worker kills it [JOB_TIMEOUT], default 600.
        max_queued: bound on jobs waiting in one queue [MAX_QUEUED], default 256; beyond it /predict
            answers 503 with Retry-After.
        result_ttl: seconds finished jobs' results stay in Redis [RESULT_TTL], default 3600.
        failure_ttl: seconds failed jobs (with their traceback) stay in Redis [FAILURE_TTL], default 7 days.
        predict_batch_size: tasks per bulk job and per batched model pass [PREDICT_BATCH_SIZE], default 8.
        level_labels: explicit chain level -> label mapping [CORES_LEVEL_LABELS], e.g. ``1=Context,2=Target``.
        allow_private_networks: let the worker fetch images from private/loopback hosts other than
            Label Studio [ALLOW_PRIVATE_NETWORKS], default false.
        local_files_root: folder whose files ``/data/local-files/?d=`` URLs may be read from directly
            [LOCAL_FILES_DOCUMENT_ROOT]; None: always fetched through Label Studio.
        log_level: logging level [LOG_LEVEL], default INFO.
        log_format: ``text`` or ``json`` (one JSON object per line, with job and request ids) [LOG_FORMAT],
            default text (``backend.operations.logs``).
        shutdown_grace: seconds a stopping worker lets its running job finish before it requeues it
            [WORKER_SHUTDOWN_GRACE], default 90 (keep it below the supervisor's kill timeout).
        workers: web server processes [WORKERS], default 1 (``backend.web.wsgi``).
        threads: threads per web process [THREADS], default 8 (each waiting /predict holds one).
        min_train_samples: a training job refuses to start with fewer exported corrections
            [MIN_TRAIN_SAMPLES], default 20.
        train_steps: optimizer steps of a training run [TRAIN_STEPS]; None: 3 epochs over the corrections.
        train_timeout: seconds a training job may run before the worker kills it [TRAIN_TIMEOUT],
            default 6 h.
        prediction_memory_ttl: seconds the worker's record of what it predicted per task stays in Redis
            (``backend.corrections.prediction_memory``; the correction log reads it when Label Studio's
            webhook does not carry the prediction) [PREDICTION_MEMORY_TTL], default 7 days; 0 turns it off.
        prediction_memory_max_tasks: tasks the prediction memory keeps at most, the least recently
            predicted dropped first [PREDICTION_MEMORY_MAX_TASKS], default 100000.
        prediction_memory_max_entry_bytes: a remembered prediction larger than this (compressed) is not
            kept [PREDICTION_MEMORY_MAX_ENTRY_BYTES], default 262144.
        webhook_secret: the secret ``/webhook`` requests prove they come from Label Studio with
            (``backend.label_studio.webhook_secret``) [WEBHOOK_SECRET]; None: generated once into
            ``MODEL_DIR/webhook-secret``.
        max_request_bytes: largest request body the web reads; larger ones are answered 413
            [MAX_REQUEST_BYTES], default 32 MiB.
        max_predict_tasks: most tasks one /predict call may carry (413 beyond) [MAX_PREDICT_TASKS],
            default 1000.
        max_mask_pixels: largest brush mask (``original_width * original_height``) a webhook's region may
            declare; checked before decoding [MAX_MASK_PIXELS], default 25000000. One webhook decodes at
            most 8 times this in all.
        label_config_cache_bytes: bound of the parsed labeling-config cache, in bytes of config text
            [LABEL_CONFIG_CACHE_BYTES], default 8 MiB.
        max_task_log_lines: per /predict call, tasks whose errors are logged one line each; the rest are
            summed up in one line [MAX_TASK_LOG_LINES], default 20.
        max_connections: open connections per web process [MAX_CONNECTIONS], default 1000.
        max_header_bytes: largest request line plus headers the web reads [MAX_HEADER_BYTES], default 64 KiB.
        encoding_store_bytes: bound of the image encodings kept under ``MODEL_DIR/cache/encodings``
            [ENCODING_STORE_BYTES], default 20 GiB; 0 turns the store off.
        warm_encoders: /predict for a task without a query queues a warm job [WARM_ENCODERS], default on.
        loop: the held-out split and the promotion gate (``backend.operations.loop_settings``).
    """

    checkpoint: str | None = None
    device: str | None = None
    dtype: str | None = None
    mode: str = "answer"
    redis_url: str | None = None
    model_dir: Path = Path("models")
    model_version: str | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    host: str = "0.0.0.0"
    port: int = 9090
    predict_deadline: float = 60.0
    job_timeout: int = 600
    max_queued: int = 256
    result_ttl: int = 3600
    failure_ttl: int = 7 * 24 * 3600
    predict_batch_size: int = 8
    level_labels: Mapping[int, str] = field(default_factory=dict)
    allow_private_networks: bool = False
    local_files_root: Path | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    shutdown_grace: float = 90.0
    workers: int = 1
    threads: int = 8
    pinned_version: str | None = None
    min_train_samples: int = 20
    train_steps: int | None = None
    train_timeout: int = 6 * 3600
    prediction_memory_ttl: int = 7 * 24 * 3600
    prediction_memory_max_tasks: int = 100_000
    prediction_memory_max_entry_bytes: int = 256 * 1024
    webhook_secret: str | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    max_predict_tasks: int = 1000
    max_mask_pixels: int = 25_000_000
    label_config_cache_bytes: int = 8 * 1024 * 1024
    max_task_log_lines: int = 20
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024
    encoding_store_bytes: int = 20 * 2**30
    warm_encoders: bool = True
    loop: LoopSettings = field(default_factory=LoopSettings)

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "CORES_MODE", self.mode, f"one of {', '.join(MODES)}")
        _check(
            0 < self.predict_deadline < LS_PREDICT_TIMEOUT_S,
            "PREDICT_DEADLINE",
            self.predict_deadline,
            f"seconds above 0 and below Label Studio's {LS_PREDICT_TIMEOUT_S:.0f} s predict timeout",
        )
        _check(1 <= self.port <= 65535, "PORT", self.port, "a port number 1..65535")
        for name, value in (
            ("JOB_TIMEOUT", self.job_timeout),
            ("MAX_QUEUED", self.max_queued),
            ("RESULT_TTL", self.result_ttl),
            ("FAILURE_TTL", self.failure_ttl),
            ("PREDICT_BATCH_SIZE", self.predict_batch_size),
            ("WORKERS", self.workers),
            ("THREADS", self.threads),
            ("MIN_TRAIN_SAMPLES", self.min_train_samples),
            ("TRAIN_TIMEOUT", self.train_timeout),
            ("TRAIN_STEPS", self.train_steps if self.train_steps is not None else 1),
            ("PREDICTION_MEMORY_MAX_TASKS", self.prediction_memory_max_tasks),
            ("PREDICTION_MEMORY_MAX_ENTRY_BYTES", self.prediction_memory_max_entry_bytes),
            ("MAX_REQUEST_BYTES", self.max_request_bytes),
            ("MAX_PREDICT_TASKS", self.max_predict_tasks),
            ("MAX_MASK_PIXELS", self.max_mask_pixels),
            ("LABEL_CONFIG_CACHE_BYTES", self.label_config_cache_bytes),
            ("MAX_TASK_LOG_LINES", self.max_task_log_lines),
            ("MAX_CONNECTIONS", self.max_connections),
            ("MAX_HEADER_BYTES", self.max_header_bytes),
        ):
            _check(value >= 1, name, value, "an integer >= 1")
        store_bytes = self.encoding_store_bytes
        _check(store_bytes >= 0, "ENCODING_STORE_BYTES", store_bytes, "bytes >= 0")
        _check(
            self.prediction_memory_ttl >= 0,
            "PREDICTION_MEMORY_TTL",
            self.prediction_memory_ttl,
            "seconds >= 0 (0 turns the prediction memory off)",
        )
        _check(self.log_level in LOG_LEVELS, "LOG_LEVEL", self.log_level, f"one of {', '.join(LOG_LEVELS)}")
        _check(
            self.log_format in LOG_FORMATS, "LOG_FORMAT", self.log_format, f"one of {', '.join(LOG_FORMATS)}"
        )
        _check(self.shutdown_grace > 0, "WORKER_SHUTDOWN_GRACE", self.shutdown_grace, "seconds above 0")
        _check(
            (self.basic_auth_user is None) == (self.basic_auth_pass is None),
            "BASIC_AUTH_USER/BASIC_AUTH_PASS",
            "only one of them",
            "both set (auth on) or both unset (auth off)",
        )
        if self.pinned_version is not None:
            try:
                check_name(self.pinned_version)
            except VersionError as exc:
                raise SettingsError(f"{PIN_ENV}: {exc}") from None
        if self.label_studio_url is not None:
            from backend.images.url_safety import UnsafeUrlError, parse_fetch_url

            try:
                parse_fetch_url(self.label_studio_url)
            except UnsafeUrlError as exc:
                raise SettingsError(
                    f"LABEL_STUDIO_URL must be a plain http:// or https:// URL, got "
                    f"{self.label_studio_url!r}: {exc}"
                ) from None
        if self.webhook_secret is not None:
            _check(
                len(self.webhook_secret) >= 16 and self.webhook_secret.isascii(),
                "WEBHOOK_SECRET",
                "(hidden)",
                "at least 16 ASCII characters",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``); empty variables count as unset.

        Raises:
            SettingsError: a variable that does not parse or is out of range.
        """
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        def integer(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {raw!r}") from None

        def number(name: str, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None

        def flag(name: str) -> bool:
            raw = (text(name) or "").lower()
            if raw in _TRUE:
                return True
            if raw in _FALSE:
                return False
            raise SettingsError(f"{name} must be true/false (1/0, yes/no, on/off), got {env.get(name)!r}")

        try:
            level_labels = parse_level_mapping(text(LEVEL_LABELS_ENV))
        except LevelMappingError as exc:
            raise SettingsError(f"{LEVEL_LABELS_ENV}: {exc}") from exc
        local_root = text("LOCAL_FILES_DOCUMENT_ROOT")
        values: dict[str, Any] = {
            "checkpoint": text("CORES_CHECKPOINT"),
            "device": text("CORES_DEVICE"),
            "dtype": text("CORES_DTYPE"),
            "mode": (text("CORES_MODE") or "answer").lower(),
            "redis_url": text("REDIS_URL"),
            "model_dir": Path(text("MODEL_DIR") or "models"),
            "model_version": text("MODEL_VERSION"),
            "label_studio_url": text("LABEL_STUDIO_URL"),
            "label_studio_api_key": text("LABEL_STUDIO_API_KEY"),
            "basic_auth_user": text("BASIC_AUTH_USER"),
            "basic_auth_pass": text("BASIC_AUTH_PASS"),
            "host": text("HOST") or "0.0.0.0",
            "port": integer("PORT", 9090),
            "predict_deadline": number("PREDICT_DEADLINE", 60.0),
            "job_timeout": integer("JOB_TIMEOUT", 600),
            "max_queued": integer("MAX_QUEUED", 256),
            "result_ttl": integer("RESULT_TTL", 3600),
            "failure_ttl": integer("FAILURE_TTL", 7 * 24 * 3600),
            "predict_batch_size": integer("PREDICT_BATCH_SIZE", 8),
            "level_labels": level_labels,
            "allow_private_networks": flag("ALLOW_PRIVATE_NETWORKS"),
            "local_files_root": Path(local_root) if local_root else None,
            "log_level": (text("LOG_LEVEL") or "INFO").upper(),
            "log_format": (text("LOG_FORMAT") or "text").lower(),
            "shutdown_grace": number("WORKER_SHUTDOWN_GRACE", 90.0),
            "workers": integer("WORKERS", 1),
            "threads": integer("THREADS", 8),
            "pinned_version": text(PIN_ENV),
            "min_train_samples": integer("MIN_TRAIN_SAMPLES", 20),
            "train_steps": integer("TRAIN_STEPS", 0) if text("TRAIN_STEPS") is not None else None,
            "train_timeout": integer("TRAIN_TIMEOUT", 6 * 3600),
            "prediction_memory_ttl": integer("PREDICTION_MEMORY_TTL", 7 * 24 * 3600),
            "prediction_memory_max_tasks": integer("PREDICTION_MEMORY_MAX_TASKS", 100_000),
            "prediction_memory_max_entry_bytes": integer("PREDICTION_MEMORY_MAX_ENTRY_BYTES", 256 * 1024),
            "webhook_secret": text("WEBHOOK_SECRET"),
            "max_request_bytes": integer("MAX_REQUEST_BYTES", 32 * 1024 * 1024),
            "max_predict_tasks": integer("MAX_PREDICT_TASKS", 1000),
            "max_mask_pixels": integer("MAX_MASK_PIXELS", 25_000_000),
            "label_config_cache_bytes": integer("LABEL_CONFIG_CACHE_BYTES", 8 * 1024 * 1024),
            "max_task_log_lines": integer("MAX_TASK_LOG_LINES", 20),
            "max_connections": integer("MAX_CONNECTIONS", 1000),
            "max_header_bytes": integer("MAX_HEADER_BYTES", 64 * 1024),
            "encoding_store_bytes": integer("ENCODING_STORE_BYTES", 20 * 2**30),
            "warm_encoders": flag("WARM_ENCODERS") if text("WARM_ENCODERS") is not None else True,
        }
        try:
            values["loop"] = LoopSettings.from_env(env)
        except LoopSettingsError as exc:
            raise SettingsError(str(exc)) from None
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some attributes replaced (validated again)."""
        return replace(self, **changes)

    @property
    def image_cache_dir(self) -> Path:
        """Where the worker caches downloaded image bytes (``model_dir/cache/images``)."""
        return self.model_dir / "cache" / "images"

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for child processes)."""
        env = {
            "CORES_MODE": self.mode,
            "MODEL_DIR": str(self.model_dir),
            "HOST": self.host,
            "PORT": str(self.port),
            "PREDICT_DEADLINE": repr(self.predict_deadline),
            "JOB_TIMEOUT": str(self.job_timeout),
            "MAX_QUEUED": str(self.max_queued),
            "RESULT_TTL": str(self.result_ttl),
            "FAILURE_TTL": str(self.failure_ttl),
            "PREDICT_BATCH_SIZE": str(self.predict_batch_size),
            "ALLOW_PRIVATE_NETWORKS": "true" if self.allow_private_networks else "false",
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": self.log_format,
            "WORKER_SHUTDOWN_GRACE": repr(self.shutdown_grace),
            "WORKERS": str(self.workers),
            "THREADS": str(self.threads),
            "MIN_TRAIN_SAMPLES": str(self.min_train_samples),
            "TRAIN_TIMEOUT": str(self.train_timeout),
            "PREDICTION_MEMORY_TTL": str(self.prediction_memory_ttl),
            "PREDICTION_MEMORY_MAX_TASKS": str(self.prediction_memory_max_tasks),
            "PREDICTION_MEMORY_MAX_ENTRY_BYTES": str(self.prediction_memory_max_entry_bytes),
            "MAX_REQUEST_BYTES": str(self.max_request_bytes),
            "MAX_PREDICT_TASKS": str(self.max_predict_tasks),
            "MAX_MASK_PIXELS": str(self.max_mask_pixels),
            "LABEL_CONFIG_CACHE_BYTES": str(self.label_config_cache_bytes),
            "MAX_TASK_LOG_LINES": str(self.max_task_log_lines),
            "MAX_CONNECTIONS": str(self.max_connections),
            "MAX_HEADER_BYTES": str(self.max_header_bytes),
            "ENCODING_STORE_BYTES": str(self.encoding_store_bytes),
            "WARM_ENCODERS": "true" if self.warm_encoders else "false",
        } | self.loop.to_env()
        optional = {
            "CORES_CHECKPOINT": self.checkpoint,
            "CORES_DEVICE": self.device,
            "CORES_DTYPE": self.dtype,
            "REDIS_URL": self.redis_url,
            "MODEL_VERSION": self.model_version,
            PIN_ENV: self.pinned_version,
            "TRAIN_STEPS": str(self.train_steps) if self.train_steps is not None else None,
            "LABEL_STUDIO_URL": self.label_studio_url,
            "LABEL_STUDIO_API_KEY": self.label_studio_api_key,
            "BASIC_AUTH_USER": self.basic_auth_user,
            "BASIC_AUTH_PASS": self.basic_auth_pass,
            "WEBHOOK_SECRET": self.webhook_secret,
            "LOCAL_FILES_DOCUMENT_ROOT": str(self.local_files_root) if self.local_files_root else None,
            LEVEL_LABELS_ENV: (
                json.dumps({str(k): v for k, v in sorted(self.level_labels.items())})
                if self.level_labels
                else None
            ),
        }
        env.update({name: value for name, value in optional.items() if value is not None})
        return env


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise SettingsError(f"{name} must be {expected}, got {value!r}")
