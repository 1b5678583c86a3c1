"""``python -m backend serve|worker|preannotate|warm|corrections``: the backend's command line.

- ``serve [--dev] [--port N]``: the web server (waitress, or Flask's with ``--dev``) on ``PORT``; without
  ``REDIS_URL`` also an embedded Redis and one worker; without ``CORES_CHECKPOINT`` a tiny random demo
  checkpoint (``backend.web.server``).
- ``worker [--burst] [--queues ...] [--name N] [--gpus all|0,1]``: a GPU worker (``backend.jobs.worker``), or
  one per GPU under a supervisor (``backend.jobs.gpus``).
- ``preannotate --project ID [--query Q | --query-field F] [--batch-size N]``: bulk pre-annotation
  (``backend.bulk.preannotate``); without ``REDIS_URL`` it runs its own embedded Redis and worker.
- ``warm --project ID [--batch-size N]``: encode a project's images into the persistent encoding store
  (``backend.bulk.warm_project``); resumable; without ``REDIS_URL`` it runs its own embedded worker.
- ``doctor [--load]``: check the deployment, one OK/WARN/SKIP/FAIL line per check (``backend.doctor``).
- ``corrections list|stats|export|enrich ...``: the correction log tools (``backend.corrections.cli``).
- ``webhooks ensure|secret --project ID``: put this backend's credentials (basic auth, else the project's
  webhook secret) on Label Studio's webhooks to it, or print them (``backend.label_studio.webhook_auth``; the
  web also does it after ``/setup``).
- ``train [--project ID] [--steps N] ...``: enqueue one fine-tune on the corrections
  (``backend.training.cli``).
- ``versions list|current|promote NAME|pin NAME|unpin|rollback|reset [--project N]``: the model versions
  under ``MODEL_DIR/versions``, their held-out scores and gate decisions, and which one each project is
  served.
- ``review --project N [--top K] [--view NAME]``: the tasks most in need of review, lowest review score
  first, with the reasons; optionally a Data Manager tab of them (``backend.review.cli``).
- ``report [--out DIR] [--project N]``: the loop's self-contained HTML report (``backend.report.cli``).

Configuration comes from the environment (``backend.operations.settings``); an invalid value exits with code 2
and a message naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from backend.jobs.queues import QUEUE_NAMES, QueueUnavailableError
from backend.operations.command_line import label_studio_id
from backend.operations.logs import configure_logging
from backend.operations.redis_client import connect
from backend.operations.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m backend`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="CoReS Label Studio ML backend, configured by environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the web server (and, without REDIS_URL, an embedded Redis and a worker)",
        description="Run the backend web server on PORT (default 9090). Without REDIS_URL an embedded Redis "
        "and one worker start too; without CORES_CHECKPOINT a tiny random demo checkpoint is used.",
    )
    serve.add_argument("--dev", action="store_true", help="Flask's development server instead of waitress")
    serve.add_argument("--port", type=int, default=None, help="override PORT")
    serve.add_argument("--host", default=None, help="override HOST (default 0.0.0.0)")

    worker = commands.add_parser(
        "worker",
        help="run a GPU worker (loads the model once, then takes jobs)",
        description="Load CORES_CHECKPOINT once, then run queue jobs in this process (no fork per job), "
        "interactive first, then bulk, then train. SIGTERM finishes the current job, then exits.",
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument(
        "--queues",
        nargs="+",
        choices=QUEUE_NAMES,
        default=list(QUEUE_NAMES),
        help="queues, in priority order",
    )
    worker.add_argument("--name", default=None, help="worker name (default: random)")
    worker.add_argument(
        "--gpus",
        default=None,
        metavar="all|0,1,...",
        help="run one worker process per GPU (named NAME-gpuN; NAME defaults to the host name), "
        "supervised: signals are passed on, crashed workers restarted",
    )

    pre = commands.add_parser(
        "preannotate",
        help="predict every task of a Label Studio project and write the predictions back",
        description="List the project's tasks through the Label Studio API (LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY), skip tasks that already have a prediction of the current model version, "
        "and let the workers write predictions for the others.",
    )
    pre.add_argument("--project", type=label_studio_id, required=True, help="Label Studio project id")
    source = pre.add_mutually_exclusive_group()
    source.add_argument("--query", default=None, help="one query for every task")
    source.add_argument(
        "--query-field",
        default=None,
        help="task data field holding each task's query (default: the TextArea's)",
    )
    pre.add_argument(
        "--batch-size", type=int, default=None, help="tasks per job (default PREDICT_BATCH_SIZE)"
    )
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")

    warm = commands.add_parser(
        "warm",
        help="precompute the image encodings of a Label Studio project into the encoding store",
        description="List the project's tasks through the Label Studio API and let the workers encode their "
        "images (SAM and CLIP) into MODEL_DIR/cache/encodings, skipping images already stored (resumable); "
        "the first query on a warmed image skips both image encoders.",
    )
    warm.add_argument("--project", type=label_studio_id, required=True, help="Label Studio project id")
    warm.add_argument("--batch-size", type=int, default=16, help="images per warm job (default 16)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")

    commands.add_parser(
        "corrections",
        help="inspect and export the corrections log (see `python -m backend corrections --help`)",
        add_help=False,
    )
    doctor = commands.add_parser(
        "doctor",
        help="check Redis, workers, Label Studio, the checkpoint, the GPU and MODEL_DIR",
        description="Check the deployment the environment describes and print one OK/WARN/SKIP/FAIL line "
        "per check; the exit status is 1 when any check failed.",
    )
    doctor.add_argument(
        "--load", action="store_true", help="also load the checkpoint in this process (imports torch; slow)"
    )
    commands.add_parser(
        "train",
        help="fine-tune the served model on the corrections (see `python -m backend train --help`)",
        add_help=False,
    )
    commands.add_parser(
        "webhooks",
        help="put this backend's credentials on the project's Label Studio webhooks, or print them "
        "(`python -m backend webhooks ensure|secret --project ID`)",
        add_help=False,
    )
    commands.add_parser(
        "review",
        help="the tasks most in need of review, with reasons (see `python -m backend review --help`)",
        add_help=False,
    )
    commands.add_parser(
        "report",
        help="write the loop's HTML report (see `python -m backend report --help`)",
        add_help=False,
    )
    commands.add_parser(
        "versions",
        help="list, promote, pin and roll back model versions (see `python -m backend versions --help`)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "corrections":
        from backend.corrections.cli import main as corrections_main

        return corrections_main(args_list[1:])
    if args_list and args_list[0] == "webhooks":
        from backend.label_studio.webhook_auth import main as webhooks_main

        return webhooks_main(args_list[1:])
    if args_list and args_list[0] == "train":
        from backend.training.cli import train_main

        return train_main(args_list[1:])
    if args_list and args_list[0] == "review":
        from backend.review.cli import review_main

        return review_main(args_list[1:])
    if args_list and args_list[0] == "report":
        from backend.report.cli import report_main

        return report_main(args_list[1:])
    if args_list and args_list[0] == "versions":
        from backend.versions.cli import versions_main

        return versions_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        settings = Settings.from_env()
        if args.command == "serve" and (args.port is not None or args.host is not None):
            settings = settings.with_changes(port=args.port or settings.port, host=args.host or settings.host)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "serve":
        from backend.web.server import serve

        return serve(settings, dev=args.dev)
    if args.command == "doctor":
        from backend.doctor import doctor

        return doctor(settings, load=args.load)
    if args.command == "worker" and args.gpus is not None:
        from backend.jobs.gpus import run_gpu_workers

        return run_gpu_workers(args.gpus, name=args.name, queues=args.queues, burst=args.burst)
    if args.command == "worker":
        from backend.jobs.worker import run_worker

        return run_worker(settings, burst=args.burst, queues=args.queues, name=args.name)
    if args.command == "warm":
        return _warm(settings, args)
    return _preannotate(settings, args)


def _warm(settings: Settings, args: argparse.Namespace) -> int:
    from backend.bulk.warm_project import warm_project

    return _over_project(
        settings,
        args,
        lambda run_settings, connection: warm_project(
            run_settings, connection, args.project, batch_size=args.batch_size, progress=not args.no_progress
        ),
        lambda summary: (
            f"{summary.total} tasks, {summary.warmed} images encoded, "
            f"{summary.stored} already stored, {summary.failed} failed"
        ),
    )


def _preannotate(settings: Settings, args: argparse.Namespace) -> int:
    from backend.bulk.preannotate import preannotate

    return _over_project(
        settings,
        args,
        lambda run_settings, connection: preannotate(
            run_settings,
            connection,
            args.project,
            query=args.query,
            query_field=args.query_field,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        ),
        lambda summary: (
            f"{summary.total} tasks, {summary.done} done, "
            f"{summary.skipped} skipped (already predicted), {summary.failed} failed"
        ),
    )


def _over_project(
    settings: Settings,
    args: argparse.Namespace,
    run: Callable[[Settings, Any], Any],
    describe: Callable[[Any], str],
) -> int:
    """A command over one project's tasks (``preannotate``, ``warm``): an embedded Redis and worker when
    ``REDIS_URL`` is unset, one ``failed:`` line per failed task, a summary line; exit 1 if any failed."""
    from backend.bulk.preannotate import PreannotateError
    from backend.jobs.embedded import embedded_queue
    from backend.versions.serving import ensure_checkpoint

    if args.batch_size is not None and args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    with ExitStack() as stack:
        if settings.redis_url is None:
            settings, _ = stack.enter_context(embedded_queue(ensure_checkpoint(settings)))
        try:
            summary = run(settings, connect(settings))
        except (PreannotateError, QueueUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for line in summary.errors:
        print(f"failed: {line}")
    print(f"project {args.project}: {describe(summary)}")
    return 1 if summary.failed else 0
