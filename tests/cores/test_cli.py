"""``python -m cores`` end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from cores.evaluation.reasonseg import write_sample
from tests.paths import REPO_ROOT as ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cores", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_tiny_checkpoint_segment_and_eval(tmp_path):
    made = _run("make-tiny-checkpoint", str(tmp_path / "ck"), "--layout", "cores-refiner", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["layout"] == "cores-refiner"

    image = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    out = tmp_path / "seg"
    seg = _run(
        "segment",
        "--checkpoint",
        str(tmp_path / "ck"),
        "--image",
        str(tmp_path / "img.png"),
        "--query",
        "where would you put the bread knife?",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert seg.returncode == 0, seg.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [1, 2]
    assert summary["text"] == "It usually appears on [SEG_SEMA]. It is [SEG]."
    for level in summary["levels"]:
        mask = np.asarray(Image.open(out / f"level{level['level']}.png"))
        assert mask.shape == (30, 50)
        assert int((mask > 0).sum()) == level["area"]
    assert np.asarray(Image.open(out / "overlay.png")).shape == (30, 50, 3)

    data = tmp_path / "rs"
    for i in range(2):
        mask = np.zeros((30, 50), bool)
        mask[5:20, 10 + i : 40] = True
        write_sample(data, f"x{i}", image, [f"object {i}"], False, [("thing", mask)])
    ev = _run(
        "eval", "--checkpoint", str(tmp_path / "ck"), "--data", str(data), "--out", str(tmp_path / "r.json")
    )
    assert ev.returncode == 0, ev.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["count"] == 2
    assert 0.0 <= report["giou"] <= 1.0


def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path):
    missing = _run(
        "segment",
        "--checkpoint",
        str(tmp_path / "nope"),
        "--image",
        "x.png",
        "--query",
        "q",
        "--out",
        str(tmp_path / "o"),
    )
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    bad_layout = _run("make-tiny-checkpoint", str(tmp_path / "ck"), "--layout", "llava")
    assert bad_layout.returncode == 2
    assert "invalid choice" in bad_layout.stderr
