"""``python -m backend warm``: a project's images encoded into the store by the workers, resumably."""

from __future__ import annotations

import hashlib

import pytest
import redis
from rq import SimpleWorker

from backend.bulk.preannotate import PreannotateError
from backend.bulk.warm_project import warm_project
from backend.cli import main
from backend.jobs.worker import get_pipeline
from backend.operations.settings import Settings
from cores.inference.image_keys import encoded_image_key
from tests.backend.conftest import work
from tests.backend.fake_label_studio import FakeLabelStudio, png_bytes


def _tasks(fake_ls: FakeLabelStudio) -> None:
    fake_ls.images = {"1/a.png": png_bytes(12, 10, seed=1), "1/b.png": png_bytes(10, 12, seed=2)}
    fake_ls.tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/a.png"}},
        {"id": 2, "data": {"image": "/data/upload/1/b.png", "query": "the plate"}},
        {"id": 3, "data": {"image": "/data/upload/1/missing.png"}},
        {"id": 4, "data": {}},
    ]


def test_warm_encodes_every_image_once_and_resumes(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    _tasks(fake_ls)
    summary = warm_project(
        settings, redis_conn, 1, batch_size=2, progress=False, sleep=lambda _: work(worker)
    )
    assert (summary.total, summary.warmed, summary.stored, summary.failed) == (4, 2, 0, 2)
    assert any("task 3" in error and "404" in error for error in summary.errors)
    assert any("task 4" in error and "no image URL" in error for error in summary.errors)
    encodings = get_pipeline().encodings
    assert encodings is not None
    for name in ("1/a.png", "1/b.png"):
        assert encodings.contains(encoded_image_key(hashlib.sha256(fake_ls.images[name]).hexdigest()))

    again = warm_project(settings, redis_conn, 1, batch_size=2, progress=False, sleep=lambda _: work(worker))
    assert (again.warmed, again.stored) == (0, 2)  # resumable: stored images are not encoded again


def test_warm_refuses_without_a_store_or_credentials(settings: Settings, redis_conn: redis.Redis) -> None:
    with pytest.raises(PreannotateError, match="ENCODING_STORE_BYTES=0"):
        warm_project(settings.with_changes(encoding_store_bytes=0), redis_conn, 1, progress=False)
    with pytest.raises(PreannotateError, match="LABEL_STUDIO_URL"):
        warm_project(settings.with_changes(label_studio_url=None), redis_conn, 1, progress=False)


def test_warm_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["warm", "--help"])
    assert exited.value.code == 0
    assert "--project" in capsys.readouterr().out
