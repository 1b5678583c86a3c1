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

from backend.label_studio.label_config import SegmentationSchema
from backend.label_studio.task_errors import TaskError

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2000
"""Longest accepted query, in characters after stripping the ends (the model's own limit too)."""

RESERVED_MARKERS = (
    "<image>",
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "[SEG]",
    "[SEG_SEMA]",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
)
"""Text the model's prompt gives a meaning of its own (the image placeholder, the tokens added to the
tokenizer, LLaMA's special tokens): a query holding one would be read as prompt structure, not as text."""

INVISIBLE = frozenset("\x00\u200b\u200c\u200d\u2060\ufeff")
"""NUL and zero-width characters: a query made only of these (and whitespace) says nothing."""


def normalize_query(text: str) -> str:
    """Strip whitespace from the ends; inner whitespace is kept (the trained stack only strips)."""
    return text.strip()


def check_query(query: Any, where: str) -> str:
    """Return ``query`` stripped, or raise ``TaskError``.

    Codes: ``empty_query`` (not text, empty, or only whitespace, NULs and zero-width characters),
    ``query_too_long`` (over ``MAX_QUERY_CHARS``), ``bad_query`` (a lone surrogate, which no UTF-8 text can
    hold, or one of ``RESERVED_MARKERS``).

    Args:
        query: the raw value found; ``where`` names where it was found, for the message.
    """
    if not isinstance(query, str):
        raise TaskError("empty_query", f"the query in {where} is a {type(query).__name__}, expected text")
    text = normalize_query(query)
    if not text or all(char.isspace() or char in INVISIBLE for char in text):
        raise TaskError("empty_query", f"the query in {where} is empty; type what to segment")
    if len(text) > MAX_QUERY_CHARS:
        raise TaskError(
            "query_too_long",
            f"the query in {where} has {len(text)} characters; at most {MAX_QUERY_CHARS} are accepted",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TaskError(
            "bad_query",
            f"the query in {where} holds a lone surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}), which is not text; send it as valid UTF-8",
        ) from None
    found = [marker for marker in RESERVED_MARKERS if marker in text]
    if found:
        raise TaskError(
            "bad_query",
            f"the query in {where} holds {', '.join(found)}, which the model's prompt reserves "
            "(image placeholder, chain or special tokens); rephrase without it",
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
        TaskError: missing_image; image_fetch (reason ``bad_url``) for a control character or a lone
            surrogate in the URL.
    """
    data = task.get("data")
    url = data.get(schema.image_field) if isinstance(data, Mapping) else None
    if not isinstance(url, str) or not url.strip():
        raise TaskError(
            "missing_image",
            f'the task data has no image URL in field "{schema.image_field}" '
            f'(<Image name="{schema.image_name}" value="${schema.image_field}">)',
        )
    url = url.strip()
    bad = next(
        (char for char in url if ord(char) < 32 or ord(char) == 127 or 0xD800 <= ord(char) < 0xE000), None
    )
    if bad is not None:
        raise TaskError(
            "image_fetch",
            f'the image URL in field "{schema.image_field}" holds the character U+{ord(bad):04X} (a control '
            "character or a lone surrogate), which no URL or file name can hold",
            reason="bad_url",
        )
    return url
