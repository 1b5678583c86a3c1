"""How the backend reaches Label Studio: base URL and API key, and an SDK client for them.

``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` win. A piece they leave unset is taken from what Label
Studio itself sent to ``POST /setup`` for the project (``hostname`` and the project creator's
``access_token``): the web stores that in Redis (``cores:ls:project:<id>``, 30 days), where workers on
other machines find it. So a backend connected in the Label Studio UI can fetch ``/data/upload`` images
and write late predictions without extra configuration. Anyone who can read this Redis can read those
tokens: keep Redis private to the backend (it must be anyway: it holds the job queue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from backend.settings import Settings

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)

PROJECT_KEY = "cores:ls:project:"
SETUP_TTL_S = 30 * 24 * 3600
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LabelStudioConnection:
    """A Label Studio base URL and API key (legacy token or personal access token)."""

    url: str
    api_key: str

    def client(self, timeout: float = CLIENT_TIMEOUT_S) -> LabelStudio:
        """A label-studio-sdk client for this connection (``timeout``: seconds per HTTP call)."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.api_key, timeout=timeout)


def project_id(value: Any) -> int | None:
    """The numeric project id from Label Studio's ``"1.1795672559"`` project string (or an int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        if head.isdigit():
            return int(head)
    return None


def remember_setup(connection: redis.Redis, payload: Mapping[str, Any]) -> bool:
    """Store the ``hostname`` and ``access_token`` of a ``/setup`` call for its project.

    Returns:
        True when something was stored; False for payloads without a project id or credentials.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable (callers decide whether that matters).
    """
    project = project_id(payload.get("project"))
    fields: dict[Any, Any] = {
        name: payload[name].strip()
        for name in ("hostname", "access_token")
        if isinstance(payload.get(name), str) and payload[name].strip()
    }
    hostname = fields.get("hostname")
    if project is None or not fields or (hostname and not hostname.startswith(("http://", "https://"))):
        return False
    key = f"{PROJECT_KEY}{project}"
    with connection.pipeline() as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, SETUP_TTL_S)
        pipe.execute()
    return True


def resolve(
    settings: Settings, connection: redis.Redis | None = None, project: int | None = None
) -> LabelStudioConnection | None:
    """The Label Studio connection for ``project`` (see the module docstring), or None when the URL or
    the key is known from neither the settings nor a ``/setup`` call."""
    url, api_key = settings.label_studio_url, settings.label_studio_api_key
    if (url is None or api_key is None) and connection is not None and project is not None:
        try:
            raw: dict[bytes, bytes] = connection.hgetall(f"{PROJECT_KEY}{project}")  # type: ignore[assignment]
            stored = {k.decode(): v.decode() for k, v in raw.items()}
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("cannot read the /setup credentials of project %s: %s", project, exc)
            stored = {}
        url = url or stored.get("hostname")
        api_key = api_key or stored.get("access_token")
    if not url or not api_key:
        return None
    return LabelStudioConnection(url=url.rstrip("/"), api_key=api_key)
