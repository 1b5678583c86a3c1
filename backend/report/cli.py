"""``python -m backend report [--out DIR] [--project N]``: write the loop's report, one self-contained
HTML file (``DIR/report.html``, default ``MODEL_DIR/report``), and print its path."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.label_studio.connection import resolve
from backend.operations.command_line import command_settings, label_studio_id
from backend.operations.settings import SettingsError
from backend.report.images import image_loader
from backend.report.page import build_report, write_report

EXIT_USAGE = 2


def report_parser() -> argparse.ArgumentParser:
    """The ``report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m backend report",
        description="Write the active-learning report (versions' held-out scores, correction rates, IoU "
        "distribution, worst recent corrections) as one self-contained HTML file.",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for report.html (default MODEL_DIR/report)"
    )
    parser.add_argument(
        "--project", type=label_studio_id, default=None, help="only this project's corrections"
    )
    parser.add_argument(
        "--no-images", action="store_true", help="draw thumbnails without fetching task images"
    )
    return parser


def report_main(argv: Sequence[str]) -> int:
    """Run ``report``; returns the exit status (0 ok, 2 usage)."""
    args = report_parser().parse_args(list(argv))
    try:
        settings = command_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    images = None if args.no_images else image_loader(settings, resolve(settings, None, args.project))
    html = build_report(settings, project=args.project, images=images)
    path = write_report(html, args.out or settings.model_dir / "report")
    print(path)
    return 0
