"""``corrections list|stats|export|enrich``: read the correction log from the command line.

::

    corrections list   [--db PATH] [--project ID] [--since T] [--until T] [--min-correction X]
                       [--include-deleted] [--latest-only] [--json]
    corrections stats  [--db PATH] [--project ID]
    corrections export --out DIR [--format reasonseg|coco] [--coco-segmentation rle|polygon]
                       [--db PATH] [--project ID] [--since T] [--until T] [--min-correction X]
                       [--label-studio-url URL] [--api-key KEY] [--local-files-root DIR] [--cache-dir DIR]
    corrections enrich [--db PATH] [--project ID] [--label-studio-url URL] [--api-key KEY]

``--db`` defaults to ``$MODEL_DIR/corrections.sqlite3``; times are ISO 8601 (a time without an offset is
UTC; ``--until`` is exclusive). ``export`` writes a ReasonSeg folder (default) or, with ``--format coco``,
COCO instance segmentation (``backend.corrections.coco``: ``annotations.json`` with RLE or polygon
segmentations, one category per level label, images beside it); it fetches images with
``backend.images.fetcher.ImageFetcher`` (Label Studio URL and API key default to ``LABEL_STUDIO_URL`` /
``LABEL_STUDIO_API_KEY``). Results go to stdout
(JSON, or a table for ``list``); errors to stderr with exit status 1.

``enrich`` fetches, from Label Studio's API, the predictions that records name only by id (Label Studio's
webhooks carry ``annotation.parent_prediction`` and nothing else; the web fetches them itself right after
the webhook, this resolves what it could not) and sets their predicted masks and IoUs
(``backend.corrections.enrich``). Without ``--label-studio-url``/``--api-key`` (or their environment
variables) it uses what Label Studio's ``/setup`` stored in ``REDIS_URL``. It prints a JSON summary and exits
1 when some record could not be resolved (predictions deleted from Label Studio are only reported).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from backend.corrections.export import ExportError, ImageSource, export_corrections, select_records
from backend.corrections.store import CorrectionError, CorrectionRecord, CorrectionStore, default_store_path
from backend.operations.command_line import fraction, label_studio_id

logger = logging.getLogger(__name__)


def _iso_time(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time like 2025-03-01T10:00:00Z, got {text!r}"
        ) from exc
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``corrections`` argument parser (subcommands ``list``, ``stats``, ``export``)."""
    parser = argparse.ArgumentParser(
        prog="python -m backend corrections",
        description="Inspect and export the annotators' corrections log (MODEL_DIR/corrections.sqlite3, "
        "written by the backend's /webhook).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", type=Path, default=None, help="correction store (default: $MODEL_DIR/corrections.sqlite3)"
    )
    common.add_argument(
        "--project", type=label_studio_id, default=None, help="only this Label Studio project id"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    window = argparse.ArgumentParser(add_help=False)
    window.add_argument("--since", type=_iso_time, help="only revisions at or after this ISO time")
    window.add_argument("--until", type=_iso_time, help="only revisions before this ISO time")
    window.add_argument(
        "--min-correction",
        type=fraction,
        default=None,
        help="only records whose final level changed at least this much (1 - IoU; no prediction = 1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", parents=[common, window], help="list stored corrections")
    listing.add_argument("--include-deleted", action="store_true", help="also deleted annotations")
    listing.add_argument("--latest-only", action="store_true", help="newest revision per annotation")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    commands.add_parser("stats", parents=[common], help="counts and per-level agreement, as JSON")

    export = commands.add_parser(
        "export", parents=[common, window], help="write a ReasonSeg folder (or COCO) of the accepted masks"
    )
    export.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    export.add_argument(
        "--format",
        choices=("reasonseg", "coco"),
        default="reasonseg",
        help="reasonseg: <stem>.jpg/.json + manifest.jsonl (default); coco: annotations.json + images",
    )
    export.add_argument(
        "--coco-segmentation",
        choices=("rle", "polygon"),
        default="rle",
        help="COCO segmentation form: rle (exact masks, default) or polygon",
    )
    export.add_argument(
        "--label-studio-url",
        default=os.environ.get("LABEL_STUDIO_URL"),
        help="Label Studio URL for images (default: $LABEL_STUDIO_URL)",
    )
    export.add_argument(
        "--api-key",
        default=os.environ.get("LABEL_STUDIO_API_KEY"),
        help="Label Studio API key (default: $LABEL_STUDIO_API_KEY)",
    )
    export.add_argument(
        "--local-files-root",
        type=Path,
        default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
        help="read /data/local-files/?d= images under this folder from disk "
        "(default: $LOCAL_FILES_DOCUMENT_ROOT)",
    )
    export.add_argument(
        "--cache-dir", type=Path, default=None, help="image cache (default: $MODEL_DIR/cache/images)"
    )
    export.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="allow image hosts on private/loopback addresses other than Label Studio",
    )
    enrich = commands.add_parser(
        "enrich",
        parents=[common],
        help="fetch from Label Studio the predictions records name only by id; set their masks and IoUs",
    )
    enrich.add_argument(
        "--label-studio-url",
        default=os.environ.get("LABEL_STUDIO_URL"),
        help="Label Studio URL (default: $LABEL_STUDIO_URL, else /setup's, stored in $REDIS_URL)",
    )
    enrich.add_argument(
        "--api-key",
        default=os.environ.get("LABEL_STUDIO_API_KEY"),
        help="Label Studio API key (default: $LABEL_STUDIO_API_KEY, else /setup's, stored in $REDIS_URL)",
    )
    return parser


def _enrich(args: argparse.Namespace, store: CorrectionStore) -> int:
    from backend.corrections.enrich import enrich_missing
    from backend.label_studio.connection import LabelStudioConnection, resolve
    from backend.operations.level_labels import LEVEL_LABELS_ENV, parse_level_mapping
    from backend.operations.settings import Settings

    mapping = dict(parse_level_mapping(os.environ.get(LEVEL_LABELS_ENV) or None)) or None
    given = (
        LabelStudioConnection(url=args.label_studio_url.rstrip("/"), api_key=args.api_key)
        if args.label_studio_url and args.api_key
        else None
    )
    redis_url = os.environ.get("REDIS_URL") or None
    settings = Settings(
        redis_url=redis_url, label_studio_url=args.label_studio_url or None, label_studio_api_key=args.api_key
    )
    connection = None
    if given is None and redis_url is not None:
        from backend.operations.redis_client import connect

        connection = connect(settings)

    def connection_for(project: int | None) -> LabelStudioConnection | None:
        return given or resolve(settings, connection, project)

    summary = enrich_missing(store, connection_for, project=args.project, mapping=mapping)
    print(json.dumps(summary.to_json(), indent=1))
    return 1 if summary.failed else 0


def _format_levels(record: CorrectionRecord) -> str:
    parts = []
    for level in record.levels:
        iou = "-" if level.iou is None else f"{level.iou:.3f}"
        parts.append(f"{level.level}:{'A' if level.accepted is not None else '_'}{iou}")
    return " ".join(parts) or "-"


def _table(records: Sequence[CorrectionRecord]) -> str:
    """Fixed-width table: one row per record."""
    header = (
        "id",
        "project",
        "task",
        "annotation",
        "revision",
        "annotator",
        "model",
        "levels",
        "corr",
        "del",
    )
    rows = [
        (
            str(r.id),
            str(r.project_id if r.project_id is not None else "-"),
            str(r.task_id),
            str(r.annotation_id),
            r.revision,
            r.annotator or "-",
            r.model_version or "-",
            _format_levels(r),
            f"{r.correction:.3f}",
            "yes" if r.deleted_at else "",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _open_existing(db: Path | None) -> CorrectionStore:
    path = db if db is not None else default_store_path()
    if not path.is_file():
        raise CorrectionError(f"no correction store at {path}; pass --db or set MODEL_DIR")
    return CorrectionStore(path)


def _image_source(args: argparse.Namespace) -> ImageSource:
    """``ImageFetcher``-backed image source; cloud URIs are presigned through their task."""
    from backend.images.fetcher import FetchedImage, ImageFetcher

    model_dir = Path(os.environ.get("MODEL_DIR") or "models")
    fetcher = ImageFetcher(
        cache_dir=args.cache_dir or model_dir / "cache" / "images",
        label_studio_url=args.label_studio_url or None,
        trusted_label_studio_url=args.label_studio_url or None,  # the operator named it
        api_key=args.api_key or None,
        allow_local_files_root=args.local_files_root,
        allow_private_networks=args.allow_private_networks,
    )

    def fetch(ref: str, task_id: int | None) -> FetchedImage:
        return fetcher.fetch(ref, task_id=task_id)

    return fetch


def main(argv: list[str] | None = None) -> int:
    """Run ``corrections list|stats|export``; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _open_existing(args.db) as store:
            if args.command == "enrich":
                return _enrich(args, store)
            if args.command == "stats":
                print(json.dumps(store.stats(project=args.project), indent=1))
                return 0
            if args.command == "list":
                records = store.list(
                    project=args.project,
                    since=args.since,
                    until=args.until,
                    min_correction=args.min_correction,
                    include_deleted=args.include_deleted,
                    latest_only=args.latest_only,
                )
                if args.json:
                    for record in records:
                        print(json.dumps(record.to_json()))
                else:
                    print(_table(records))
                return 0
            if args.format == "coco":
                from backend.corrections.coco import export_coco

                records = select_records(
                    store,
                    project=args.project,
                    since=args.since,
                    until=args.until,
                    min_correction=args.min_correction,
                )
                summary = export_coco(
                    records, args.out, images=_image_source(args), segmentation=args.coco_segmentation
                )
            else:
                summary = export_corrections(
                    store,
                    args.out,
                    images=_image_source(args),
                    project=args.project,
                    since=args.since,
                    until=args.until,
                    min_correction=args.min_correction,
                )
            print(json.dumps(summary.to_json(), indent=1))
            return 0
    except (CorrectionError, ExportError, ValueError) as exc:
        print(f"corrections {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
