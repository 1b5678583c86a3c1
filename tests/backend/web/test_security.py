"""The attacks of the outside test against /setup and /webhook, replayed: the token stays with Label Studio,
and nothing unauthenticated changes what is served.

A second local HTTP server that logs every request's headers (``FakeHost``) stands for the attacker's host;
the fake Label Studio holds the real token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker

from backend.jobs import queues
from backend.jobs.worker import load_model
from backend.label_studio.connection import resolve
from backend.label_studio.webhook_secret import SECRET_HEADER, master_secret, project_secret
from backend.operations.settings import Settings
from backend.versions.store import VersionStore
from backend.web.app import create_app
from tests.backend.conftest import run_with_worker
from tests.backend.fake_hosts import FakeHost
from tests.backend.fake_label_studio import TOKEN, FakeLabelStudio, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.webhook_fixtures import load

PROJECT = 5


@pytest.fixture
def attacker() -> FakeHost:
    host = FakeHost()
    host.files({"/data/upload/1/cat.png": png_bytes(16, 12, seed=9)})
    yield host
    host.stop()


def interactive(client, worker: SimpleWorker, project: int = PROJECT) -> dict:
    body = predict_body([(1, {"image": "/data/upload/1/cat.png"})], prompt="the cat")
    body["project"] = f"{project}.1795672559"
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]


def test_a_setup_with_only_a_hostname_cannot_take_the_token_elsewhere(
    settings: Settings,
    redis_conn: redis.Redis,
    fake_ls: FakeLabelStudio,
    worker: SimpleWorker,
    attacker: FakeHost,
) -> None:
    learned = settings.with_changes(label_studio_url=None, label_studio_api_key=None)  # learn from /setup
    load_model(learned)  # the worker too knows Label Studio only from /setup
    client = create_app(learned, connection=redis_conn).test_client()
    fake_ls.images["1/cat.png"] = png_bytes(16, 12, seed=1)
    real = {"project": f"{PROJECT}.1", "hostname": fake_ls.url, "access_token": TOKEN}
    assert client.post("/setup", json=real).status_code == 200

    # the attack: re-point the project at the attacker's host, with no token (or with one of its own)
    assert (
        client.post("/setup", json={"project": f"{PROJECT}.1", "hostname": attacker.url}).status_code == 200
    )
    hijack = {"project": f"{PROJECT}.1", "hostname": attacker.url, "access_token": "attacker-token"}
    assert client.post("/setup", json=hijack).status_code == 200
    assert (
        client.post("/setup", json={"project": f"{PROJECT}.1", "access_token": "x" * 40}).status_code == 200
    )
    found = resolve(learned, redis_conn, PROJECT)
    assert found is not None
    assert (found.url, found.api_key) == (fake_ls.url, TOKEN)

    result = interactive(client, worker)  # a job of that project fetches a Label Studio upload
    assert "error" not in result, result
    assert attacker.seen == []  # the attacker's server saw no request, so no token
    assert "GET /data/upload/1/cat.png" in fake_ls.calls


def test_only_the_operators_label_studio_is_exempt_from_the_address_checks(
    settings: Settings, redis_conn: redis.Redis, fake_ls: FakeLabelStudio, worker: SimpleWorker
) -> None:
    fake_ls.images["1/cat.png"] = png_bytes(16, 12, seed=1)
    setup = {"project": f"{PROJECT}.1", "hostname": fake_ls.url, "access_token": TOKEN}

    learned = settings.with_changes(
        label_studio_url=None, label_studio_api_key=None, allow_private_networks=False
    )
    load_model(learned)
    client = create_app(learned, connection=redis_conn).test_client()
    assert client.post("/setup", json=setup).status_code == 200
    refused = interactive(client, worker)
    assert refused["error"]["reason"] == "forbidden_host", refused  # a loopback host learned from /setup
    assert fake_ls.calls == []

    redis_conn.flushdb()
    named = learned.with_changes(label_studio_url=fake_ls.url)  # the operator names it; the token: /setup's
    load_model(named)
    client = create_app(named, connection=redis_conn).test_client()
    assert client.post("/setup", json=setup).status_code == 200
    assert "error" not in interactive(client, worker)


def test_forged_webhooks_are_refused_and_record_nothing(
    settings: Settings, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_app(settings, connection=redis_conn).test_client()  # a forger: no secret
    body = load("annotation_created.json")
    project = body["project"]["id"]
    master = master_secret(settings)
    with caplog.at_level(logging.WARNING, logger="backend.web.app"):
        for i in range(25):
            body["annotation"]["id"] = 1000 + i
            assert client.post("/webhook", json=body).status_code == 401
        other = {SECRET_HEADER: project_secret(master, project + 1)}  # another project's secret
        assert client.post("/webhook", json=body, headers=other).status_code == 401
        train = {"action": "START_TRAINING", "project": {"id": project}}
        answer = client.post("/webhook", json=train)
    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "unauthorized"
    assert "this event is NOT recorded" in caplog.text
    assert "webhooks ensure" in caplog.text
    assert queues.get_queue(redis_conn, queues.TRAIN).count == 0
    assert not (settings.model_dir / "corrections.sqlite3").exists()

    signed = {SECRET_HEADER: project_secret(master, project)}
    assert client.post("/webhook", json=body, headers=signed).get_json()["status"] == "created"
    assert client.post("/webhook", json=train, headers=signed).get_json()["status"] == "queued"


def test_a_version_trained_on_one_project_serves_that_project_only(tmp_path: Path) -> None:
    store = VersionStore(tmp_path, "cores-base", "/base")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text("{}")
    published = store.publish(staged, {"parent": "cores-base"}, project=3)
    name = published.version.name
    assert published.current
    assert store.served(project=3).name == name
    assert store.served(project=3).source == "project"
    assert store.served(project=4).name == "cores-base"
    assert store.served().name == "cores-base"
    store.set_current(name, pinned=False, reason="promoted", project=None)  # `versions promote NAME`
    assert store.served(project=4).name == name
    store.rollback(3)
    assert store.served(project=3).name == "cores-base"  # project 3's own pointer, pinned to the parent
    assert store.served(project=4).name == name
    assert store.reset(3) is not None
    assert store.served(project=3).name == name
