"""``python -m backend train ...``: fine-tune on the logged corrections.

::

    train [--project ID] [--min-correction X] [--since T] [--until T] [--steps N] [--epochs E] [--lr LR]
          [--val-fraction F] [--min-samples N] [--seed S] [--wait]

``train`` enqueues one fine-tune job on the ``train`` queue (or answers the id of the one already queued or
running for that project) and prints ``{"job", "status"}``; ``--wait`` waits for it and prints its result.
Without ``REDIS_URL`` it starts an embedded Redis and worker and always waits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from backend.operations.command_line import command_settings, fraction, label_studio_id, positive_int
from backend.operations.settings import SettingsError

EXIT_USAGE = 2
_POLL_S = 1.0


def train_parser() -> argparse.ArgumentParser:
    """The ``train`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend train",
        description="Enqueue one fine-tune of the served model version on the logged corrections (train "
        "queue). A second request while one is queued or running for the same project answers that job.",
    )
    parser.add_argument(
        "--project", type=label_studio_id, default=None, help="Label Studio project (default: all)"
    )
    parser.add_argument(
        "--min-correction",
        type=fraction,
        default=None,
        help="only annotations whose final level changed at least this much (1 - IoU; no prediction = 1)",
    )
    parser.add_argument("--since", default=None, help="only revisions at or after this ISO time")
    parser.add_argument("--until", default=None, help="only revisions before this ISO time")
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimizer steps (default TRAIN_STEPS, else 3 epochs)",
    )
    parser.add_argument("--epochs", type=float, default=None, help="passes over the data when no --steps (3)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-4)")
    parser.add_argument(
        "--val-fraction", type=float, default=None, help="share held out for before/after scores (0.1)"
    )
    parser.add_argument(
        "--min-samples",
        type=positive_int,
        default=None,
        help="refuse to train with fewer exported samples (default MIN_TRAIN_SAMPLES)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, order and LoRA init")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    return parser


def train_main(argv: Sequence[str]) -> int:
    """Run ``train ...``; returns the exit status (0 ok or queued, 1 job failed or refused, 2 usage)."""
    from backend.jobs import queues
    from backend.operations import redis_client
    from backend.training.requests import TrainRequest, TrainRequestError, request_training

    args = train_parser().parse_args(list(argv))
    try:
        settings = command_settings()
        request = TrainRequest(
            project=args.project,
            min_correction=args.min_correction,
            since=args.since,
            until=args.until,
            steps=args.steps,
            epochs=args.epochs,
            lr=args.lr,
            val_fraction=args.val_fraction,
            min_samples=args.min_samples,
            seed=args.seed,
            source="cli",
        )
    except (SettingsError, TrainRequestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ExitStack() as stack:
        wait = args.wait
        if settings.redis_url is None:
            from backend.jobs.embedded import embedded_queue
            from backend.versions.serving import ensure_checkpoint

            settings, _ = stack.enter_context(embedded_queue(ensure_checkpoint(settings)))
            wait = True
        connection = redis_client.connect(settings)
        try:
            queued = request_training(connection, settings, request)
        except (queues.QueueFull, queues.QueueUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"job": queued.job_id, "status": "queued" if queued.created else "already_queued"}))
        sys.stdout.flush()
        if not wait:
            return 0
        return _wait(connection, queued.job_id)


def _wait(connection: Any, job_id: str) -> int:
    from backend.jobs import queues

    while True:
        outcome = queues.job_outcome(connection, job_id)
        if outcome is not None:
            value, error = outcome
            if error is not None:
                print(f"training job {job_id} failed:\n{error}", file=sys.stderr)
                return 1
            print(json.dumps(value, indent=1))
            return 0
        time.sleep(_POLL_S)
