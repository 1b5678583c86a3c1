"""The training job: logged corrections -> ReasonSeg export -> LoRA fine-tune -> a new model version.

``train_model`` runs in a worker (``train`` queue, ``TRAIN_TIMEOUT``), enqueued by dotted path through
``backend.training.requests.request_training``. Top to bottom:

1. Select the newest non-deleted revision of every matching annotation in the correction store
   (``MODEL_DIR/corrections.sqlite3``) and leave out the held-out split (``backend.corrections.held_out``,
   ``EVAL_FRACTION``: never trained on); fewer than ``MIN_TRAIN_SAMPLES`` (or the request's
   ``min_samples``) -> ``TrainingError`` before anything is fetched or written.
2. Export them (``backend.corrections.export.export_corrections``) to ``MODEL_DIR/training/<run>/data``,
   and every held-out record of the scope (whatever the request's time window or ``min_correction``) to
   ``.../held_out``, fetching images with the worker's ``ImageFetcher`` (Label Studio credentials from the
   settings or ``/setup``). Fewer usable samples than the minimum (images that cannot be fetched, no query,
   no target mask) -> ``TrainingError`` naming the skip reasons.
3. Free the served model (the fine-tuner loads its own copy), then ``cores.training.finetune`` the version
   served to the project (or to all, without a project) into ``MODEL_DIR/training/<run>/checkpoint``.
4. Score the trained checkpoint and the served version on the held-out samples (``evaluation``: gIoU/cIoU,
   mean correction and correction rate per level) and gate it (``backend.versions.gate``).
5. Publish the checkpoint as ``MODEL_DIR/versions/v<N>-<date>-<time>`` (``backend.versions.store``) with a
   ``version.json`` (parent, samples, ``metrics`` ``before`` = the served version's held-out scores and
   ``after`` = the new one's, ``gate``, the fine-tune report). When the gate passes, a run on one project's
   corrections is served to that project only (its pointer ``versions/projects/<N>`` moves); a run on every
   project's (``python -m backend train`` without ``--project``) moves ``versions/current``. A pin holds
   either; a refused version stays a candidate with the gate's reason. Serving a project's version to every
   project, or a candidate at all, is an operator's ``versions promote NAME``. Then load the served version
   again, so this worker goes back to predicting at once (other workers switch
   before their next job).

A failed run raises: ``GET /jobs/<id>`` shows the traceback and the worker log the message; nothing is
published, and the served version does not change.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rq import get_current_job

from backend.corrections.export import ExportSummary, export_records, select_records
from backend.corrections.held_out import split_records
from backend.corrections.store import CorrectionStore, correction_store_path
from backend.images.fetcher import FetchedImage
from backend.jobs.worker import image_fetcher, refresh_model, unload_model, worker_settings
from backend.label_studio.connection import resolve
from backend.operations.settings import Settings
from backend.training.evaluation import held_out_scores
from backend.training.requests import TrainRequest, describe_scope
from backend.versions.gate import GateDecision, decide
from backend.versions.model_version import ServedVersion
from backend.versions.serving import served_version, version_store

logger = logging.getLogger(__name__)

TRAINING_DIR = "training"
DEFAULT_EPOCHS = 3.0
MAX_WARMUP = 100
_FINETUNE_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "fp32": "fp32"}


class TrainingError(RuntimeError):
    """A training run that cannot start or finish (too few corrections, no store, a failed fine-tune)."""


@dataclass(frozen=True)
class TrainingRun:
    """Where one run keeps its files: ``MODEL_DIR/training/<run_id>/{data,checkpoint}``."""

    run_id: str
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def held_out(self) -> Path:
        return self.root / "held_out"

    @classmethod
    def new(cls, settings: Settings, job_id: str | None) -> TrainingRun:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{(job_id or 'local')[:8]}"
        return cls(run_id, settings.model_dir / TRAINING_DIR / run_id)


def train_model(request: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the served version on the logged corrections and publish the result (module docstring).

    Returns:
        ``{"version", "parent", "current" (whether it is served now), "held_by" (the pin or the gate's
        reason that keeps it from being served, or null), "run_dir", "samples": {"exported", "train",
        "validation" (held-out samples scored)}, "export": {...}, "metrics": {"before" (the served
        version on the held-out split), "after" (the new one)}, "gate": {"promoted", "reason"}, "report",
        "steps", "final_loss", "seconds"}``.

    Raises:
        TrainingError: fewer usable corrections than the minimum, no correction store, or a fine-tune
            that failed (the message says which).
        backend.training.requests.TrainRequestError: a malformed request.
    """
    started = time.perf_counter()
    parsed = TrainRequest.from_json(request)
    job = get_current_job()
    settings = worker_settings()
    minimum = parsed.min_samples or settings.min_train_samples
    parent = served_version(settings, project=parsed.project)
    logger.info("training job %s: %s, from %s", job.id if job else "-", parsed.to_json(), parent.name)
    try:
        return _train(parsed, settings, parent, minimum, job.id if job else None, job, started)
    except TrainingError as exc:
        logger.error("training job %s refused or failed: %s", job.id if job else "-", exc)
        raise
    finally:
        try:
            refresh_model()  # serve again: the published version, or the old one after a failure
        except Exception:
            logger.exception("cannot load the served model version after training")


def _train(
    parsed: TrainRequest,
    settings: Settings,
    parent: ServedVersion,
    minimum: int,
    job_id: str | None,
    job: Any,
    started: float,
) -> dict[str, Any]:
    path = correction_store_path(settings)
    if not path.is_file():
        raise TrainingError(
            f"no corrections recorded yet ({path} does not exist): connect the backend in Label Studio "
            "so that annotation webhooks reach it, then annotate"
        )
    scope = describe_scope(parsed)
    with CorrectionStore(path) as store:
        records = select_records(
            store,
            project=parsed.project,
            since=parsed.since,
            until=parsed.until,
            min_correction=parsed.min_correction,
        )
        fraction = settings.loop.eval_fraction
        records, left_out = split_records(records, fraction)
        _, held = split_records(select_records(store, project=parsed.project), fraction)
        if len(records) < minimum:
            raise TrainingError(
                f"{scope}: {len(records)} correction(s) match (min_correction={parsed.min_correction}, "
                f"since={parsed.since}, until={parsed.until}; {len(left_out)} more are held out for "
                f"evaluation, EVAL_FRACTION={fraction}); training needs at least {minimum} "
                "(MIN_TRAIN_SAMPLES): annotate more tasks or lower the minimum"
            )
        run = TrainingRun.new(settings, job_id)
        connection = job.connection if job is not None else None
        fetcher = image_fetcher(resolve(settings, connection, parsed.project))

        def fetch(ref: str, task_id: int | None) -> FetchedImage:
            return fetcher.fetch(ref, task_id=task_id)

        exported = export_records(records, run.data, images=fetch)
        evaluated = export_records(held, run.held_out, images=fetch) if held else None
    if exported.exported < minimum:
        raise TrainingError(
            f"{scope}: only {exported.exported} of {exported.considered} correction(s) could be exported "
            f"(skipped: {exported.skipped or 'none'}); training needs at least {minimum} "
            f"(MIN_TRAIN_SAMPLES). The export is in {run.data}"
        )

    unload_model()  # the fine-tuner loads its own copy of the checkpoint: give it the memory
    report = _finetune(parsed, settings, parent, run, exported.exported)
    shutil.rmtree(run.checkpoint / "trainer_state", ignore_errors=True)  # resume state, not needed now
    metrics, decision = _evaluate(settings, parent, run, evaluated)
    held_out = 0 if metrics["after"] is None else int(metrics["after"]["count"])
    info: dict[str, Any] = {
        "parent": parent.name,
        "parent_checkpoint": parent.checkpoint,
        "samples": {
            "exported": exported.exported,
            "train": report.get("train_samples"),
            "validation": held_out,
        },
        "metrics": metrics,
        "held_out": {
            "fraction": settings.loop.eval_fraction,
            "records": len(held),
            "export": None if evaluated is None else evaluated.to_json(),
        },
        "gate": decision.to_json(),
        "report": "finetune.json",
        "training": {
            "job": job_id,
            "run_dir": str(run.root),
            "data": str(run.data),
            "request": parsed.to_json(),
            "export": exported.to_json(),
            "steps": report.get("steps"),
            "final_loss": report.get("final_loss"),
            "seconds": report.get("seconds"),
        },
    }
    published = version_store(settings).publish(
        run.checkpoint,
        info,
        pin=settings.pinned_version,
        reason=f"training run {run.run_id} ({scope}): {decision.reason}",
        project=parsed.project,
        refused=None if decision.promote else decision.reason,
    )
    name = published.version.name
    logger.info(
        "training run %s published %s (parent %s, %d samples, gIoU %s -> %s)%s",
        run.run_id,
        name,
        parent.name,
        exported.exported,
        _giou(metrics["before"]),
        _giou(metrics["after"]),
        "" if published.current else f"; not served: {published.held_by}",
    )
    return {
        "version": name,
        "parent": parent.name,
        "current": published.current,
        "held_by": published.held_by,
        "run_dir": str(run.root),
        "samples": info["samples"],
        "export": exported.to_json(),
        "metrics": metrics,
        "gate": decision.to_json(),
        "report": str(Path(published.version.checkpoint) / "finetune.json"),
        "steps": report.get("steps"),
        "final_loss": report.get("final_loss"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _finetune(
    parsed: TrainRequest, settings: Settings, parent: ServedVersion, run: TrainingRun, samples: int
) -> dict[str, Any]:
    """Run ``cores.training.finetune`` on the exported data; errors become ``TrainingError``."""
    from cores.errors import CoresError
    from cores.training.config import FinetuneConfig
    from cores.training.finetune import finetune

    steps = parsed.steps or settings.train_steps
    epochs = parsed.epochs or DEFAULT_EPOCHS
    estimate = steps or math.ceil(epochs * samples)
    options: dict[str, Any] = {
        "steps": steps,
        "epochs": epochs,
        # the held-out split of the log is the evaluation set; the fine-tuner's own split only on request
        "val_fraction": 0.0 if parsed.val_fraction is None else parsed.val_fraction,
        "seed": parsed.seed,
        "warmup": min(MAX_WARMUP, estimate // 10),
        "device": settings.device,
        "dtype": _FINETUNE_DTYPES.get((settings.dtype or "").lower()),
        "progress": False,
    }
    if parsed.lr is not None:
        options["lr"] = parsed.lr
    try:
        cfg = FinetuneConfig(checkpoint=parent.checkpoint, data=run.data, out=run.checkpoint, **options)
        logger.info("fine-tuning %s on %d sample(s) into %s", parent.name, samples, run.checkpoint)
        report = finetune(cfg)
    except (CoresError, ValueError, OSError) as exc:
        shutil.rmtree(run.checkpoint, ignore_errors=True)
        raise TrainingError(f"the fine-tune of {parent.name} failed: {exc}") from exc
    if "stopped_at" in report:  # pragma: no cover - only with stop_after, which training never sets
        raise TrainingError(f"the fine-tune stopped early: {report}")
    return report


def _evaluate(
    settings: Settings, parent: ServedVersion, run: TrainingRun, evaluated: ExportSummary | None
) -> tuple[dict[str, Any], GateDecision]:
    """Score the served version and the trained checkpoint on the exported held-out samples; gate."""
    if evaluated is None or evaluated.exported == 0:
        metrics: dict[str, Any] = {"before": None, "after": None}
        return metrics, decide({"count": 0}, {}, settings.loop)
    try:
        served = held_out_scores(parent.checkpoint, run.held_out, settings)
        trained = held_out_scores(str(run.checkpoint), run.held_out, settings)
    except Exception as exc:
        raise TrainingError(f"scoring on the held-out split ({run.held_out}) failed: {exc}") from exc
    return {"before": served, "after": trained}, decide(trained, served, settings.loop)


def _giou(scores: dict[str, Any] | None) -> str:
    value = (scores or {}).get("giou")
    return "-" if value is None else f"{value:.3f}"
