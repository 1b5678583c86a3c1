"""Checks the web makes on a request before acting on it: credentials, body text, ids in the path.

- ``basic_auth_ok``: the request carries ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` (constant-time compare).
- ``webhook_authorized``: a ``/webhook`` request carries basic auth, or the secret of the project its event
  is about (``backend.label_studio.webhook_secret``).
- ``lone_surrogate``: where a parsed JSON body holds text that no UTF-8 can carry (JSON's ``"\\ud800"``
  escapes decode to lone surrogates, which SQLite, Redis and lxml refuse with errors the web would answer
  500): the web answers 400 naming the field instead. /predict bodies are not checked as a whole: a bad
  query or image URL is that task's error (``backend.label_studio.queries``).
- ``JOB_ID``: what a job id in ``/jobs/<id>`` may look like (rq ids are 32 hex digits; at most 128
  characters of letters, digits, ``-`` and ``_``), so an over-long or odd id is a JSON 404, not a trip to
  Redis.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

from werkzeug.datastructures import Authorization

from backend.label_studio.webhook_secret import verify
from backend.operations.settings import Settings

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_DEPTH = 64


def basic_auth_ok(settings: Settings, auth: Authorization | None) -> bool:
    """Whether ``auth`` holds the configured user and password (False when basic auth is off)."""
    if settings.basic_auth_user is None or auth is None:
        return False
    user_ok = hmac.compare_digest(
        (auth.username or "").encode("utf-8", "replace"), settings.basic_auth_user.encode()
    )
    pass_ok = hmac.compare_digest(
        (auth.password or "").encode("utf-8", "replace"), (settings.basic_auth_pass or "").encode()
    )
    return user_ok and pass_ok


def webhook_authorized(
    settings: Settings, master: bytes | None, auth: Authorization | None, secret: str | None, body: Any
) -> bool:
    """Basic auth (when configured), else the event's project secret (``master`` None: none accepted)."""
    if basic_auth_ok(settings, auth):
        return True
    return master is not None and isinstance(body, Mapping) and verify(master, body, secret)


def lone_surrogate(value: Any, where: str = "body", depth: int = 0) -> str | None:
    """The path of the first text (key or value) in ``value`` holding a lone surrogate, else None."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where
        return None
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = lone_surrogate(key, f"{where} key", depth + 1) or lone_surrogate(
                item,
                f"{where}.{key}" if isinstance(key, str) and key.isascii() else f"{where}[...]",
                depth + 1,
            )
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate(item, f"{where}[{index}]", depth + 1)
            if found:
                return found
    return None
