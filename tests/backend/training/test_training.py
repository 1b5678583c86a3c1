"""The correction loop end to end in one process: annotation webhooks -> START_TRAINING -> the train job
(export, a few fine-tune steps on the tiny checkpoint, publish) -> the same worker serves the new version;
a pin in the environment and a rollback from the command line switch it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import SimpleWorker

from backend.corrections.export import select_records
from backend.corrections.held_out import split_records
from backend.corrections.store import CorrectionStore, correction_store_path
from backend.jobs import queues
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.jobs.worker import get_context, load_model
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.operations.loop_settings import LoopSettings
from backend.operations.settings import Settings
from backend.operations.version_names import PIN_ENV
from backend.training.requests import TrainRequest, request_training
from backend.versions.cli import versions_main
from backend.versions.serving import served_version
from backend.web.app import create_app
from tests.backend.conftest import run_with_worker, work
from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.webhook_fixtures import L1, L2, H, W, annotation_payload, brush, prompt, rect

BASE = "cores-cores"
PROJECT = 3


def correction(index: int) -> dict[str, Any]:
    """An ANNOTATION_CREATED body: a data: URI image, a query, a table (level 1) and a cup on it (level 2)."""
    y, x = 4 + 3 * index, 6 + 5 * index
    return annotation_payload(
        "ANNOTATION_CREATED",
        500 + index,
        60 + index,
        f"2025-03-04T10:00:0{index}Z",
        [
            prompt(f"the cup number {index} on the table"),
            brush(f"ctx{index}", rect(y, x, y + 30, x + 36), L1),
            brush(f"tgt{index}", rect(y + 8, x + 10, y + 18, x + 20), L2),
        ],
        project_id=PROJECT,
        task_extra={"data": {"image": data_uri(png_bytes(W, H, seed=index))}},
    )


def record_corrections(client: FlaskClient, count: int) -> None:
    for i in range(count):
        answer = client.post("/webhook", json=correction(i)).get_json()
        assert answer["status"] == "created", answer


def predict(client: FlaskClient, worker: SimpleWorker, project: int = PROJECT) -> dict[str, Any]:
    body = predict_body([(7, {"image": data_uri(png_bytes(W, H, seed=9))})], prompt="the cup")
    body["project"] = f"{project}.1795672559"
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200, response.get_json()
    answer: dict[str, Any] = response.get_json()
    assert answer["results"][0]["model_version"] == answer["model_version"]
    return answer


def reports(client: FlaskClient, project: int = PROJECT) -> tuple[str, str]:
    """What /setup (for ``project``) and /versions (every project's) say the model version is."""
    setup = client.post("/setup", json={"project": f"{project}.1"}).get_json()["model_version"]
    return setup, client.get("/versions").get_json()["model_version"]


#: A gate that passes whatever the scores (a margin of -1), with one held-out sample enough.
OPEN_GATE = LoopSettings(eval_fraction=0.3, promote_margin=-1.0, promote_tolerance=1.0, min_eval_samples=1)


@pytest.fixture
def train_settings(settings: Settings) -> Settings:
    """The worker's settings for training runs that fit a test: 4 samples suffice, 3 steps, an open gate."""
    return settings.with_changes(min_train_samples=4, train_steps=3, loop=OPEN_GATE)


def held_out_split(settings: Settings) -> tuple[list[int], list[int]]:
    """(task ids trained on, task ids held out) of the recorded corrections."""
    with CorrectionStore(correction_store_path(settings)) as store:
        train, held = split_records(select_records(store, project=PROJECT), OPEN_GATE.eval_fraction)
    return [r.task_id for r in train], [r.task_id for r in held]


def test_corrections_train_a_new_version_that_workers_serve_pin_and_roll_back(
    client: FlaskClient,
    worker: SimpleWorker,
    settings: Settings,
    train_settings: Settings,
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_model(train_settings)  # the worker's process was started with these settings
    record_corrections(client, 6)
    trained_on, held_out = held_out_split(settings)
    assert len(held_out) >= 1, (trained_on, held_out)
    assert len(trained_on) >= 4, (trained_on, held_out)

    clicked = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}
    ).get_json()
    again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    assert (clicked["status"], again["status"], again["job"]) == ("queued", "already_queued", clicked["job"])
    assert work(worker)  # the worker takes the training job

    info = client.get(f"/jobs/{clicked['job']}?result=1").get_json()
    assert info["status"] == "finished", info["error"]
    result = info["result"]
    version = result["version"]
    assert version.startswith("v1-")
    assert (result["parent"], result["current"], result["held_by"]) == (BASE, True, None)
    n_train, n_held = len(trained_on), len(held_out)
    assert result["samples"] == {"exported": n_train, "train": n_train, "validation": n_held}
    assert result["steps"] == 3
    for when in ("before", "after"):  # the served version and the new one, on the same held-out split
        assert result["metrics"][when]["count"] == n_held
        assert 0.0 <= result["metrics"][when]["giou"] <= 1.0
        assert [lv["level"] for lv in result["metrics"][when]["levels"]] == [1, 2]
        for level in result["metrics"][when]["levels"]:
            assert level["mean_correction"] == pytest.approx(1.0 - level["giou"], abs=1e-4)
            assert 0.0 <= level["correction_rate"] <= 1.0
    assert result["gate"]["promoted"] is True
    assert "PROMOTE_MARGIN=-1.0" in result["gate"]["reason"]

    folder = settings.model_dir / "versions" / version
    meta = json.loads((folder / "version.json").read_text())
    assert (meta["name"], meta["parent"], meta["samples"]["exported"]) == (version, BASE, n_train)
    assert meta["metrics"] == result["metrics"]
    assert meta["gate"] == result["gate"]
    assert meta["held_out"]["records"] == n_held
    assert meta["created_at"].endswith("Z")
    assert Path(result["report"]) == folder / "finetune.json"
    assert json.loads((folder / "finetune.json").read_text())["steps"] == 3
    assert (folder / "config.json").is_file()
    assert not (folder / "trainer_state").exists()
    data = Path(meta["training"]["data"])
    assert data.parent.parent == settings.model_dir / "training"
    assert len((data / "manifest.jsonl").read_text().splitlines()) == n_train
    # never trained on the held-out records: they are exported beside the training data only
    manifest = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    assert sorted(int(row["task"]) for row in manifest) == sorted(trained_on)
    held_rows = (data.parent / "held_out" / "manifest.jsonl").read_text().splitlines()
    assert sorted(int(json.loads(row)["task"]) for row in held_rows) == sorted(held_out)
    # trained on project 3's corrections: served to project 3 only (its own pointer), not to every project
    pointer = settings.model_dir / "versions" / "projects" / str(PROJECT)
    assert json.loads(pointer.read_text())["version"] == version
    assert not (settings.model_dir / "versions" / "current").exists()

    # the same worker, between jobs, serves the job's version; the web reports it per project
    assert predict(client, worker)["model_version"] == version
    assert get_context().model_version == version
    assert get_context().checkpoint == str(folder)
    assert reports(client) == (version, BASE)
    assert reports(client, project=4) == (BASE, BASE)
    assert predict(client, worker, project=4)["model_version"] == BASE  # switched back for project 4
    assert client.get("/versions").get_json()["versions"] == [BASE, version]

    # an operator promotes it for every project
    monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("CORES_CHECKPOINT", str(settings.checkpoint))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    assert versions_main(["promote", version]) == 0
    assert reports(client, project=4) == (version, version)
    assert predict(client, worker, project=4)["model_version"] == version

    # a job enqueued for the base version is answered by the base version (the worker loads it)
    request = PredictRequest(
        tasks=(TaskInput(id=8, image=data_uri(png_bytes(W, H, seed=3)), query="the cup"),),
        schema=parse_label_config(shipped_label_config()),
        model_version=BASE,
    ).to_json()
    job = queues.enqueue(redis_conn, settings, queues.BULK, queues.PREDICT_JOB, request)
    assert work(worker)
    outcome = queues.job_outcome(redis_conn, job.id)
    assert outcome is not None
    assert outcome[1] is None
    value = outcome[0]
    assert (value["model_version"], value["requested_version"]) == (BASE, BASE)
    assert value["results"][0]["model_version"] == BASE

    # CORES_MODEL_VERSION pins the base in processes started with it
    pinned = Settings.from_env({**train_settings.to_env(), PIN_ENV: BASE})
    load_model(pinned)
    pinned_client = create_app(pinned, connection=redis_conn).test_client()
    assert predict(pinned_client, worker)["model_version"] == BASE
    assert reports(pinned_client) == (BASE, BASE)

    # back without the pin: the pointers' version; then `versions rollback` serves its parent
    load_model(train_settings)
    assert get_context().model_version == version
    assert versions_main(["rollback", "--project", str(PROJECT)]) == 0
    assert reports(client) == (BASE, version)  # the web: at once, for project 3 only
    assert predict(client, worker)["model_version"] == BASE  # the worker: at its next job
    assert get_context().model_version == BASE
    assert served_version(settings, project=PROJECT).pinned
    assert versions_main(["rollback"]) == 0
    assert reports(client, project=4) == (BASE, BASE)


def test_training_refuses_too_few_corrections_with_a_clear_job_error(
    client: FlaskClient, worker: SimpleWorker, settings: Settings, redis_conn: redis.Redis
) -> None:
    load_model(settings)  # MIN_TRAIN_SAMPLES: 20
    no_store = request_training(redis_conn, settings, TrainRequest(project=PROJECT))
    assert work(worker)
    assert "no corrections recorded yet" in client.get(f"/jobs/{no_store.job_id}").get_json()["error"]

    record_corrections(client, 2)
    queued = request_training(redis_conn, settings, TrainRequest(project=PROJECT))
    assert queued.created
    assert queued.job_id != no_store.job_id
    assert work(worker)
    info = client.get(f"/jobs/{queued.job_id}").get_json()
    assert info["status"] == "failed"
    assert "TrainingError: project 3: 2 correction(s) match" in info["error"]
    assert "training needs at least 20 (MIN_TRAIN_SAMPLES)" in info["error"]

    few = request_training(redis_conn, settings, TrainRequest(project=PROJECT, min_samples=2, steps=1))
    with pytest.MonkeyPatch.context() as patch:  # every image fetch fails: nothing can be exported
        from backend.training import job as training

        class Broken:
            def fetch(self, ref: str, task_id: int | None = None) -> object:
                raise OSError("image host down")

        patch.setattr(training, "image_fetcher", lambda ls: Broken())
        assert work(worker)
    error = client.get(f"/jobs/{few.job_id}").get_json()["error"]
    assert "only 0 of 2 correction(s) could be exported" in error
    assert "'image_error': 2" in error
    assert not (settings.model_dir / "versions" / "current").exists()
    assert get_context().model_version == BASE  # the worker still serves
    assert reports(client) == (BASE, BASE)


def test_a_version_the_gate_refuses_stays_a_candidate_until_an_operator_promotes_it(
    client: FlaskClient,
    worker: SimpleWorker,
    settings: Settings,
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = LoopSettings(eval_fraction=0.3, promote_margin=1.0, promote_tolerance=0.0, min_eval_samples=1)
    load_model(settings.with_changes(min_train_samples=4, train_steps=2, loop=closed))
    record_corrections(client, 6)
    queued = request_training(redis_conn, settings, TrainRequest(project=PROJECT))
    assert work(worker)
    info = client.get(f"/jobs/{queued.job_id}?result=1").get_json()
    assert info["status"] == "finished", info["error"]
    result = info["result"]
    version = result["version"]
    assert (result["current"], result["gate"]["promoted"]) == (False, False)
    before, after = result["metrics"]["before"]["giou"], result["metrics"]["after"]["giou"]
    assert result["gate"]["reason"] == (
        f"final-level gIoU {after:.4f} vs served {before:.4f} ({after - before:+.4f}) does not beat it by "
        "PROMOTE_MARGIN=1.0"
    )
    assert result["held_by"] == f"the promotion gate: {result['gate']['reason']}"
    assert not (settings.model_dir / "versions" / "projects" / str(PROJECT)).exists()  # nothing moved
    assert reports(client) == (BASE, BASE)
    assert predict(client, worker)["model_version"] == BASE

    monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("CORES_CHECKPOINT", str(settings.checkpoint))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    capsys.readouterr()
    assert versions_main(["list"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.lstrip(" *").startswith(version))
    levels = sorted(result["metrics"]["after"]["levels"], key=lambda level: level["level"])
    assert "/".join(f"{lv['giou']:.3f}" for lv in levels) in row
    assert row.rstrip().endswith("candidate")
    assert f"{version}: candidate: {result['gate']['reason']}" in listing

    assert versions_main(["promote", version, "--project", str(PROJECT)]) == 0  # the operator overrides
    assert reports(client) == (version, BASE)
    assert predict(client, worker)["model_version"] == version
