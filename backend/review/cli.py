"""``python -m backend review --project N [--top K] [--view NAME] [--include-annotated] [--json]``: the
tasks most in need of review, lowest review score first, with the reasons.

Reads each task's newest prediction from Label Studio (``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``, or
the credentials ``/setup`` stored in Redis) and from the workers' prediction memory in Redis
(``REDIS_URL``): Label Studio never stores interactive predictions. ``--view NAME`` also writes them to a
Data Manager tab of that name in the project (``backend.review.views``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import redis

from backend.label_studio.connection import resolve
from backend.operations.command_line import command_settings, label_studio_id, positive_int
from backend.operations.redis_client import connect
from backend.operations.settings import SettingsError
from backend.review.listing import ReviewItem, annotated_tasks, from_label_studio, from_memory, most_in_need
from backend.review.views import ViewError, write_view

EXIT_USAGE = 2


def review_parser() -> argparse.ArgumentParser:
    """The ``review`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend review",
        description="List the tasks of a project most in need of review (lowest review score first).",
    )
    parser.add_argument("--project", type=label_studio_id, required=True, help="Label Studio project id")
    parser.add_argument("--top", type=positive_int, default=20, help="how many tasks (default 20)")
    parser.add_argument("--view", default=None, help="also write them to a Data Manager tab of this title")
    parser.add_argument(
        "--include-annotated", action="store_true", help="keep tasks that already have an annotation"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per task")
    return parser


def review_main(argv: Sequence[str]) -> int:
    """Run ``review``; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = review_parser().parse_args(list(argv))
    try:
        settings = command_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    connection = connect(settings) if settings.redis_url else None
    ls = resolve(settings, connection, args.project)
    remembered: dict[int, ReviewItem] = {}
    if connection is not None:
        try:
            remembered = from_memory(connection, args.project)
        except (redis.exceptions.RedisError, OSError) as exc:
            print(f"warning: cannot read the prediction memory in Redis: {exc}", file=sys.stderr)
    stored: dict[int, ReviewItem] = {}
    skip: set[int] = set()
    client = ls.client() if ls is not None else None
    if client is not None:
        try:
            stored = from_label_studio(client, args.project)
            if not args.include_annotated:
                skip = annotated_tasks(client, args.project)
        except Exception as exc:  # the SDK raises its own ApiError, httpx errors, ...
            print(f"error: cannot read project {args.project} from Label Studio: {exc}", file=sys.stderr)
            return 1
    elif connection is None:
        print(
            "error: nothing to read: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or REDIS_URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    items = most_in_need(stored, remembered, skip=skip, top=args.top)
    for item in items:
        if args.json:
            print(json.dumps(item.to_json()))
            continue
        score = "-" if item.score is None else f"{item.score:.3f}"
        reasons = "; ".join(item.reasons) or "no part below its threshold"
        print(f"task {item.task}  score {score}  {item.model_version}  ({item.source})  {reasons}")
    if not args.json:
        print(f"{len(items)} task(s) of project {args.project} most in need of review, lowest score first")
    if args.view is not None:
        if client is None:
            print(
                "error: --view needs Label Studio (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)", file=sys.stderr
            )
            return EXIT_USAGE
        try:
            view = write_view(client, args.project, args.view, [item.task for item in items])
        except ViewError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"error: Label Studio refused the view: {exc}", file=sys.stderr)
            return 1
        print(
            f"view {view} ({args.view!r}) written to project {args.project}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
