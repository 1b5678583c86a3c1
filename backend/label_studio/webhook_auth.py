"""Credentials on the webhooks Label Studio sends to this backend.

Every ``/webhook`` request must prove it comes from Label Studio (``backend.web.app``): HTTP basic auth when
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are set, else the project's webhook secret header
(``backend.label_studio.webhook_secret``). Label Studio 1.23 creates the webhook to
``<ML backend url>/webhook`` (all actions) without any header when the backend is connected, so the backend
puts the header on it through Label Studio's API (``WebhookCredentials``):

- basic auth: ``Authorization: Basic ...`` on the project's webhooks whose URL is ``<url>/webhook`` for an
  ML connection of the project that uses basic auth with this backend's user name (``GET /api/ml/?project=``;
  Label Studio already sends these credentials to that URL, so no other server gets them);
- otherwise: ``X-Cores-Webhook-Secret: <project secret>`` on the project's webhooks whose URL is
  ``<url>/webhook`` for any ML connection of the project (the secret is the project's own: whoever else gets
  it can only forge that project's events).

Other headers are kept. Where: only through the Label Studio the operator named (``LABEL_STUDIO_URL``), or,
with basic auth, the host of a ``/setup`` call that passed basic auth (``ls_connection.setup_connection``):
credentials are never pushed to a host an unauthenticated ``/setup`` named.

When: the web does it in a background thread after Label Studio's ``/setup``, once per project per process
(``WebhookAuthKeeper``), retrying for ~30 s because Label Studio creates the webhook just after its first
``/setup`` call. Failures are logged as errors with the fix; a later ``/setup`` tries again after
``FAILURE_COOLDOWN_S``. By hand: ``python -m backend webhooks ensure --project ID`` (``main``), with the
environment of the backend; ``python -m backend webhooks secret --project ID`` prints the header to set in
Label Studio (project Settings > Webhooks) yourself.
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.label_studio.connection import LabelStudioConnection, resolve
from backend.label_studio.webhook_secret import (
    SECRET_HEADER,
    WebhookSecretError,
    master_secret,
    project_secret,
)
from backend.operations.command_line import label_studio_id
from backend.operations.settings import Settings, SettingsError

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


def _attr(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


@dataclass(frozen=True)
class WebhookCredentials:
    """The header a project's webhook must carry, and which ML connections' webhooks get it.

    ``basic_user``: with basic auth, only the webhooks of ML connections using basic auth with this user;
    None (the webhook secret): the webhooks of every ML connection of the project.
    """

    header: str
    value: str = field(repr=False)
    basic_user: str | None = None

    def matches(self, backend: Any) -> bool:
        """Whether this ML connection's ``<url>/webhook`` gets the header."""
        if self.basic_user is None:
            return True
        return str(_attr(backend, "auth_method") or "") == AUTH_METHOD and (
            _attr(backend, "basic_auth_user") == self.basic_user
        )

    @property
    def kind(self) -> str:
        return "basic-auth credentials" if self.basic_user is not None else "webhook secret"


def credentials_for(settings: Settings, project: int) -> WebhookCredentials:
    """Basic auth when it is on, else ``project``'s webhook secret.

    Raises:
        backend.label_studio.webhook_secret.WebhookSecretError: the generated secret cannot be read or
        created.
    """
    if settings.basic_auth_user is not None and settings.basic_auth_pass is not None:
        return WebhookCredentials(
            HEADER,
            basic_auth_header(settings.basic_auth_user, settings.basic_auth_pass),
            settings.basic_auth_user,
        )
    return WebhookCredentials(SECRET_HEADER, project_secret(master_secret(settings), project))


@dataclass
class WebhookAuthReport:
    """What ``ensure_webhook_auth`` found: the project's ML connections that qualify (their URLs), and the
    webhook URLs whose header it set now or that already carried it."""

    project: int
    backends: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether at least one webhook to this backend now carries the credentials."""
        return bool(self.updated or self.unchanged)


def ensure_webhook_auth(
    ls: LabelStudioConnection, project: int, credentials: WebhookCredentials
) -> WebhookAuthReport:
    """Put ``credentials`` on the project's webhooks to this backend (see the module docstring).
    Idempotent: a webhook that already carries the header is not touched.

    Raises:
        WebhookAuthError: Label Studio cannot be reached, refuses the token, or refuses the update.
    """
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
        if url and credentials.matches(backend):
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
        if url.rstrip("/") not in targets or _attr(hook, "project") not in (None, project):
            continue
        raw = _attr(hook, "headers")
        headers = {str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        present = [name for name in headers if name.lower() == credentials.header.lower()]
        if present == [credentials.header] and headers[credentials.header] == credentials.value:
            report.unchanged.append(url)
            continue
        for name in present:
            del headers[name]
        headers[credentials.header] = credentials.value
        try:
            client.webhooks.update(id=int(_attr(hook, "id")), headers=headers)
        except Exception as exc:
            raise WebhookAuthError(
                f"cannot set the {credentials.header} header of webhook {_attr(hook, 'id')} ({url}) at "
                f"{ls.url}: {type(exc).__name__}: {exc}"
            ) from exc
        report.updated.append(url)
        logger.info("project %s: Label Studio's webhook %s now sends the %s", project, url, credentials.kind)
    return report


class WebhookAuthKeeper:
    """Runs ``ensure_webhook_auth`` in a background thread, once per project per process (the web's; see
    the module docstring). Thread-safe.

    Args:
        credentials: the credentials for a project (``credentials_for``).
    """

    def __init__(
        self,
        credentials: Callable[[int], WebhookCredentials],
        *,
        delays: Sequence[float] = RETRY_DELAYS_S,
        cooldown_s: float = FAILURE_COOLDOWN_S,
    ) -> None:
        self._credentials = credentials
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
        kind = "credentials"
        try:
            credentials = self._credentials(project)
            kind = credentials.kind
            for delay in self.delays:
                if self._stop.wait(delay):
                    problem = "the web process is stopping"
                    break
                try:
                    report = ensure_webhook_auth(ls, project, credentials)
                except WebhookAuthError as exc:
                    problem = str(exc)
                    continue
                if report.found:
                    self._finish(project, "done")
                    return
                problem = (
                    f"no webhook <url>/webhook of a matching ML connection (matching ML connections: "
                    f"{report.backends or 'none'})"
                )
        except Exception as exc:  # never let the thread die silently
            problem = f"{type(exc).__name__}: {exc}"
        self._finish(project, "failed")
        logger.error(
            "project %s: could not give Label Studio's webhook to this backend its %s (%s); until it has "
            "them every annotation webhook is answered 401 and no correction is recorded. Fix: run "
            "`python -m backend webhooks ensure --project %s` with this backend's environment, or set the "
            "header `python -m backend webhooks secret --project %s` prints on the webhook in Label Studio "
            "(project Settings > Webhooks)",
            project,
            kind,
            problem,
            project,
            project,
        )

    def _finish(self, project: int, state: str) -> None:
        with self._lock:
            self._state[project] = (state, time.monotonic())


# ---- python -m backend webhooks ensure|secret ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend webhooks",
        description="Manage Label Studio's webhooks to this backend.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser(
        "ensure",
        help="put this backend's credentials on the project's webhooks to it",
        description="Set 'Authorization: Basic ...' (with BASIC_AUTH_USER/BASIC_AUTH_PASS), else the "
        "project's X-Cores-Webhook-Secret, on the project's webhooks <url>/webhook of its ML connections "
        "(with basic auth: those using BASIC_AUTH_USER). Label Studio is reached at LABEL_STUDIO_URL with "
        "LABEL_STUDIO_API_KEY or the token its /setup stored in REDIS_URL; with basic auth, also at the "
        "host an authenticated /setup stored. Exit status 1 when a project has no such webhook or Label "
        "Studio refuses.",
    )
    ensure.add_argument("--project", type=label_studio_id, action="append", required=True, help="project id")
    secret = commands.add_parser(
        "secret",
        help="print the header a project's webhook must carry",
        description="Print 'X-Cores-Webhook-Secret: <value>' (or, with basic auth, the Authorization "
        "header) for the project, to set on its webhook in Label Studio by hand.",
    )
    secret.add_argument("--project", type=label_studio_id, required=True, help="Label Studio project id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m backend webhooks ensure|secret --project ID``: exit status 0 ok, 1 failed, 2 usage."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    basic = settings.basic_auth_user is not None
    try:
        if args.command == "secret":
            credentials = credentials_for(settings, args.project)
            print(f"{credentials.header}: {credentials.value}")
            return 0
        wanted = {project: credentials_for(settings, project) for project in args.project}
    except WebhookSecretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not basic and settings.label_studio_url is None:
        print(
            "LABEL_STUDIO_URL is not set: the webhook secret is only ever sent to the Label Studio you name; "
            "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY, or let Label Studio's /setup give the token), "
            "or set the header `python -m backend webhooks secret --project ID` prints yourself",
            file=sys.stderr,
        )
        return 1
    connection = None
    if settings.redis_url is not None:
        from backend.operations.redis_client import connect

        connection = connect(settings)
    status = 0
    for project, credentials in wanted.items():
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
            report = ensure_webhook_auth(ls, project, credentials)
        except WebhookAuthError as exc:
            print(f"project {project}: {exc}", file=sys.stderr)
            status = 1
            continue
        for url in report.updated:
            print(f"project {project}: {url}: {credentials.header} header set")
        for url in report.unchanged:
            print(f"project {project}: {url}: already carries the credentials")
        if not report.found:
            print(
                f"project {project}: no webhook to update: Label Studio at {ls.url} has no webhook "
                f"<url>/webhook of a matching ML connection (found: {report.backends or 'none'}); connect "
                "the backend in the project's Model settings"
                + (" with the backend's user and password" if basic else ""),
                file=sys.stderr,
            )
            status = 1
    return status
