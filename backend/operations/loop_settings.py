"""The active-learning loop's settings: the held-out split and the promotion gate (environment variable in
brackets). Part of ``Settings`` (``settings.loop``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class LoopSettingsError(ValueError):
    """A loop variable that does not parse or is out of range; the message names it."""


@dataclass(frozen=True)
class LoopSettings:
    """How the loop decides (``backend.corrections.held_out``, ``backend.versions.gate``).

    Attributes:
        eval_fraction: share of the correction log held out for evaluation, by a hash of each record's
            stable key; never trained on [EVAL_FRACTION], default 0.2, in [0, 1).
        promote_margin: a trained version is served only when its final-level gIoU on the held-out split
            beats the served version's by at least this [PROMOTE_MARGIN], default 0.01, in [-1, 1].
        promote_tolerance: ... and no other level's gIoU drops by more than this [PROMOTE_TOLERANCE],
            default 0.02, in [0, 1].
        min_eval_samples: ... and the held-out split has at least this many samples scored on the final
            level [MIN_EVAL_SAMPLES], default 5, >= 1.
    """

    eval_fraction: float = 0.2
    promote_margin: float = 0.01
    promote_tolerance: float = 0.02
    min_eval_samples: int = 5

    def __post_init__(self) -> None:
        checks = (
            ("EVAL_FRACTION", self.eval_fraction, 0.0 <= self.eval_fraction < 1.0, "a number in [0, 1)"),
            (
                "PROMOTE_MARGIN",
                self.promote_margin,
                -1.0 <= self.promote_margin <= 1.0,
                "a number in [-1, 1]",
            ),
            (
                "PROMOTE_TOLERANCE",
                self.promote_tolerance,
                0.0 <= self.promote_tolerance <= 1.0,
                "a number in [0, 1]",
            ),
            ("MIN_EVAL_SAMPLES", self.min_eval_samples, self.min_eval_samples >= 1, "an integer >= 1"),
        )
        for name, value, ok, expected in checks:
            if not ok:
                raise LoopSettingsError(f"{name} must be {expected}, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoopSettings:
        """Read the variables from ``env``; empty or unset ones keep their defaults.

        Raises:
            LoopSettingsError: a value that does not parse or is out of range.
        """
        values: dict[str, float | int] = {}
        for name, attribute, kind in (
            ("EVAL_FRACTION", "eval_fraction", float),
            ("PROMOTE_MARGIN", "promote_margin", float),
            ("PROMOTE_TOLERANCE", "promote_tolerance", float),
            ("MIN_EVAL_SAMPLES", "min_eval_samples", int),
        ):
            raw = (env.get(name) or "").strip()
            if not raw:
                continue
            try:
                values[attribute] = kind(raw)
            except ValueError:
                raise LoopSettingsError(
                    f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings."""
        return {
            "EVAL_FRACTION": repr(self.eval_fraction),
            "PROMOTE_MARGIN": repr(self.promote_margin),
            "PROMOTE_TOLERANCE": repr(self.promote_tolerance),
            "MIN_EVAL_SAMPLES": str(self.min_eval_samples),
        }
