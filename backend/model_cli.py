"""``python -m backend train|versions ...``: fine-tune on the corrections; inspect and choose model versions.

::

    train [--project ID] [--min-correction X] [--since T] [--until T] [--steps N] [--epochs E] [--lr LR]
          [--val-fraction F] [--min-samples N] [--seed S] [--wait]
    versions list [--json]
    versions current [--project N] [--json]
    versions promote NAME [--project N]
    versions pin NAME [--project N]
    versions unpin [--project N]
    versions rollback [--project N]
    versions reset --project N

``train`` enqueues one fine-tune job on the ``train`` queue (or answers the id of the one already queued or
running for that project) and prints ``{"job", "status"}``; ``--wait`` waits for it and prints its result.
Without ``REDIS_URL`` it starts an embedded Redis and worker and always waits.

``versions`` reads and moves ``MODEL_DIR/versions/current`` and the per-project pointers
``MODEL_DIR/versions/projects/<N>`` (no Redis needed). A version trained on one project's corrections serves
that project only; ``promote NAME`` serves NAME to every project (``current``; projects with their own
pointer keep it), ``promote NAME --project N`` to project N. ``pin NAME`` serves NAME and keeps later
training runs from replacing it; ``unpin`` lets the next published version become current; ``rollback``
serves the parent of the current version (pinned); ``reset --project N`` drops project N's own pointer.
``--project N`` applies each to project N's pointer instead of ``current``. ``CORES_MODEL_VERSION``, when
set, overrides the pointers in every process that has it. Workers switch before their next job; the web
answers the new version at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from backend.operations.arg_types import fraction, label_studio_id
from backend.operations.settings import Settings, SettingsError
from backend.versions.store import PIN_ENV, VersionError, VersionStore

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
    promote = commands.add_parser(
        "promote", help="serve NAME to every project (or, with --project, to one project)"
    )
    promote.add_argument("name", help="a version name from `versions list`")
    pin = commands.add_parser("pin", help="serve NAME and keep later training runs from replacing it")
    pin.add_argument("name", help="a version name from `versions list`")
    unpin = commands.add_parser("unpin", help="let the next published version become current")
    rollback = commands.add_parser("rollback", help="serve the parent of the current version (pinned)")
    reset = commands.add_parser("reset", help="drop a project's own pointer: serve it what all are served")
    for command in (current, promote, pin, unpin, rollback):
        command.add_argument(
            "--project", type=label_studio_id, default=None, help="a project's pointer instead of current"
        )
    reset.add_argument("--project", type=label_studio_id, required=True, help="Label Studio project id")
    return parser


def _settings() -> Settings:
    from backend.operations.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def versions_main(argv: Sequence[str]) -> int:
    """Run ``versions ...``; returns the exit status (0 ok, 1 error, 2 usage)."""
    from backend.versions.serving import version_store

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
            return _current(store, settings, args.project, as_json=args.json)
        if args.command == "reset":
            dropped = store.reset(args.project)
            print(
                f"project {args.project}: own pointer "
                + (f"dropped (was {dropped.version})" if dropped else "absent")
                + f"; served {store.served(project=args.project).name}"
            )
            return 0
        project = args.project
        if args.command == "promote":
            scope = "every project" if project is None else f"project {project}"
            pointer = store.set_current(
                args.name, pinned=False, reason=f"promoted to {scope}", project=project
            )
        elif args.command == "pin":
            pointer = store.set_current(
                args.name, pinned=True, reason="pinned with `versions pin`", project=project
            )
        elif args.command == "unpin":
            pointer = store.unpin(project)
        else:
            pointer = store.rollback(project)
    except VersionError as exc:
        print(f"versions {args.command}: {exc}", file=sys.stderr)
        return 1
    state = "pinned" if pointer.pinned else "not pinned"
    where = "current" if project is None else f"project {project}"
    print(f"{where}: {pointer.version} ({state}; was {pointer.previous})")
    if project is None and args.command == "promote":
        own = store.project_pointers()
        if own:
            print(
                "projects with their own version keep it (`versions reset --project N` to change): "
                + ", ".join(f"{p}={pointer_.version}" for p, pointer_ in own.items())
            )
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
    for project, pointer in store.project_pointers().items():
        if as_json:
            print(json.dumps({"project": project, "pointer": pointer.to_json()}))
    if not as_json:
        header = (" ", "version", "parent", "created (UTC)", "samples", "gIoU after")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for project, pointer in store.project_pointers().items():
            print(f"project {project}: {pointer.version}" + (" (pinned)" if pointer.pinned else ""))
    return 0


def _current(store: VersionStore, settings: Settings, project: int | None, *, as_json: bool) -> int:
    served = store.served(settings.pinned_version, project)
    pointer = store.read_pointer(project) if served.source == "project" else store.read_pointer()
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
        why = {
            "pin": f"pinned by {PIN_ENV}",
            "project": f"named by {store.pointer_path_for(project)}",
            "pointer": f"named by {store.pointer_path}",
            "base": "base",
            "request": "asked for",
        }
        pinned = " (pinned)" if served.source in ("pointer", "project") and served.pinned else ""
        print(f"{served.name}: {why[served.source]}{pinned}; checkpoint {served.checkpoint}")
    return 0


def train_main(argv: Sequence[str]) -> int:
    """Run ``train ...``; returns the exit status (0 ok or queued, 1 job failed or refused, 2 usage)."""
    from backend.jobs import queues
    from backend.training.requests import TrainRequest, TrainRequestError, request_training

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
            from backend.jobs.embedded import embedded_queue
            from backend.versions.serving import ensure_checkpoint

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
