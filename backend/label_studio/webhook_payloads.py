"""Reading Label Studio's webhook bodies: what every consumer of them needs first.

Label Studio 1.23 sends ``{"action", "annotation": {...}, "task": {...}, "project": {...}}``; some references
arrive as ids, some as ``{"id": ...}`` objects, and a field may be missing or of the wrong JSON type. These
readers never raise: they answer None (or an empty object) for what is not there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.operations.ids import id_or_none


def json_object(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def annotation_task(payload: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The ``(project id, task id)`` an annotation webhook is about (``backend.operations.ids`` rules; an
    object reference's ``id`` counts): the task from ``annotation.task``, else ``task.id``; the project from
    the payload's ``project``, else the annotation's, else the task's."""
    annotation, task = json_object(payload.get("annotation")), json_object(payload.get("task"))
    task_id = id_or_none(annotation.get("task")) or id_or_none(task.get("id"))
    project = (
        id_or_none(payload.get("project"))
        or id_or_none(annotation.get("project"))
        or id_or_none(task.get("project"))
    )
    return project, task_id
