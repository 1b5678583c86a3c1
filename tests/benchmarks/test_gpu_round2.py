"""The prepared GPU benchmark script, run at tiny size on the CPU: both steps finish and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT


def test_the_gpu_script_runs_at_tiny_size(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "BUDGET_S_TINY": "500"}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_round2.sh", "--tiny", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = json.loads((tmp_path / "bench-round2-7b.json").read_text())
    second = json.loads((tmp_path / "bench-round2-7b-compiled.json").read_text())
    assert first["size"] == "tiny"
    assert {"fast", "graphs", "baseline"} <= set(first)
    graphs = first["graphs"]
    assert graphs["cold_start_s"] > 0
    assert graphs["cold_start_shapes"] > 0
    assert set(graphs["bulk"]) == {"1", "4"}
    assert graphs["new_image"]["n"] == 4
    assert graphs["attention_kernels"]["language_model"]  # the profiler saw the SDPA op
    assert graphs["sam_attention"]["auto_choice"] == "sdpa"
    assert first["fast_vs_baseline_masks"]["min_iou"] == 1.0  # float32 on the CPU: identical masks
    assert first["fast"]["bulk"]["4"]["images_per_s"] > 0
    assert json.loads((tmp_path / "bench-round2-rle.json").read_text())  # brush RLE on smooth masks
    assert json.loads((tmp_path / "bench-round2-refine.json").read_text())  # click vs query, warm vs cold
    assert "baseline" not in second
    assert second["graphs"]["bulk"]["4"]["images_per_s"] > 0
