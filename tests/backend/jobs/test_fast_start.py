"""The worker's fast paths: settings, building the pipeline, warm-up before the worker registers (CPU
workers skip it unless told), adopting a new version in place."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from backend.jobs.census import live_workers
from backend.jobs.embedded import REPO_ROOT
from backend.jobs.fast_start import adopt_in_place, build_pipeline, warm_up_pipeline
from backend.operations.fast_path_settings import FastPathSettings
from backend.operations.settings import Settings, SettingsError
from tests.backend.worker_subprocess import worker_env

SMALL = {"CORES_BATCH_BUCKETS": "1,2", "CORES_LENGTH_BUCKETS": "96"}


def test_settings_parse_and_refuse_bad_values() -> None:
    assert FastPathSettings.from_env({}) == FastPathSettings()
    parsed = FastPathSettings.from_env(
        {
            "CORES_SAM_ATTENTION": "FLEX",
            "CORES_FAST_PATHS": "on",
            "CORES_COMPILE_SAM": "1",
            "CORES_BATCH_BUCKETS": "4,1,2",
            "CORES_LENGTH_BUCKETS": "384, 320",
            "CORES_MICRO_BATCH": "12",
            "CORES_WARMUP": "no",
        }
    )
    assert parsed == FastPathSettings("flex", "true", True, (1, 2, 4), (320, 384), 12, "false")
    assert not FastPathSettings().fast_paths_on("cpu")
    assert FastPathSettings().warm_up_on("cuda")
    assert not FastPathSettings().warm_up_on("cpu")
    assert not FastPathSettings(fast_paths="false", warm_up="true").warm_up_on("cuda")
    for env, name in (
        ({"CORES_SAM_ATTENTION": "flash"}, "CORES_SAM_ATTENTION"),
        ({"CORES_BATCH_BUCKETS": "2,4"}, "CORES_BATCH_BUCKETS"),
        ({"CORES_LENGTH_BUCKETS": "x"}, "CORES_LENGTH_BUCKETS"),
        ({"CORES_MICRO_BATCH": "0"}, "CORES_MICRO_BATCH"),
        ({"CORES_WARMUP": "maybe"}, "CORES_WARMUP"),
    ):
        with pytest.raises(SettingsError, match=name):
            FastPathSettings.from_env(env)


def test_cpu_workers_run_without_fast_paths_and_skip_warm_up(settings: Settings) -> None:
    pipeline = build_pipeline(str(settings.checkpoint), settings, FastPathSettings())
    assert pipeline.fast is None
    assert pipeline.micro_batch == settings.predict_batch_size  # no device memory rule off CUDA
    assert warm_up_pipeline(pipeline, FastPathSettings()) is None
    assert not adopt_in_place(pipeline, str(settings.checkpoint))  # nothing captured: load anew


def test_forced_fast_paths_warm_every_shape_on_the_cpu(settings: Settings) -> None:
    fast = FastPathSettings.from_env({**SMALL, "CORES_FAST_PATHS": "true", "CORES_WARMUP": "true"})
    pipeline = build_pipeline(str(settings.checkpoint), settings, fast)
    assert pipeline.fast is not None
    assert not pipeline.fast.capture
    timings = warm_up_pipeline(pipeline, fast)
    assert timings is not None
    assert "language_model b=2 L=96" in timings
    assert "sam_encoder b=1" in timings
    assert timings["total"] >= max(v for k, v in timings.items() if k != "total")


def test_the_worker_registers_only_once_warm(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = worker_env(settings, **SMALL, CORES_FAST_PATHS="true", CORES_WARMUP="true", LOG_LEVEL="INFO")
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "backend", "worker"], env=env, cwd=REPO_ROOT, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 240
        while live_workers(redis_conn) == 0:
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never registered"
            time.sleep(0.05)
        text = log.read_text()
        assert "warm-up done" in text  # written before rq registered the worker
        assert text.index("warm-up language_model") < text.index("warm-up done")
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_a_same_architecture_version_is_adopted_in_place(settings: Settings, tmp_path: Path) -> None:
    """The path a CUDA worker with captured graphs takes (``capture`` is what CUDA sets; on the CPU the
    calls stay uncaptured either way)."""
    import numpy as np

    from cores.checkpoints.tiny import make_tiny_checkpoint
    from cores.inference.pipeline import CoresPipeline

    fast = FastPathSettings.from_env({**SMALL, "CORES_FAST_PATHS": "true"})
    pipeline = build_pipeline(str(settings.checkpoint), settings, fast)
    assert pipeline.fast is not None
    pipeline.fast.capture = True
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    pipeline.segment(image, "the red cup")
    other = make_tiny_checkpoint(tmp_path / "v2", layout="cores", seed=5)
    model = pipeline.model
    assert adopt_in_place(pipeline, str(other))
    assert pipeline.model is model
    assert pipeline.checkpoint.path == other
    want = CoresPipeline.from_pretrained(other, device="cpu").segment(image, "the red cup")
    got = pipeline.segment(image, "the red cup")
    for a, b in zip(got.levels, want.levels, strict=True):
        assert np.array_equal(a.mask, b.mask)
    lisa = make_tiny_checkpoint(tmp_path / "lisa", layout="lisa", seed=5)
    assert not adopt_in_place(pipeline, str(lisa))  # another chain: a new pipeline is loaded instead
