"""Basic-auth credentials on the webhooks Label Studio sends to this backend.

With ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set, every route but ``/health`` needs HTTP basic auth. Label
Studio 1.23 sends the ML connection's user and password on ``/setup`` and ``/predict``, but the webhook it
creates when the backend is connected (``<ML backend url>/webhook``, all actions) carries no credentials, so
every annotation event would be answered 401 and the correction log would stay empty. The backend therefore
puts an ``Authorization: Basic ...`` header on those webhooks through Label Studio's API:

- which webhooks: those of the project whose URL is ``<url>/webhook`` for an ML connection of the project
  that uses basic auth with this backend's user name (``GET /api/ml/?project=``). Label Studio already sends
  these credentials to that URL, so no other server gets them. Other headers are kept.
- when: the web does it in a background thread after Label Studio's ``/setup`` (which tells it the
  Label Studio host and a token; ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` win), once per project per
  process (``WebhookAuthKeeper``), retrying for ~30 s because Label Studio creates the webhook just after its
  first ``/setup`` call. Failures are logged as errors with the fix; a later ``/setup`` tries again after
  ``FAILURE_COOLDOWN_S``.
- by hand: ``python -m backend webhooks ensure --project ID [--project ID ...]`` (``main``), with the
  environment of the backend (``BASIC_AUTH_*``, and ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` or the
  ``/setup`` credentials stored in ``REDIS_URL``).

The web also logs a WARNING for every ``/webhook`` request it answers 401 (``backend.app``), so a webhook
without credentials never fails silently.
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.ls_connection import LabelStudioConnection, resolve
from backend.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

AUTH_METHOD = "BASIC_AUTH"
HEADER = "Authorization"
API_TIMEOUT_S = 10.0
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
"""Waits before each attempt of the background ensure (~30 s in all)."""
FAILURE_COOLDOWN_S = 300.0
"""After a failed background ensure, ``/setup`` calls for the project start no new one for this long."""


class WebhookAuthError(RuntimeError):
    """Label Studio's API could not be used to read or update the webhooks; the message says why."""


def basic_auth_header(user: str, password: str) -> str:
    """``Basic <base64(user:password)>``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass
class WebhookAuthReport:
    """What ``ensure_webhook_auth`` found: the basic-auth ML connections of the project with this backend's
    user (their URLs), and the webhook URLs whose header it set now or that already carried it."""

    project: int
    backends: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether at least one webhook to this backend now carries the credentials."""
        return bool(self.updated or self.unchanged)


def _attr(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def ensure_webhook_auth(
    ls: LabelStudioConnection, project: int, user: str, password: str
) -> WebhookAuthReport:
    """Put ``Authorization: Basic ...`` on the project's webhooks to this backend (see the module docstring).
    Idempotent: a webhook that already carries the header is not touched.

    Raises:
        WebhookAuthError: Label Studio cannot be reached, refuses the token, or refuses the update.
    """
    header = basic_auth_header(user, password)
    report = WebhookAuthReport(project=project)
    client = ls.client(timeout=API_TIMEOUT_S)
    try:
        backends = list(client.ml.list(project=project))
    except Exception as exc:  # ApiError, httpx transport errors
        raise WebhookAuthError(
            f"cannot list project {project}'s ML connections at {ls.url}: {type(exc).__name__}: {exc}"
        ) from exc
    targets = set()
    for backend in backends:
        url = str(_attr(backend, "url") or "").rstrip("/")
        method = str(_attr(backend, "auth_method") or "")
        if url and method == AUTH_METHOD and _attr(backend, "basic_auth_user") == user:
            report.backends.append(url)
            targets.add(f"{url}/webhook")
    if not targets:
        return report
    try:
        hooks = list(client.webhooks.list(project=str(project)))
    except Exception as exc:
        raise WebhookAuthError(
            f"cannot list project {project}'s webhooks at {ls.url}: {type(exc).__name__}: {exc}"
        ) from exc
    for hook in hooks:
        url = str(_attr(hook, "url") or "")
        hook_project = _attr(hook, "project")
        if url.rstrip("/") not in targets or hook_project not in (None, project):
            continue
        raw = _attr(hook, "headers")
        headers = {str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        present = [name for name in headers if name.lower() == HEADER.lower()]
        if present == [HEADER] and headers[HEADER] == header:
            report.unchanged.append(url)
            continue
        for name in present:
            del headers[name]
        headers[HEADER] = header
        try:
            client.webhooks.update(id=int(_attr(hook, "id")), headers=headers)
        except Exception as exc:
            raise WebhookAuthError(
                f"cannot set the Authorization header of webhook {_attr(hook, 'id')} ({url}) at {ls.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        report.updated.append(url)
        logger.info(
            "project %s: Label Studio's webhook %s now sends this backend's basic-auth credentials",
            project,
            url,
        )
    return report


class WebhookAuthKeeper:
    """Runs ``ensure_webhook_auth`` in a background thread, once per project per process (the web's; see
    the module docstring). Thread-safe."""

    def __init__(
        self,
        user: str,
        password: str,
        *,
        delays: Sequence[float] = RETRY_DELAYS_S,
        cooldown_s: float = FAILURE_COOLDOWN_S,
    ) -> None:
        self.user = user
        self._password = password
        self.delays = tuple(delays)
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._state: dict[int, tuple[str, float]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._stop = threading.Event()

    def schedule(self, project: int, ls: LabelStudioConnection) -> bool:
        """Start the background ensure for ``project`` unless it succeeded in this process, is running, or
        failed less than ``cooldown_s`` ago. Returns whether a thread was started. Never blocks."""
        now = time.monotonic()
        with self._lock:
            state, since = self._state.get(project, ("new", 0.0))
            if state in ("running", "done") or (state == "failed" and now - since < self.cooldown_s):
                return False
            self._state[project] = ("running", now)
            thread = threading.Thread(
                target=self._run, args=(project, ls), name=f"cores-webhook-auth-{project}", daemon=True
            )
            self._threads[project] = thread
        thread.start()
        return True

    def status(self, project: int) -> str:
        """``new``, ``running``, ``done`` or ``failed``."""
        with self._lock:
            return self._state.get(project, ("new", 0.0))[0]

    def wait(self, project: int, timeout: float | None = None) -> str:
        """Wait for the project's background ensure to end (tests); returns ``status``."""
        with self._lock:
            thread = self._threads.get(project)
        if thread is not None:
            thread.join(timeout)
        return self.status(project)

    def close(self) -> None:
        """Stop waiting between attempts (threads end after their current API call)."""
        self._stop.set()

    def _run(self, project: int, ls: LabelStudioConnection) -> None:
        problem = "not tried"
        try:
            for delay in self.delays:
                if self._stop.wait(delay):
                    problem = "the web process is stopping"
                    break
                try:
                    report = ensure_webhook_auth(ls, project, self.user, self._password)
                except WebhookAuthError as exc:
                    problem = str(exc)
                    continue
                if report.found:
                    self._finish(project, "done")
                    return
                problem = (
                    f"no webhook <url>/webhook of a basic-auth ML connection with user {self.user!r} "
                    f"(basic-auth ML connections with that user: {report.backends or 'none'})"
                )
        except Exception as exc:  # never let the thread die silently
            problem = f"{type(exc).__name__}: {exc}"
        self._finish(project, "failed")
        logger.error(
            "project %s: could not give Label Studio's webhook to this backend its basic-auth credentials "
            "(%s); until it has them every annotation webhook is answered 401 and no correction is "
            "recorded. Fix: run `python -m backend webhooks ensure --project %s` with this backend's "
            "environment, or set the header 'Authorization: Basic <base64 of user:password>' on the "
            "webhook in Label Studio (project Settings > Webhooks)",
            project,
            problem,
            project,
        )

    def _finish(self, project: int, state: str) -> None:
        with self._lock:
            self._state[project] = (state, time.monotonic())


def connection_from_setup(settings: Settings, payload: Mapping[str, Any]) -> LabelStudioConnection | None:
    """The Label Studio connection a ``/setup`` body implies: ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``
    win, else its ``hostname``/``access_token``; None when a piece is missing."""

    def text(name: str) -> str | None:
        value = payload.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    url = settings.label_studio_url or text("hostname")
    api_key = settings.label_studio_api_key or text("access_token")
    if not url or not api_key or not url.startswith(("http://", "https://")):
        return None
    return LabelStudioConnection(url=url.rstrip("/"), api_key=api_key)


# ---- python -m backend webhooks ensure --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend webhooks",
        description="Manage Label Studio's webhooks to this backend.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser(
        "ensure",
        help="give the project's webhooks to this backend its basic-auth credentials",
        description="Set 'Authorization: Basic ...' (BASIC_AUTH_USER/BASIC_AUTH_PASS) on the project's "
        "webhooks <url>/webhook of ML connections that use basic auth with BASIC_AUTH_USER. Label Studio is "
        "reached with LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY, else with what its /setup call stored in "
        "REDIS_URL. Exit status 1 when a project has no such webhook or Label Studio refuses.",
    )
    ensure.add_argument("--project", type=int, action="append", required=True, help="Label Studio project id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m backend webhooks ensure --project ID``: exit status 0 ok, 1 failed, 2 usage."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.basic_auth_user is None or settings.basic_auth_pass is None:
        print("BASIC_AUTH_USER/BASIC_AUTH_PASS are not set: /webhook needs no credentials; nothing to do")
        return 0
    connection = None
    if settings.redis_url is not None:
        from backend.queues import connect

        connection = connect(settings)
    status = 0
    for project in args.project:
        ls = resolve(settings, connection, project)
        if ls is None:
            print(
                f"project {project}: no Label Studio connection: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY (or REDIS_URL of a backend Label Studio has called /setup on)",
                file=sys.stderr,
            )
            status = 1
            continue
        try:
            report = ensure_webhook_auth(ls, project, settings.basic_auth_user, settings.basic_auth_pass)
        except WebhookAuthError as exc:
            print(f"project {project}: {exc}", file=sys.stderr)
            status = 1
            continue
        for url in report.updated:
            print(f"project {project}: {url}: Authorization header set")
        for url in report.unchanged:
            print(f"project {project}: {url}: already carries the credentials")
        if not report.found:
            print(
                f"project {project}: no webhook to update: Label Studio at {ls.url} has no webhook "
                f"<url>/webhook of an ML connection with basic auth user {settings.basic_auth_user!r} "
                f"(found: {report.backends or 'no such ML connection'}); connect the backend in the "
                "project's Model settings with the backend's user and password",
                file=sys.stderr,
            )
            status = 1
    return status
