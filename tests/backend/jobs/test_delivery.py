"""The claim handshake that decides whether the web or the job delivers a batch job's predictions."""

from __future__ import annotations

import redis

from backend.jobs.delivery import Deliverer, abandon_claim, claim_key, finish_claim, open_claim


def test_job_that_finishes_in_time_leaves_delivery_to_the_web(redis_conn: redis.Redis) -> None:
    key = open_claim(redis_conn, "job1", deadline_s=10)
    assert finish_claim(redis_conn, key) is Deliverer.WEB
    # at its deadline the web sees the job is done and must return the result itself
    assert abandon_claim(redis_conn, key) is Deliverer.WEB


def test_job_that_finishes_after_the_deadline_writes_back(redis_conn: redis.Redis) -> None:
    key = open_claim(redis_conn, "job2", deadline_s=10)
    assert abandon_claim(redis_conn, key) is Deliverer.JOB
    assert finish_claim(redis_conn, key) is Deliverer.JOB


def test_a_dead_web_process_hands_delivery_to_the_job(redis_conn: redis.Redis) -> None:
    key = open_claim(redis_conn, "job3", deadline_s=10)
    redis_conn.delete(key)  # what expiry does once the web is gone past deadline + grace
    assert finish_claim(redis_conn, key) is Deliverer.JOB
    assert redis_conn.exists(key) == 0  # XX: a missing claim is never recreated


def test_claims_expire_shortly_after_the_deadline(redis_conn: redis.Redis) -> None:
    key = open_claim(redis_conn, "job4", deadline_s=2.5)
    assert key == claim_key("job4")
    assert 2 < redis_conn.ttl(key) <= 8
    finish_claim(redis_conn, key)
    assert redis_conn.ttl(key) > 3600  # a decided claim is kept for a day


def test_each_job_is_delivered_exactly_once_under_races(redis_conn: redis.Redis) -> None:
    for i in range(50):
        key = open_claim(redis_conn, f"race{i}", deadline_s=10)
        order = (finish_claim, abandon_claim) if i % 2 else (abandon_claim, finish_claim)
        first, second = order[0](redis_conn, key), order[1](redis_conn, key)
        job_side = first if order[0] is finish_claim else second
        web_side = second if order[0] is finish_claim else first
        # the web returns the result exactly when the job declined to write it back
        assert (job_side is Deliverer.WEB) == (web_side is Deliverer.WEB)
