"""The JSON a prediction job receives: built by the web (or pre-annotation), read by the worker.

Everything the worker needs travels in the request, so the worker never re-parses a labeling config or
re-resolves a query: the web already did, with the Label Studio payload in hand::

    {"kind": "interactive" | "bulk",
     "tasks": [{"id": 7, "image": "/data/upload/1/dog.png", "query": "the dog's leash",
                "prompts": [{"level": 2, "points": [[40.0, 25.5, 1]], "boxes": []}]}, ...],
     "schema": {"image_name": "image", "image_field": "image",
                "controls": [{"type": "brushlabels", "name": "tag",
                              "labels": ["Context (level 1)", "Target (level 2)"]}],
                "prompt_from_name": "prompt", "query_field": "query"},
     "level_labels": {"1": "Context (level 1)"},      # explicit level -> label mapping, may be empty
     "model_version": "cores-CoReS",                   # the version the web promised Label Studio
     "project": 1,                                     # Label Studio project id, or null
     "write_back": true,                               # write predictions the web does not return
     "claim_key": "cores:claim:<job id>"}              # backend.jobs.delivery handshake, or null

A task's ``prompts`` (optional, interactive only) are the smart tools' clicks and boxes per chain level
(``backend.label_studio.interactive_prompts``): the worker refines the query's chain with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.label_studio.label_config import SegmentationSchema
from backend.operations.ids import parse_id

KINDS = ("interactive", "bulk")


@dataclass(frozen=True)
class TaskInput:
    """One task to predict: Label Studio task id, image URL (as in the task data), resolved query, and the
    clicks and boxes that refine its chain (``backend.label_studio.interactive_prompts`` form)."""

    id: int
    image: str
    query: str
    prompts: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class PredictRequest:
    """A prediction job's input (see the module docstring for the JSON form)."""

    tasks: tuple[TaskInput, ...]
    schema: SegmentationSchema
    model_version: str
    kind: str = "bulk"
    level_labels: Mapping[int, str] = field(default_factory=dict)
    project: int | None = None
    write_back: bool = False
    claim_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe dict passed to ``backend.jobs.predict.predict_tasks``."""
        return {
            "kind": self.kind,
            "tasks": [_task_json(task) for task in self.tasks],
            "schema": self.schema.to_json(),
            "level_labels": {str(k): v for k, v in self.level_labels.items()},
            "model_version": self.model_version,
            "project": self.project,
            "write_back": self.write_back,
            "claim_key": self.claim_key,
        }

    @classmethod
    def from_json(cls, data: Any) -> PredictRequest:
        """Parse and check a request dict.

        Raises:
            ValueError: a missing or mistyped field, named in the message.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected the prediction request as a JSON object, got {type(data).__name__}")
        try:
            tasks = tuple(
                TaskInput(
                    id=_int(t["id"], "tasks[].id"),
                    image=str(t["image"]),
                    query=str(t["query"]),
                    prompts=_prompts(t.get("prompts")),
                )
                for t in data["tasks"]
            )
            schema = SegmentationSchema.from_json(data["schema"])
            level_labels = {
                _int(k, "level_labels key"): str(v) for k, v in (data.get("level_labels") or {}).items()
            }
            project = data.get("project")
            request = cls(
                tasks=tasks,
                schema=schema,
                model_version=str(data["model_version"]),
                kind=str(data.get("kind", "bulk")),
                level_labels=level_labels,
                project=None if project is None else _int(project, "project"),
                write_back=bool(data.get("write_back", False)),
                claim_key=data.get("claim_key") or None,
            )
        except KeyError as exc:
            raise ValueError(f"the prediction request lacks the field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise ValueError(f"the prediction request has a field of the wrong type: {exc}") from exc
        if request.kind not in KINDS:
            raise ValueError(f"expected kind to be one of {KINDS}, got {request.kind!r}")
        if not request.tasks:
            raise ValueError("the prediction request holds no tasks")
        return request


def _task_json(task: TaskInput) -> dict[str, Any]:
    data = asdict(task)
    if task.prompts:
        data["prompts"] = [dict(item) for item in task.prompts]
    else:
        del data["prompts"]
    return data


def _prompts(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ValueError("expected tasks[].prompts to be a list of objects")
    return tuple(dict(item) for item in value)


def _int(value: Any, name: str) -> int:
    return parse_id(value, name)  # IdError is a ValueError
