"""``python -m backend versions ...``: inspect and choose the model version each project is served.

::

    versions list [--json]
    versions current [--project N] [--json]
    versions promote NAME [--project N]
    versions pin NAME [--project N]
    versions unpin [--project N]
    versions rollback [--project N]
    versions reset --project N

``list`` shows each version's held-out scores (gIoU and cIoU per chain level, its parent's gIoU on the
same held-out split, the mean correction ``1 - IoU`` per level) and what the promotion gate decided
(``promoted`` or ``candidate``, with the reason). ``versions`` reads and moves
``MODEL_DIR/versions/current`` and the per-project pointers ``MODEL_DIR/versions/projects/<N>`` (no Redis
needed). A version trained on one project's corrections serves
that project only, when the promotion gate (``backend.versions.gate``) lets it; ``promote NAME`` serves NAME
(a candidate the gate refused too) to every project (``current``; projects with their own
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
from collections.abc import Mapping, Sequence
from typing import Any

from backend.operations.command_line import label_studio_id
from backend.operations.settings import Settings, SettingsError
from backend.operations.version_names import PIN_ENV, VersionError
from backend.versions.store import VersionStore

EXIT_USAGE = 2
_POLL_S = 1.0


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
        metrics = info.get("metrics") or {}
        gate = info.get("gate") or {}
        rows.append(
            (
                "*" if version.name == served else " ",
                version.name,
                version.parent or "-",
                (version.created_at or "-")[:19],
                "-" if samples is None else str(samples),
                level_cell(metrics.get("after"), "giou"),
                level_cell(metrics.get("after"), "ciou"),
                level_cell(metrics.get("before"), "giou"),
                level_cell(metrics.get("after"), "mean_correction"),
                "-" if gate.get("promoted") is None else ("promoted" if gate["promoted"] else "candidate"),
            )
        )
    for project, pointer in store.project_pointers().items():
        if as_json:
            print(json.dumps({"project": project, "pointer": pointer.to_json()}))
    if not as_json:
        header = (
            " ",
            "version",
            "parent",
            "created (UTC)",
            "samples",
            "gIoU per level",
            "cIoU per level",
            "parent's gIoU",
            "correction",
            "gate",
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for version in store.list():
            reason = (version.info.get("gate") or {}).get("reason")
            if reason and not (version.info.get("gate") or {}).get("promoted"):
                print(f"{version.name}: candidate: {reason}")
        for project, pointer in store.project_pointers().items():
            print(f"project {project}: {pointer.version}" + (" (pinned)" if pointer.pinned else ""))
    return 0


def level_cell(scores: Mapping[str, Any] | None, key: str) -> str:
    """``0.412/0.305``: one held-out score per chain level (level 1 first), ``-`` when not scored."""
    levels = (scores or {}).get("levels") or []
    values = [level.get(key) for level in sorted(levels, key=lambda level: int(level["level"]))]
    if not values or any(value is None for value in values):
        return "-"
    return "/".join(f"{value:.3f}" for value in values)


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
