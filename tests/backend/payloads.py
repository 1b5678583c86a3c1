"""Label Studio /predict request bodies as Label Studio 1.23 sends them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backend.label_studio.label_config import shipped_label_config

PROJECT = "1.1795672559"


def predict_body(
    tasks: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    config: str | None = None,
    prompt: str | None = None,
    prompt_from_name: str = "prompt",
) -> dict[str, Any]:
    """A /predict body for ``(task id, task data)`` pairs; ``prompt`` makes it an interactive call."""
    context = None
    if prompt is not None:
        context = {
            "result": [
                {
                    "from_name": prompt_from_name,
                    "to_name": "image",
                    "type": "textarea",
                    "value": {"text": [prompt]},
                }
            ]
        }
    return {
        "tasks": [
            {"id": task_id, "data": dict(data), "annotations": [], "predictions": [], "project": 1}
            for task_id, data in tasks
        ],
        "project": PROJECT,
        "label_config": config if config is not None else shipped_label_config(),
        "params": {"login": None, "password": None, "context": context},
    }
