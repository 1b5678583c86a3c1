"""The promotion gate with a better, a worse and a level-trading version (and too few samples)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from backend.operations.loop_settings import LoopSettings, LoopSettingsError
from backend.operations.settings import Settings, SettingsError
from backend.versions.gate import decide

LOOP = LoopSettings(eval_fraction=0.2, promote_margin=0.02, promote_tolerance=0.03, min_eval_samples=5)


def scores(level1: float, level2: float, count: int = 12) -> dict[str, Any]:
    return {
        "giou": level2,
        "count": count,
        "levels": [
            {"level": 1, "giou": level1, "count": count},
            {"level": 2, "giou": level2, "count": count},
        ],
    }


SERVED = scores(0.60, 0.40)


def test_a_better_version_is_promoted() -> None:
    decision = decide(scores(0.61, 0.45), SERVED, LOOP)
    assert decision.promote, decision.reason
    assert decision.reason.startswith("final-level gIoU 0.4000 -> 0.4500 (+0.0500 >= PROMOTE_MARGIN=0.02)")
    # a small drop on level 1 within the tolerance does not stop it
    assert decide(scores(0.58, 0.45), SERVED, LOOP).promote


def test_a_worse_version_stays_a_candidate() -> None:
    decision = decide(scores(0.62, 0.35), SERVED, LOOP)
    assert not decision.promote
    assert decision.reason == (
        "final-level gIoU 0.3500 vs served 0.4000 (-0.0500) does not beat it by PROMOTE_MARGIN=0.02"
    )
    # better, but not by the margin
    assert not decide(scores(0.60, 0.41), SERVED, LOOP).promote
    exact = LoopSettings(promote_margin=0.25, min_eval_samples=5)  # binary-exact numbers
    assert decide(scores(0.5, 0.75), scores(0.5, 0.5), exact).promote  # exactly the margin passes


def test_a_version_that_trades_the_context_level_for_the_target_stays_a_candidate() -> None:
    decision = decide(scores(0.50, 0.50), SERVED, LOOP)
    assert not decision.promote
    assert decision.reason == (
        "level 1 gIoU drops 0.6000 -> 0.5000 (-0.1000), more than PROMOTE_TOLERANCE=0.03 "
        "(final level +0.1000)"
    )
    assert decide(scores(0.50, 0.50), SERVED, LOOP.__class__(promote_tolerance=0.2)).promote


def test_too_few_held_out_samples_never_promote() -> None:
    decision = decide(scores(0.9, 0.9, count=4), SERVED, LOOP)
    assert not decision.promote
    assert "4 sample(s) with a target mask, fewer than MIN_EVAL_SAMPLES=5" in decision.reason
    assert not decide({"count": 0}, {}, LOOP).promote


def test_the_loop_settings_come_from_the_environment_and_are_checked() -> None:
    settings = Settings.from_env(
        {"EVAL_FRACTION": "0.3", "PROMOTE_MARGIN": "0.05", "PROMOTE_TOLERANCE": "0", "MIN_EVAL_SAMPLES": "9"}
    )
    assert settings.loop == LoopSettings(0.3, 0.05, 0.0, 9)
    assert Settings.from_env(settings.to_env()).loop == settings.loop
    assert Settings.from_env({}).loop == LoopSettings()
    for env, message in (
        ({"EVAL_FRACTION": "1"}, "EVAL_FRACTION must be a number in [0, 1), got 1.0"),
        ({"PROMOTE_TOLERANCE": "-0.1"}, "PROMOTE_TOLERANCE must be a number in [0, 1]"),
        ({"MIN_EVAL_SAMPLES": "0"}, "MIN_EVAL_SAMPLES must be an integer >= 1"),
        ({"MIN_EVAL_SAMPLES": "many"}, "MIN_EVAL_SAMPLES must be an integer, got 'many'"),
    ):
        with pytest.raises(SettingsError, match=re.escape(message)):
            Settings.from_env(env)
    with pytest.raises(LoopSettingsError):
        LoopSettings(promote_margin=2.0)
