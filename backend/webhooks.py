"""Label Studio webhooks: which actions the backend handles, and the pluggable handler that gets them.

Label Studio sends every project event to ``<backend>/webhook`` once the backend is connected. The web
accepts all of them; the ones in ``HANDLED_ACTIONS`` (annotation changes, the "Start training" button)
go to a ``WebhookHandler``, the rest are answered ``{"status": "ignored"}``. Handlers must be quick (the
request is Label Studio's): record the event, enqueue work, return. The default handler records nothing;
a later issue plugs in the correction log and the training queue.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"})
HANDLED_ACTIONS = ANNOTATION_ACTIONS | {"START_TRAINING"}


class WebhookHandler(Protocol):
    """Called with a handled action and the whole webhook body; may return extra JSON-safe fields for
    the answer (e.g. ``{"job": "<id>"}``)."""

    def __call__(self, action: str, payload: Mapping[str, Any]) -> Mapping[str, Any] | None: ...


def accept_without_recording(action: str, payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The default handler: logs the event and records nothing."""
    project = payload.get("project")
    project_id = project.get("id") if isinstance(project, Mapping) else project
    logger.info("webhook %s for project %s accepted (nothing is recorded yet)", action, project_id)
    return None
