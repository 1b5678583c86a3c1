"""The correction loop through a real Label Studio, with credentials on: annotations become corrections,
the project's "Start training" trains a version, and that version serves that project only.

Label Studio's "Start training" (``POST /api/ml/<id>/train``) sends ``START_TRAINING`` to ``/webhook``
through its ML connection, which carries the connection's basic-auth user and password (and no custom
header): so training from Label Studio needs basic auth; with the webhook secret alone it is refused and
``python -m backend train`` is the way. The backend runs in the one-command mode (its own embedded Redis
and worker), so no other test's worker takes its training job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from backend.corrections.held_out import key_position
from tests.backend_server import BackendServer, correction_records
from tests.e2e.label_studio import LabelStudioServer
from tests.e2e.test_backend_e2e import (
    SHIPPED_CONFIG,
    annotation_result,
    create_project,
    diagnostics,
    import_json_tasks,
    png_bytes,
    wait_for,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import ImageHttpServer

pytestmark = pytest.mark.e2e

USER, PASSWORD = "label-studio", "e2e-train-secret"
SIZE = (80, 60)


def test_start_training_in_label_studio_trains_a_version_served_to_that_project(
    label_studio: LabelStudioServer,
    tiny_checkpoint: Path,
    tmp_path: Path,
    image_http_server: ImageHttpServer,
) -> None:
    client = label_studio.sdk()
    (image_http_server.root / "train.png").write_bytes(png_bytes(*SIZE, seed=4))
    url = image_http_server.url_for("train.png")
    project = create_project(client, "cores e2e training", SHIPPED_CONFIG)
    images = [f"{url}?n={i}" for i in range(3)]
    tasks = import_json_tasks(client, project, [{"image": image} for image in images])
    # hold exactly one task out for evaluation (the split is a hash of project:task:image), open the gate
    positions = sorted(
        key_position(f"{project}:{task}:{image}") for task, image in zip(tasks, images, strict=True)
    )
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "BASIC_AUTH_USER": USER,
        "BASIC_AUTH_PASS": PASSWORD,
        "MIN_TRAIN_SAMPLES": "2",
        "TRAIN_STEPS": "1",
        "EVAL_FRACTION": repr((positions[0] + positions[1]) / 2),
        "MIN_EVAL_SAMPLES": "1",
        "PROMOTE_MARGIN": "-1",
        "PROMOTE_TOLERANCE": "1",
    }
    with BackendServer(tmp_path / "trainer", checkpoint=tiny_checkpoint, redis_url=None, env=env) as backend:
        base = requests.get(f"{backend.url}/health", timeout=5).json()["model_version"]
        ml = client.ml.create(
            project=project,
            url=backend.url,
            is_interactive=True,
            title="CoReS (training)",
            auth_method="BASIC_AUTH",
            basic_auth_user=USER,
            basic_auth_pass=PASSWORD,
        )
        assert ml.id is not None

        def webhook_has_credentials() -> bool:
            hooks: list[dict[str, Any]] = label_studio.api("GET", f"/api/webhooks/?project={project}").json()
            return bool(hooks) and all("Authorization" in (hook["headers"] or {}) for hook in hooks)

        wait_for(
            webhook_has_credentials,
            30.0,
            "the webhook's credentials",
            lambda: diagnostics(label_studio, backend),
        )
        for task in tasks:
            client.annotations.create(id=task, result=annotation_result(SIZE))
        wait_for(
            lambda: len(correction_records(backend, project)) >= 3,
            30.0,
            "the three corrections in the log",
            lambda: diagnostics(label_studio, backend),
        )

        answer = label_studio.api("POST", f"/api/ml/{ml.id}/train", json={"use_ground_truth": False})
        assert answer.status_code < 300, answer.text + diagnostics(label_studio, backend)
        pointer = backend.workdir / "models" / "versions" / "projects" / str(project)
        wait_for(pointer.exists, 240.0, "the trained version", lambda: diagnostics(label_studio, backend))
        version = json.loads(pointer.read_text())["version"]
        assert version != base

        def setup_version(project_id: int) -> str:
            body = {"project": f"{project_id}.1"}
            found: str = requests.post(
                f"{backend.url}/setup", json=body, auth=(USER, PASSWORD), timeout=5
            ).json()["model_version"]
            return found

        assert setup_version(project) == version  # the project that trained it is served it
        assert setup_version(project + 1000) == base  # every other project keeps the base
        assert not (backend.workdir / "models" / "versions" / "current").exists()
        info = json.loads((backend.workdir / "models" / "versions" / version / "version.json").read_text())
        assert info["samples"]["exported"] == 2  # the held-out task was not trained on
        assert info["held_out"]["records"] == 1
        assert info["metrics"]["before"]["count"] == info["metrics"]["after"]["count"] == 1
        assert info["gate"]["promoted"] is True
