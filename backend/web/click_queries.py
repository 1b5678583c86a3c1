"""The query a click refines when the interactive context carries clicks or boxes but no prompt text.

Label Studio sends the smart tool's region alone when an annotator clicks, so the query is the task's last
one: the newest entry of the prediction memory (``backend.corrections.prediction_memory``), which every
prediction job writes. With none, the task gets a ``missing_query`` error telling the annotator to type a
query first.
"""

from __future__ import annotations

import logging

import redis

from backend.corrections.prediction_memory import recall
from backend.label_studio.task_errors import TaskError

logger = logging.getLogger(__name__)

TYPE_A_QUERY = (
    "clicks and boxes refine the masks of a query, and this task has no query yet: type what to segment "
    "in the prompt box first, then click"
)


def last_query(connection: redis.Redis, project: int | None, task_id: int) -> str:
    """The task's last predicted query.

    Raises:
        TaskError: ``missing_query`` (``TYPE_A_QUERY``) when there is none, or it cannot be read.
    """
    if project is None:
        raise TaskError("missing_query", TYPE_A_QUERY)
    try:
        entry = recall(connection, project, task_id, None)
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("task %s: cannot read its last query from Redis: %s", task_id, exc)
        raise TaskError("missing_query", f"{TYPE_A_QUERY} (the last query could not be read)") from exc
    if entry is None or not entry.query.strip():
        raise TaskError("missing_query", TYPE_A_QUERY)
    return entry.query
