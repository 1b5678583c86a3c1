"""The JSON codec (orjson) reads and writes exactly what the standard library does, and rq jobs written
with rq's stock JSONSerializer and with ours read back on either side (real Redis)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.operations import json_codec

PAYLOAD: dict[str, Any] = {
    "tasks": [{"id": 7, "data": {"image": "http://ls/x.png", "query": "la tasse rouge ☕"}}],
    "rle": list(range(0, 5000, 7)),
    "score": 0.8125,
    "nested": {"a": [True, False, None], "b": -3.5e-12, "c": ""},
}


def test_round_trip_equals_the_standard_library() -> None:
    encoded = json_codec.dumps(PAYLOAD)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == PAYLOAD
    assert json_codec.loads(encoded) == json.loads(json.dumps(PAYLOAD))
    assert json_codec.loads(json_codec.dumps_text(PAYLOAD)) == PAYLOAD
    assert json_codec.loads(memoryview(encoded)) == PAYLOAD
    # Key order is kept (responses to Label Studio are built in its documented order).
    assert list(json_codec.loads(json_codec.dumps({"z": 1, "a": 2}))) == ["z", "a"]


@pytest.mark.parametrize(
    "value",
    [{"big": 2**70}, {1: "int key"}, [-(2**65)], {"query": json.loads('"cup \\ud800"')}],
    ids=["int-beyond-64-bit", "non-str-key", "negative-big-int", "lone-surrogate"],
)
def test_values_orjson_refuses_are_encoded_as_json_does(value: Any) -> None:
    assert json_codec.dumps(value).decode() == json.dumps(value, separators=(",", ":"))


def test_input_json_accepts_is_accepted() -> None:
    text = '{"a": NaN, "b": Infinity, "c": 123456789012345678901234567890}'
    parsed = json_codec.loads(text)
    assert math.isnan(parsed["a"])
    assert parsed["b"] == math.inf
    assert parsed["c"] == 123456789012345678901234567890
    with pytest.raises(ValueError, match="Expecting value"):
        json_codec.loads(b'{"a": ')
    with pytest.raises(ValueError, match="Expecting value"):
        json_codec.loads("")


def test_nan_is_written_as_null_and_unknown_types_raise() -> None:
    assert json_codec.dumps({"x": float("nan"), "y": math.inf}) == b'{"x":null,"y":null}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_codec.dumps({"x": object()})
    with pytest.raises(TypeError):
        json_codec.dumps({1: object()})


def test_numpy_values_are_encoded() -> None:
    value = {"m": np.arange(6, dtype=np.int32).reshape(2, 3), "s": np.float32(0.5), "i": np.int64(3)}
    assert json_codec.loads(json_codec.dumps(value)) == {"m": [[0, 1, 2], [3, 4, 5]], "s": 0.5, "i": 3}
    strided = np.arange(12).reshape(3, 4)[:, ::2]  # not contiguous: orjson refuses, the fallback lists it
    assert json_codec.loads(json_codec.dumps({"a": strided})) == {"a": strided.tolist()}


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(JSONSerializer, json_codec.QueueSerializer), (json_codec.QueueSerializer, JSONSerializer)],
    ids=["stock-to-ours", "ours-to-stock"],
)
def test_rq_jobs_interoperate_with_the_stock_json_serializer(
    redis_conn: redis.Redis, writer: Any, reader: Any
) -> None:
    queue = Queue("codec-test", connection=redis_conn, serializer=writer)
    job = queue.enqueue("backend.jobs.predict.predict_tasks", {"request": PAYLOAD}, meta={"m": [1, 2]})
    again = Job.fetch(job.id, connection=redis_conn, serializer=reader)
    assert list(again.args) == [{"request": PAYLOAD}]
    assert again.func_name == "backend.jobs.predict.predict_tasks"
    assert again.meta == {"m": [1, 2]}
