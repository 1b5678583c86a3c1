"""The secret that proves a ``/webhook`` request comes from Label Studio, per project.

Without basic auth, every ``/webhook`` request must carry ``X-Cores-Webhook-Secret: <project secret>``,
where the project secret is ``HMAC-SHA256(master secret, "cores-webhook:<project id>")`` in hex and the
project is the one the event is about (for annotation events the annotation's project, the one its record
is filed under). The master secret is ``WEBHOOK_SECRET``, or, when that is unset, 32 random bytes generated
once into ``MODEL_DIR/webhook-secret`` (mode 0600; every web process of the deployment shares ``MODEL_DIR``
and so the secret). A secret per project means a project's secret, wherever Label Studio sends it, can
only forge events of that one project.

The backend puts the header on the project's webhook itself through Label Studio's API
(``backend.label_studio.webhook_auth``), but only on the Label Studio the operator named
(``LABEL_STUDIO_URL``): a host learned from an unauthenticated ``/setup`` could be anyone's.
``python -m backend webhooks secret --project N`` prints the header to set by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backend.label_studio.webhook_payloads import annotation_task
from backend.operations.ids import project_id
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Cores-Webhook-Secret"
SECRET_FILE = "webhook-secret"
_ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


class WebhookSecretError(RuntimeError):
    """The master secret cannot be read or created (``MODEL_DIR`` not writable); the message says where."""


def master_secret(settings: Settings) -> bytes:
    """``WEBHOOK_SECRET``, else the generated ``MODEL_DIR/webhook-secret`` (created on first use).

    Raises:
        WebhookSecretError: the file cannot be read or created.
    """
    if settings.webhook_secret is not None:
        return settings.webhook_secret.encode("ascii")
    path = Path(settings.model_dir) / SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            logger.info("generated the webhook secret in %s", path)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebhookSecretError(
            f"cannot read or create the webhook secret {path} ({exc}); make MODEL_DIR writable or set "
            "WEBHOOK_SECRET"
        ) from exc
    if len(text) < 32:
        raise WebhookSecretError(
            f"{path} holds no secret; delete it (a new one is made) or set WEBHOOK_SECRET"
        )
    return text.encode("ascii")


def project_secret(master: bytes, project: int) -> str:
    """The ``X-Cores-Webhook-Secret`` value of ``project``'s webhook."""
    return hmac.new(master, f"cores-webhook:{project}".encode(), hashlib.sha256).hexdigest()


def event_project(payload: Mapping[str, Any]) -> int | None:
    """The project a webhook event is about (what its secret must be for), or None when it names none."""
    action = payload.get("action")
    if action in _ANNOTATION_ACTIONS:
        return annotation_task(payload)[0]
    project = payload.get("project")
    return project_id(project.get("id") if isinstance(project, Mapping) else project)


def verify(master: bytes, payload: Mapping[str, Any], header: str | None) -> bool:
    """Whether ``header`` is the secret of the project the event is about (constant-time compare)."""
    if not header:
        return False
    project = event_project(payload)
    if project is None:
        return False
    return hmac.compare_digest(
        header.strip().encode("ascii", "replace"), project_secret(master, project).encode()
    )
