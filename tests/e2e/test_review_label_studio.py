"""``python -m backend review`` against a real Label Studio: predictions stored in Label Studio and one
remembered in Redis (an interactive prediction Label Studio never stores) are listed lowest review score
first with their reasons, annotated tasks are left out, and ``--view`` writes a Data Manager tab that
Label Studio filters to exactly those tasks (a second run replaces it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from label_studio_sdk import ImportApiRequest

from backend.corrections.prediction_memory import RememberedPrediction, remember
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.label_studio.predictions import build_prediction
from backend.review.cli import review_main
from backend.review.score import review_score
from tests.backend.review.test_score import CRAFTED, H, W
from tests.e2e.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

SCHEMA = parse_label_config(shipped_label_config())
#: task position -> crafted chain; "annotated" gets an annotation; "memory" only a remembered prediction
STORED = ("confident", "soft boundary", "outside the context", "levels disagree", "low IoU head")
ANNOTATED = "empty target"
REMEMBERED = "low IoU head"


def prediction_of(name: str) -> dict[str, Any]:
    levels = CRAFTED[name]
    review = review_score(levels)
    shaped = [dict(level, meta={"review": review.level_meta(int(level["index"]))}) for level in levels]
    return build_prediction(shaped, SCHEMA, W, H, "cores-test", score=review.score)


def run_review(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    capsys.readouterr()
    assert review_main(list(args)) == 0
    lines = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_review_lists_the_tasks_most_in_need_and_writes_a_view(
    label_studio: LabelStudioServer,
    redis_url: str,
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = label_studio.sdk()
    project = client.projects.create(title="review queue", label_config=shipped_label_config())
    assert project.id is not None
    names = [*STORED, ANNOTATED, "memory only"]
    client.projects.import_tasks(
        id=project.id,
        request=[
            ImportApiRequest(data={"image": f"https://example.com/{i}.png", "query": n})
            for i, n in enumerate(names)
        ],
    )
    tasks = {task.data["query"]: int(task.id) for task in client.tasks.list(project=project.id)}
    for name in (*STORED, ANNOTATED):
        made = prediction_of(name)
        client.predictions.create(
            task=tasks[name], result=made["result"], score=made["score"], model_version=made["model_version"]
        )
    annotation = [r for r in prediction_of("confident")["result"]]
    client.annotations.create(id=tasks[ANNOTATED], result=annotation)
    remembered = prediction_of(REMEMBERED)
    entry = RememberedPrediction.from_prediction(
        remembered,
        query="memory only",
        kind="interactive",
        schema=SCHEMA,
        review=review_score(CRAFTED[REMEMBERED]).to_json(),
    )
    assert entry is not None
    assert remember(redis_conn, project.id, [(tasks["memory only"], entry)], 3600) == 1

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ALLOW_PRIVATE_NETWORKS", "true")
    listed = run_review(monkeypatch, capsys, "--project", str(project.id), "--top", "10", "--json")

    expected = {tasks[name]: review_score(CRAFTED[name]) for name in STORED} | {
        tasks["memory only"]: review_score(CRAFTED[REMEMBERED])
    }
    assert [item["task"] for item in listed] == sorted(expected, key=lambda t: (expected[t].score, t))
    assert tasks[ANNOTATED] not in [item["task"] for item in listed]  # annotated: reviewed already
    for item in listed:
        assert item["score"] == pytest.approx(expected[item["task"]].score, abs=1e-6)
        assert item["reasons"] == expected[item["task"]].reasons()
    sources = {item["task"]: item["source"] for item in listed}
    assert sources[tasks["memory only"]] == "memory"
    assert sources[tasks["confident"]] == "label_studio"
    assert listed[-1]["reasons"] == []  # the confident one: nothing below a threshold
    with_annotated = run_review(
        monkeypatch, capsys, "--project", str(project.id), "--include-annotated", "--json"
    )
    assert with_annotated[0]["task"] == tasks[ANNOTATED]  # the empty target scores 0
    assert with_annotated[0]["reasons"][0] == "level 2 (the target) is empty"

    top = [item["task"] for item in listed[:3]]
    for _ in range(2):  # a second run replaces the view of the same title
        run_review(
            monkeypatch,
            capsys,
            "--project",
            str(project.id),
            "--top",
            "3",
            "--view",
            "Needs review",
            "--json",
        )
    views = label_studio.api("GET", f"/api/dm/views/?project={project.id}").json()
    mine = [view for view in views if view["data"].get("title") == "Needs review"]
    assert len(mine) == 1
    shown = label_studio.api(
        "GET", f"/api/tasks/?project={project.id}&view={mine[0]['id']}&page_size=50"
    ).json()
    shown_ids = [task["id"] for task in shown["tasks"]]
    assert sorted(shown_ids) == sorted(top)
    # the tab sorts by the prediction score, lowest first: Label Studio computes it from the predictions of
    # the project's selected model version (Settings > Predictions), so select ours
    patched = label_studio.api("PATCH", f"/api/projects/{project.id}", json={"model_version": "cores-test"})
    assert patched.status_code == 200, patched.text
    shown = label_studio.api(
        "GET", f"/api/tasks/?project={project.id}&view={mine[0]['id']}&page_size=50"
    ).json()
    scores = {task["id"]: task.get("predictions_score") for task in shown["tasks"]}
    stored_only = [t for t in scores if t != tasks["memory only"]]
    assert stored_only == sorted(stored_only, key=lambda t: expected[t].score), scores
    for task in stored_only:
        assert scores[task] == pytest.approx(expected[task].score, abs=1e-6)
