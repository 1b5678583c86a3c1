"""A Label Studio Data Manager view (a tab) holding the tasks most in need of review, through the API
(``POST /api/dm/views``): one ``tasks:id equal`` filter per task joined with ``or``, ordered by the
prediction score, lowest first. A view of the same title in the project is replaced."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

MAX_VIEW_TASKS = 500
"""Most tasks one view filters on (one filter each)."""


class ViewError(ValueError):
    """A view that cannot be written (no tasks, too many, an empty title)."""


def view_data(title: str, task_ids: Sequence[int]) -> dict[str, Any]:
    """The view's ``data``: its title, the task filters and the ordering (Label Studio's view JSON).

    Raises:
        ViewError: an empty title, no tasks, or more than ``MAX_VIEW_TASKS``.
    """
    if not title.strip():
        raise ViewError("the view needs a title")
    if not task_ids:
        raise ViewError("no task needs review: no view written")
    if len(task_ids) > MAX_VIEW_TASKS:
        raise ViewError(f"{len(task_ids)} tasks: a view filters at most {MAX_VIEW_TASKS} (use --top)")
    items = [
        {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(task)}
        for task in task_ids
    ]
    return {
        "title": title.strip(),
        "filters": {"conjunction": "or", "items": items},
        "ordering": ["tasks:predictions_score"],
    }


def write_view(client: Any, project: int, title: str, task_ids: Sequence[int]) -> int:
    """Create the view in ``project`` (replacing views of the same title); returns its id.

    Raises:
        ViewError: see ``view_data``.
    """
    data = view_data(title, task_ids)
    for view in client.views.list(project=project):
        if (getattr(view, "data", None) or {}).get("title") == data["title"]:
            client.views.delete(id=view.id)
            logger.info("replacing view %s (%r) of project %s", view.id, data["title"], project)
    created = client.views.create(project=project, data=data)
    return int(created.id)
