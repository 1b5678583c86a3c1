"""The held-out split: fixed per record as the log grows, the same side for every revision of a task,
about EVAL_FRACTION of the log, and a larger fraction only adds records."""

from __future__ import annotations

from backend.corrections.held_out import is_held_out, record_key, split_records
from backend.corrections.records import CorrectionRecord


def record(i: int, task: int, project: int = 1, revision: str = "r1") -> CorrectionRecord:
    return CorrectionRecord(
        id=i,
        project_id=project,
        task_id=task,
        annotation_id=1000 + i,
        revision=revision,
        action="ANNOTATION_CREATED",
        annotator=None,
        annotation_created_at=None,
        received_at=f"2025-03-01T10:00:{i % 60:02d}.000000Z",
        query="the cup",
        image_ref=f"/data/upload/{project}/img{task}.png",
        image_sha256=None,
        prediction_id=None,
        model_version="v1",
        final_level=2,
        final_iou=0.5,
        deleted_at=None,
    )


def test_membership_never_changes_as_the_log_grows() -> None:
    log = [record(i, task=i) for i in range(2000)]
    _, held_small = split_records(log[:100], 0.2)
    _, held_large = split_records(log, 0.2)
    assert {r.id for r in held_small} == {r.id for r in held_large if r.id < 100}
    assert 0.17 < len(held_large) / len(log) < 0.23  # about EVAL_FRACTION
    train, held = split_records(log, 0.2)
    assert not {r.id for r in train} & {r.id for r in held}
    assert len(train) + len(held) == len(log)
    # the order of the log does not matter either
    assert {r.id for r in split_records(reversed(log), 0.2)[1]} == {r.id for r in held}


def test_every_revision_of_a_task_falls_on_the_same_side_and_keys_name_the_image() -> None:
    for task in range(200):
        sides = {is_held_out(record(i, task=task, revision=f"r{i}"), 0.2) for i in range(3)}
        assert len(sides) == 1
    assert record_key(record(1, task=7, project=3)) == "3:7:/data/upload/3/img7.png"
    # another project's task 7 is another record
    assert record_key(record(1, task=7, project=4)) != record_key(record(1, task=7, project=3))


def test_a_larger_fraction_only_adds_records_and_zero_holds_none_out() -> None:
    log = [record(i, task=i) for i in range(500)]
    small = {r.id for r in split_records(log, 0.1)[1]}
    large = {r.id for r in split_records(log, 0.3)[1]}
    assert small < large
    assert split_records(log, 0.0)[1] == []
