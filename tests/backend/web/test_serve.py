"""``python -m backend serve`` for real: gunicorn, the embedded Redis and a worker subprocess."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend_server import BackendServer


@pytest.mark.slow
def test_one_command_serves_predictions_with_an_embedded_queue(tmp_path: Path, tiny_checkpoint: Path) -> None:
    # no CORES_CHECKPOINT: serve uses MODEL_DIR/tiny-demo (pre-filled here to skip building it again)
    shutil.copytree(tiny_checkpoint, tmp_path / "models" / "tiny-demo")
    server = BackendServer(tmp_path, checkpoint=None, redis_url=None).start()
    try:
        health = requests.get(f"{server.url}/health", timeout=5).json()
        assert {k: health[k] for k in ("status", "model_class", "model_version")} == {
            "status": "UP",
            "model_class": "CoReS",
            "model_version": "cores-tiny-demo",
        }

        body = predict_body([(1, {"image": data_uri(png_bytes(20, 10))})], prompt="the dog")
        answer = requests.post(f"{server.url}/predict", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        [prediction] = answer.json()["results"]
        assert [r["value"]["brushlabels"] for r in prediction["result"]] == [
            ["Context (level 1)"],
            ["Target (level 2)"],
        ]
        assert prediction["model_version"] == "cores-tiny-demo"
        again = requests.post(f"{server.url}/predict", json=body, timeout=60)
        assert again.json()["results"][0]["score"] == prediction["score"]
        assert (tmp_path / "models" / "queue" / "redis.db.settings").exists()
    finally:
        codes = server.stop()
    assert codes == [0]
    log = server.log_path.read_text()
    assert "RANDOM NOISE" in log  # the loud demo-checkpoint warning
    assert "embedded Redis stopped" in log
    assert "worker exited with code 0" in log
    assert log.count("loading CoReS checkpoint") == 1  # the worker loads the model once, not per job
    assert log.count("predicted 1 tasks") == 2
