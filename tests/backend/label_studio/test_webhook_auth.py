"""With BASIC_AUTH_USER/PASS set, Label Studio's webhooks to the backend get the credentials
(``backend.label_studio.webhook_auth``): after /setup in a background thread, and by
``python -m backend webhooks ensure``; a /webhook answered 401 is logged as a WARNING. The fake Label Studio
stands in for its API."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from backend.label_studio.connection import LabelStudioConnection
from backend.label_studio.webhook_auth import (
    WebhookAuthKeeper,
    WebhookCredentials,
    basic_auth_header,
    credentials_for,
    ensure_webhook_auth,
    main,
)
from backend.label_studio.webhook_secret import SECRET_HEADER, master_secret, project_secret
from backend.operations.settings import Settings
from backend.web.app import create_app
from tests.backend.fake_label_studio import TOKEN, FakeLabelStudio

USER, PASSWORD = "label-studio", "s3cret"
HEADER = basic_auth_header(USER, PASSWORD)
BASIC = WebhookCredentials("Authorization", HEADER, USER)
BACKEND = "http://backend:9090"


def connect(fake_ls: FakeLabelStudio, project: int = 3, *, hook_id: int = 10) -> None:
    """Label Studio's state after the backend was connected to ``project`` with basic auth: the ML
    connection and the webhook it created (no headers); plus other servers' connections and webhooks."""
    fake_ls.ml_backends += [
        {
            "id": hook_id,
            "project": project,
            "url": f"{BACKEND}/",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": USER,
        },
        {"id": hook_id + 1, "project": project, "url": "http://other:9090", "auth_method": "NONE"},
        {
            "id": hook_id + 2,
            "project": project,
            "url": "http://third:9090",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "someone-else",
        },
    ]
    fake_ls.webhooks += [
        {"id": hook_id, "project": project, "url": f"{BACKEND}/webhook", "headers": {"X-Keep": "1"}},
        {"id": hook_id + 1, "project": project, "url": "http://other:9090/webhook", "headers": {}},
        {"id": hook_id + 2, "project": project, "url": "http://third:9090/webhook", "headers": {}},
    ]


def headers_of(fake_ls: FakeLabelStudio) -> dict[int, Any]:
    return {hook["id"]: hook["headers"] for hook in fake_ls.webhooks}


def patches(fake_ls: FakeLabelStudio) -> list[str]:
    return [call for call in fake_ls.calls if call.startswith("PATCH")]


def test_only_the_webhooks_of_this_backends_connections_get_the_credentials(fake_ls: FakeLabelStudio) -> None:
    connect(fake_ls, 3)
    connect(fake_ls, 4, hook_id=20)
    ls = LabelStudioConnection(fake_ls.url, TOKEN)

    report = ensure_webhook_auth(ls, 3, BASIC)

    assert (report.backends, report.updated, report.unchanged) == ([BACKEND], [f"{BACKEND}/webhook"], [])
    assert headers_of(fake_ls) == {
        10: {"X-Keep": "1", "Authorization": HEADER},  # other headers are kept
        11: {},
        12: {},
        20: {"X-Keep": "1"},  # another project's
        21: {},
        22: {},
    }
    again = ensure_webhook_auth(ls, 3, BASIC)  # idempotent: nothing is written twice
    assert (again.updated, again.unchanged) == ([], [f"{BACKEND}/webhook"])
    assert patches(fake_ls) == ["PATCH /api/webhooks/10/"]

    fake_ls.webhooks[0]["headers"] = {"authorization": "Basic old"}  # stale credentials are replaced
    assert ensure_webhook_auth(ls, 3, BASIC).updated == [f"{BACKEND}/webhook"]
    assert fake_ls.webhooks[0]["headers"] == {"Authorization": HEADER}
    assert not ensure_webhook_auth(ls, 5, BASIC).found  # a project without our connection


def guarded(settings: Settings, redis_conn: redis.Redis) -> FlaskClient:
    app = create_app(
        settings.with_changes(basic_auth_user=USER, basic_auth_pass=PASSWORD), connection=redis_conn
    )
    return app.test_client()


def keeper_of(client: FlaskClient) -> WebhookAuthKeeper:
    keeper: WebhookAuthKeeper | None = client.application.extensions["cores"].webhook_auth
    assert keeper is not None
    return keeper


def test_setup_gives_the_webhook_the_credentials_in_the_background(
    settings: Settings, redis_conn: redis.Redis, fake_ls: FakeLabelStudio
) -> None:
    client = guarded(settings, redis_conn)
    setup = {"project": "3.1795672559", "schema": "<View/>", "hostname": fake_ls.url, "access_token": TOKEN}

    started = time.monotonic()
    answer = client.post("/setup", json=setup, auth=(USER, PASSWORD))
    assert answer.status_code == 200
    assert time.monotonic() - started < 0.5  # Label Studio's /setup timeout is 3 s
    # Label Studio creates the webhook only after its first /setup answered: the keeper retries
    time.sleep(0.8)
    connect(fake_ls, 3)
    assert keeper_of(client).wait(3, timeout=20) == "done"
    assert fake_ls.webhooks[0]["headers"] == {"X-Keep": "1", "Authorization": HEADER}

    fake_ls.calls.clear()
    assert client.post("/setup", json=setup, auth=(USER, PASSWORD)).status_code == 200
    assert keeper_of(client).status(3) == "done"
    time.sleep(0.2)
    assert fake_ls.calls == []  # once per project per process


def test_without_basic_auth_setup_gives_every_connections_webhook_the_project_secret(
    client: FlaskClient, fake_ls: FakeLabelStudio, settings: Settings
) -> None:
    connect(fake_ls, 3)
    setup = {"project": "3.1", "hostname": fake_ls.url, "access_token": TOKEN}
    assert client.post("/setup", json=setup).status_code == 200
    assert keeper_of(client).wait(3, timeout=20) == "done"
    secret = project_secret(master_secret(settings), 3)
    assert {hook["id"]: hook["headers"].get(SECRET_HEADER) for hook in fake_ls.webhooks} == {
        10: secret,
        11: secret,
        12: secret,
    }
    assert secret != project_secret(master_secret(settings), 4)  # a project's secret is its own


def test_a_learned_label_studio_host_never_gets_the_secret(
    settings: Settings, redis_conn: redis.Redis, fake_ls: FakeLabelStudio
) -> None:
    """Without LABEL_STUDIO_URL the host comes from an unauthenticated /setup: nothing is pushed to it."""
    learned = settings.with_changes(label_studio_url=None, label_studio_api_key=None)
    client = create_app(learned, connection=redis_conn).test_client()
    connect(fake_ls, 3)
    setup = {"project": "3.1", "hostname": fake_ls.url, "access_token": TOKEN}
    assert client.post("/setup", json=setup).status_code == 200
    time.sleep(1.0)
    assert keeper_of(client).status(3) == "new"
    assert fake_ls.calls == []
    assert all(SECRET_HEADER not in hook["headers"] for hook in fake_ls.webhooks)


def test_a_failed_ensure_is_logged_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    keeper = WebhookAuthKeeper(lambda project: BASIC, delays=(0.0,), cooldown_s=60.0)
    ls = LabelStudioConnection("http://127.0.0.1:1", TOKEN)  # nothing listens
    with caplog.at_level(logging.ERROR, logger="backend.label_studio.webhook_auth"):
        assert keeper.schedule(7, ls)
        assert keeper.wait(7, timeout=30) == "failed"
    assert "every annotation webhook is answered 401" in caplog.text
    assert "python -m backend webhooks ensure --project 7" in caplog.text
    assert PASSWORD not in caplog.text
    assert not keeper.schedule(7, ls)  # cooling down: later /setup calls do not hammer Label Studio


def test_webhook_401_is_a_warning(
    settings: Settings, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = guarded(settings, redis_conn)
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}
    with caplog.at_level(logging.WARNING, logger="backend.web.app"):
        assert client.post("/webhook", json=body).status_code == 401
        assert client.post("/webhook", json=body, auth=(USER, "wrong")).status_code == 401
        assert client.post("/setup", json={}).status_code == 401
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "answered 401 (no credentials)" in warnings[0]
    assert "answered 401 (wrong credentials)" in warnings[1]
    assert "webhooks ensure" in warnings[0]
    ok = client.post("/webhook", json={"action": "PROJECT_UPDATED"}, auth=(USER, PASSWORD))
    assert ok.status_code == 200


def test_webhooks_ensure_command(
    fake_ls: FakeLabelStudio,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    connect(fake_ls, 3)
    for name in list(os.environ):
        if name.startswith(("BASIC_AUTH_", "LABEL_STUDIO_", "REDIS_URL", "WEBHOOK_SECRET")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert main(["ensure", "--project", "3"]) == 1  # the secret goes only to a named Label Studio
    assert "LABEL_STUDIO_URL is not set" in capsys.readouterr().err
    assert main(["secret", "--project", "3"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"{SECRET_HEADER}: ")
    assert printed.split(": ", 1)[1] == credentials_for(Settings(model_dir=tmp_path), 3).value

    monkeypatch.setenv("BASIC_AUTH_USER", USER)
    monkeypatch.setenv("BASIC_AUTH_PASS", PASSWORD)
    assert main(["ensure", "--project", "3"]) == 1  # no Label Studio known
    assert "no Label Studio connection" in capsys.readouterr().err

    monkeypatch.setenv("LABEL_STUDIO_URL", fake_ls.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    assert main(["ensure", "--project", "3"]) == 0
    assert capsys.readouterr().out == f"project 3: {BACKEND}/webhook: Authorization header set\n"
    assert fake_ls.webhooks[0]["headers"]["Authorization"] == HEADER
    assert main(["ensure", "--project", "3", "--project", "9"]) == 1
    out = capsys.readouterr()
    assert "already carries the credentials" in out.out
    assert "project 9: no webhook to update" in out.err
