"""How the backend reaches Label Studio: base URL and API key, and an SDK client for them.

The operator's ``LABEL_STUDIO_URL`` (with ``LABEL_STUDIO_API_KEY``) wins. What it leaves unset is taken from
what Label Studio sent to ``POST /setup`` for the project (``hostname`` and the project creator's
``access_token``, parsed once by ``parse_setup``): the web stores that in Redis (``cores:ls:project:<id>``,
30 days), where workers on other machines find it. Rules (``/setup`` needs no credentials unless basic auth
is on, so anyone who can reach the backend can send one):

- host and token are stored only together, never a hostname alone or a token alone;
- with ``LABEL_STUDIO_URL`` set, a token from ``/setup`` is stored for that URL (whatever ``hostname``
  says): a token only ever goes to the host the operator named;
- without it, the pair of the first ``/setup`` is stored; a later ``/setup`` may refresh the token of the
  same host (same scheme, host and port) but never re-point the project to another host (logged as a
  WARNING): the stored token can never be moved to a host someone else names;
- ``LABEL_STUDIO_API_KEY`` is only ever sent to ``LABEL_STUDIO_URL``; a host learned from ``/setup`` gets
  only the token stored with it;
- only ``LABEL_STUDIO_URL``'s origin is exempt from the workers' private-address checks
  (``ImageFetcher(trusted_label_studio_url=...)``), never a learned host.

Anyone who can read this Redis can read those tokens: keep Redis private to the backend (it must be
anyway: it holds the job queue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from backend.images.url_safety import UnsafeUrlError, display_url, parse_fetch_url
from backend.operations.ids import project_id
from backend.operations.settings import Settings

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


@dataclass(frozen=True)
class SetupCall:
    """What a ``/setup`` body says: the project, Label Studio's URL and the project creator's token (None
    when absent or unusable: not text, not an http(s) URL ``url_safety`` accepts, or not a plain token)."""

    project: int | None
    hostname: str | None
    access_token: str | None


MAX_TOKEN_CHARS = 4096


def parse_setup(payload: Any) -> SetupCall:
    """Read a ``/setup`` body once (the web stores the pair and schedules the webhook set-up from this)."""
    if not isinstance(payload, Mapping):
        return SetupCall(None, None, None)
    hostname = payload.get("hostname")
    host: str | None = None
    if isinstance(hostname, str) and hostname.strip():
        try:
            parse_fetch_url(hostname.strip())
            host = hostname.strip().rstrip("/")
        except UnsafeUrlError as exc:
            logger.warning("/setup: ignoring hostname %s: %s", display_url(hostname), exc)
    token = payload.get("access_token")
    key: str | None = None
    if isinstance(token, str) and token.strip():
        text = token.strip()
        if len(text) <= MAX_TOKEN_CHARS and text.isascii() and text.isprintable() and " " not in text:
            key = text
        else:
            logger.warning("/setup: ignoring an access_token that is not a plain ASCII token")
    return SetupCall(project_id(payload.get("project")), host, key)


def _same_origin(a: str, b: str) -> bool:
    try:
        return parse_fetch_url(a).origin == parse_fetch_url(b).origin
    except UnsafeUrlError:
        return False


def _stored(connection: redis.Redis, project: int) -> dict[str, str]:
    raw: dict[bytes, bytes] = connection.hgetall(f"{PROJECT_KEY}{project}")  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def remember_setup(connection: redis.Redis, settings: Settings, call: SetupCall) -> bool:
    """Store the Label Studio host and token a ``/setup`` call gave for its project (module docstring rules).

    Returns:
        True when a pair was stored or refreshed; False when there was nothing to store or it was refused.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable (callers decide whether that matters).
    """
    if call.project is None or call.access_token is None:
        return False
    if settings.label_studio_url is not None and settings.label_studio_api_key is not None:
        return False  # the operator's pair serves every project: nothing to learn
    url = settings.label_studio_url or call.hostname
    if url is None:
        return False
    key = f"{PROJECT_KEY}{call.project}"
    if settings.label_studio_url is None:
        known = _stored(connection, call.project).get("hostname")
        if known is not None and not _same_origin(known, url):
            logger.warning(
                "/setup for project %s names Label Studio at %s, but the project's stored connection is %s: "
                "NOT changed (a /setup cannot move a project's token to another host). If Label Studio "
                "really moved, set LABEL_STUDIO_URL, or delete the Redis key %s",
                call.project,
                display_url(url),
                display_url(known),
                key,
            )
            return False
    with connection.pipeline() as pipe:
        pipe.hset(key, mapping={"hostname": url.rstrip("/"), "access_token": call.access_token})
        pipe.expire(key, SETUP_TTL_S)
        pipe.execute()
    return True


def resolve(
    settings: Settings, connection: redis.Redis | None = None, project: int | None = None
) -> LabelStudioConnection | None:
    """The Label Studio connection for ``project`` (see the module docstring), or None when no URL with its
    key is known."""
    url, api_key = settings.label_studio_url, settings.label_studio_api_key
    if url is not None and api_key is not None:
        return LabelStudioConnection(url=url.rstrip("/"), api_key=api_key)
    stored: dict[str, str] = {}
    if connection is not None and project is not None:
        try:
            stored = _stored(connection, project)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("cannot read the /setup credentials of project %s: %s", project, exc)
    host, token = stored.get("hostname"), stored.get("access_token")
    if not host or not token:
        return None
    if url is not None and not _same_origin(host, url):
        return None  # stored before LABEL_STUDIO_URL was set: not for this host
    return LabelStudioConnection(url=host.rstrip("/"), api_key=token)


def setup_connection(
    settings: Settings, connection: redis.Redis, call: SetupCall, *, authenticated: bool
) -> LabelStudioConnection | None:
    """The Label Studio connection through which the web may change the project's webhooks after this
    ``/setup``: only the operator's ``LABEL_STUDIO_URL``; or, when the ``/setup`` itself passed basic auth
    (``authenticated``), the host and token it carried. None otherwise."""
    if call.project is None:
        return None
    if settings.label_studio_url is not None:
        return resolve(settings, connection, call.project)
    if authenticated and call.hostname is not None and call.access_token is not None:
        return LabelStudioConnection(url=call.hostname, api_key=call.access_token)
    return None
