"""``python -m backend train|versions ...``: fine-tune on the corrections; inspect and choose model versions.

::

    train [--project ID] [--min-correction X] [--since T] [--until T] [--steps N] [--epochs E] [--lr LR]
          [--val-fraction F] [--min-samples N] [--seed S] [--wait]
    versions list [--json]
    versions current [--json]
    versions pin NAME
    versions unpin
    versions rollback

``train`` enqueues one fine-tune job on the ``train`` queue (or answers the id of the one already queued or
running for that project) and prints ``{"job", "status"}``; ``--wait`` waits for it and prints its result.
Without ``REDIS_URL`` it starts an embedded Redis and worker and always waits.

``versions`` reads and moves ``MODEL_DIR/versions/current`` (no Redis needed): ``pin NAME`` serves NAME and
keeps later training runs from replacing it; ``unpin`` lets the next published version become current;
``rollback`` serves the parent of the current version (pinned). ``CORES_MODEL_VERSION``, when set, overrides
the pointer in every process that has it. Workers switch before their next job; the web answers the new
version at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from backend.arg_types import fraction
from backend.settings import Settings, SettingsError
from backend.version_store import PIN_ENV, VersionError, VersionStore

EXIT_USAGE = 2
_POLL_S = 1.0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def train_parser() -> argparse.ArgumentParser:
    """The ``train`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend train",
        description="Enqueue one fine-tune of the served model version on the logged corrections (train "
        "queue). A second request while one is queued or running for the same project answers that job.",
    )
    parser.add_argument("--project", type=int, default=None, help="Label Studio project (default: all)")
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
        type=_positive_int,
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
        type=_positive_int,
        default=None,
        help="refuse to train with fewer exported samples (default MIN_TRAIN_SAMPLES)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, order and LoRA init")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    return parser


def versions_parser() -> argparse.ArgumentParser:
    """The ``versions`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend versions",
        description="List the model versions under MODEL_DIR/versions and choose the served one.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="every version, oldest first (* marks the served one)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    current = commands.add_parser("current", help="the served version and why")
    current.add_argument("--json", action="store_true", help="as JSON")
    pin = commands.add_parser("pin", help="serve NAME and keep later training runs from replacing it")
    pin.add_argument("name", help="a version name from `versions list`")
    commands.add_parser("unpin", help="let the next published version become current")
    commands.add_parser("rollback", help="serve the parent of the current version (pinned)")
    return parser


def _settings() -> Settings:
    from backend.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def versions_main(argv: Sequence[str]) -> int:
    """Run ``versions ...``; returns the exit status (0 ok, 1 error, 2 usage)."""
    from backend.versions import version_store

    args = versions_parser().parse_args(list(argv))
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = version_store(settings)
    try:
        if args.command == "list":
            return _list(store, settings, as_json=args.json)
        if args.command == "current":
            return _current(store, settings, as_json=args.json)
        if args.command == "pin":
            pointer = store.set_current(args.name, pinned=True, reason="pinned with `versions pin`")
        elif args.command == "unpin":
            pointer = store.unpin()
        else:
            pointer = store.rollback()
    except VersionError as exc:
        print(f"versions {args.command}: {exc}", file=sys.stderr)
        return 1
    state = "pinned" if pointer.pinned else "not pinned"
    print(f"current: {pointer.version} ({state}; was {pointer.previous})")
    if settings.pinned_version:
        print(
            f"note: {PIN_ENV}={settings.pinned_version} is set here and overrides the pointer in every "
            "process that has it",
            file=sys.stderr,
        )
    return 0


def _list(store: VersionStore, settings: Settings, *, as_json: bool) -> int:
    served = store.served(settings.pinned_version).name
    rows = []
    for version in store.list():
        if as_json:
            print(json.dumps({**version.to_json(), "current": version.name == served}))
            continue
        info = version.info
        samples = (info.get("samples") or {}).get("exported")
        after = ((info.get("metrics") or {}).get("after") or {}).get("giou")
        rows.append(
            (
                "*" if version.name == served else " ",
                version.name,
                version.parent or "-",
                (version.created_at or "-")[:19],
                "-" if samples is None else str(samples),
                "-" if after is None else f"{after:.3f}",
            )
        )
    if not as_json:
        header = (" ", "version", "parent", "created (UTC)", "samples", "gIoU after")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _current(store: VersionStore, settings: Settings, *, as_json: bool) -> int:
    served = store.served(settings.pinned_version)
    pointer = store.read_pointer()
    answer = {
        "version": served.name,
        "source": served.source,
        "pinned": served.pinned,
        "checkpoint": served.checkpoint,
        "parent": served.version.parent,
        "pointer": pointer.to_json() if pointer is not None else None,
    }
    if as_json:
        print(json.dumps(answer, indent=1))
    else:
        why = {"pin": f"pinned by {PIN_ENV}", "pointer": f"named by {store.pointer_path}", "base": "base"}
        pinned = " (pinned)" if served.source == "pointer" and served.pinned else ""
        print(f"{served.name}: {why[served.source]}{pinned}; checkpoint {served.checkpoint}")
    return 0


def train_main(argv: Sequence[str]) -> int:
    """Run ``train ...``; returns the exit status (0 ok or queued, 1 job failed or refused, 2 usage)."""
    from backend import queues
    from backend.train_requests import TrainRequest, TrainRequestError, request_training

    args = train_parser().parse_args(list(argv))
    try:
        settings = _settings()
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
            from backend.embedded import embedded_queue
            from backend.versions import ensure_checkpoint

            settings, _ = stack.enter_context(embedded_queue(ensure_checkpoint(settings)))
            wait = True
        connection = queues.connect(settings)
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
    from backend import queues

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
