"""Find each task's query and image URL in a Label Studio /predict payload.

The query comes from, in order:

1. the interactive context: the first ``params.context.result`` item whose ``from_name`` is the prompt
   ``<TextArea>`` (``value.text[0]``), as Label Studio sends it when an annotator submits a prompt;
2. the task data field the TextArea is pre-filled from (``<TextArea value="$query">`` -> ``data["query"]``),
   which is how imported tasks carry a query for batch predictions;
3. otherwise the task gets a ``missing_query`` error naming both places.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.errors import TaskError
from backend.label_config import SegmentationSchema

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2000
"""Longest accepted query, in characters after collapsing whitespace (the model's own limit too)."""


def normalize_query(text: str) -> str:
    """Collapse runs of whitespace to single spaces and strip the ends."""
    return " ".join(text.split())


def check_query(query: Any, where: str) -> str:
    """Return ``query`` normalized, or raise ``TaskError`` (empty_query, query_too_long).

    Args:
        query: the raw value found; ``where`` names where it was found, for the message.
    """
    if not isinstance(query, str):
        raise TaskError("empty_query", f"the query in {where} is a {type(query).__name__}, expected text")
    text = normalize_query(query)
    if not text:
        raise TaskError("empty_query", f"the query in {where} is empty; type what to segment")
    if len(text) > MAX_QUERY_CHARS:
        raise TaskError(
            "query_too_long",
            f"the query in {where} has {len(text)} characters; at most {MAX_QUERY_CHARS} are accepted",
        )
    return text


def context_query(context: Mapping[str, Any] | None, schema: SegmentationSchema) -> Any | None:
    """The prompt text of an interactive context, or None when the context holds no prompt result.

    Returns the raw value (validated later by ``check_query``) so that an empty prompt is reported as
    empty rather than as missing.
    """
    if not context or schema.prompt_from_name is None:
        return None
    results = context.get("result") if isinstance(context, Mapping) else None
    if not isinstance(results, list):
        return None
    for item in results:
        if not isinstance(item, Mapping) or item.get("from_name") != schema.prompt_from_name:
            continue
        value = item.get("value")
        texts = value.get("text") if isinstance(value, Mapping) else None
        if isinstance(texts, list):
            return texts[0] if texts else ""
        if isinstance(texts, str):
            return texts
        return ""
    return None


def resolve_query(
    task: Mapping[str, Any], schema: SegmentationSchema, context: Mapping[str, Any] | None = None
) -> str:
    """The query for one task (see the module docstring for the order).

    Raises:
        TaskError: missing_query, empty_query or query_too_long.
    """
    prompt = context_query(context, schema)
    if prompt is not None:
        return check_query(prompt, f'the interactive prompt "{schema.prompt_from_name}"')
    data = task.get("data")
    if schema.query_field and isinstance(data, Mapping) and schema.query_field in data:
        return check_query(data[schema.query_field], f'task data field "{schema.query_field}"')
    places = []
    if schema.prompt_from_name:
        places.append(f'an interactive prompt in <TextArea name="{schema.prompt_from_name}">')
    if schema.query_field:
        places.append(f'the task data field "{schema.query_field}"')
    else:
        places.append('a task data field named by the TextArea\'s value (e.g. value="$query")')
    raise TaskError("missing_query", "no query for this task: expected " + " or ".join(places))


def resolve_image_url(task: Mapping[str, Any], schema: SegmentationSchema) -> str:
    """The image URL of one task (``data[schema.image_field]``).

    Raises:
        TaskError: missing_image.
    """
    data = task.get("data")
    url = data.get(schema.image_field) if isinstance(data, Mapping) else None
    if not isinstance(url, str) or not url.strip():
        raise TaskError(
            "missing_image",
            f'the task data has no image URL in field "{schema.image_field}" '
            f'(<Image name="{schema.image_name}" value="${schema.image_field}">)',
        )
    return url.strip()
