"""Bulk pre-annotation against the fake Label Studio, with the in-process worker."""

from __future__ import annotations

import pytest
import redis
from rq import SimpleWorker

from backend.bulk.preannotate import PreannotateError, preannotate
from backend.operations.settings import Settings
from tests.backend.conftest import work
from tests.backend.fake_label_studio import FakeLabelStudio, png_bytes


def _tasks(fake_ls: FakeLabelStudio) -> None:
    fake_ls.images = {"1/a.png": png_bytes(12, 10, seed=1), "1/b.png": png_bytes(10, 12, seed=2)}
    fake_ls.tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/a.png", "query": "the cup"}},
        {"id": 2, "data": {"image": "/data/upload/1/b.png", "query": "the plate"}},
        {"id": 3, "data": {"image": "/data/upload/1/missing.png", "query": "the bowl"}},
        {"id": 4, "data": {"image": "/data/upload/1/a.png"}},
        {"id": 5, "data": {"image": "/data/upload/1/b.png", "query": "the fork"}},
    ]


def test_preannotate_writes_predictions_and_resumes(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    _tasks(fake_ls)
    fake_ls.predictions.append(
        {"id": 99, "task": 5, "result": [], "score": 0.5, "model_version": "cores-cores"}
    )

    summary = preannotate(settings, redis_conn, 1, batch_size=2, progress=False, sleep=lambda _: work(worker))

    assert (summary.total, summary.done, summary.skipped, summary.failed) == (5, 2, 1, 2)
    assert any("task 3" in error and "404" in error for error in summary.errors)
    assert any("task 4" in error and "no query" in error for error in summary.errors)
    assert sorted(p["task"] for p in fake_ls.predictions if p["id"] != 99) == [1, 2]
    written = fake_ls.predictions_for(1)[0]
    assert written["model_version"] == "cores-cores"
    assert (written["result"][0]["original_width"], written["result"][0]["original_height"]) == (12, 10)

    again = preannotate(settings, redis_conn, 1, batch_size=2, progress=False, sleep=lambda _: work(worker))
    assert (again.done, again.skipped) == (0, 3)  # resumable: predicted tasks are not redone
    assert len(fake_ls.predictions) == 3


def test_preannotate_with_one_query_for_all_tasks(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    _tasks(fake_ls)
    fake_ls.tasks = [fake_ls.tasks[0], fake_ls.tasks[3]]
    summary = preannotate(
        settings, redis_conn, 1, query="the cup", progress=False, sleep=lambda _: work(worker)
    )
    assert (summary.done, summary.failed) == (2, 0)


def test_preannotate_needs_label_studio_credentials(settings: Settings, redis_conn: redis.Redis) -> None:
    with pytest.raises(PreannotateError, match="LABEL_STUDIO_URL"):
        preannotate(settings.with_changes(label_studio_url=None), redis_conn, 1, progress=False)
