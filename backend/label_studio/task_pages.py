"""A project's tasks read through the Label Studio API (label-studio-sdk), page by page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PAGE_SIZE = 100


def iter_tasks(client: Any, project: int, page_size: int = PAGE_SIZE) -> Iterator[Any]:
    """Every task of ``project``, page by page (stops at the reported total)."""
    page, seen = 1, 0
    while True:
        pager = client.tasks.list(project=project, page=page, page_size=page_size)
        items = list(pager.items or [])
        yield from items
        seen += len(items)
        total = getattr(pager.response, "total", None)
        if not items or (total is not None and seen >= total):
            return
        page += 1
