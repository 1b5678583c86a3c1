"""Settings of the worker's model fast paths, read from the environment (the worker reads them; the web
never needs them). Each names its variable; a bad value raises ``SettingsError`` at start.

Attributes (environment variable in brackets):
    sam_attention: SAM image-encoder attention, ``auto`` (the faster of ``sdpa`` and ``flex``, timed at load
        on CUDA; ``sdpa`` elsewhere), ``sdpa``, ``flex`` or ``reference`` [CORES_SAM_ATTENTION].
    fast_paths: static-shape serving paths with CUDA graphs (``cores.inference.fast_paths``): ``auto``
        (on for CUDA, off on the CPU), ``true``, ``false`` [CORES_FAST_PATHS].
    compile_sam: ``torch.compile`` SAM's image encoder (warm-up compiles every batch bucket; minutes on a
        GPU) [CORES_COMPILE_SAM], default false.
    batch_buckets: batch sizes the fast paths run [CORES_BATCH_BUCKETS], default ``1,2,4,8,16,32``.
    length_buckets: language-model lengths after the prompt prefix [CORES_LENGTH_BUCKETS], default
        ``320,384,448,512,640``.
    micro_batch: most bulk items in one model pass [CORES_MICRO_BATCH]; None: ``PREDICT_BATCH_SIZE``,
        lowered on CUDA to what free memory holds (``cores.inference.memory``).
    warm_up: compile/capture every bucket shape at worker start, before the worker registers:
        ``auto`` (CUDA workers with fast paths only), ``true``, ``false`` [CORES_WARMUP].
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from backend.operations.settings import SettingsError

ATTENTIONS = ("auto", "sdpa", "flex", "reference")
SWITCHES = ("auto", "true", "false")
_ALIASES = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}


@dataclass(frozen=True)
class FastPathSettings:
    """See the module docstring."""

    sam_attention: str = "auto"
    fast_paths: str = "auto"
    compile_sam: bool = False
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    length_buckets: tuple[int, ...] = (320, 384, 448, 512, 640)
    micro_batch: int | None = None
    warm_up: str = "auto"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FastPathSettings:
        """Read the ``CORES_*`` fast-path variables (empty counts as unset).

        Raises:
            SettingsError: a value that does not parse.
        """
        env = os.environ if environ is None else environ

        def text(name: str, default: str) -> str:
            return (env.get(name) or "").strip().lower() or default

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            value = _ALIASES.get(text(name, default), text(name, default))
            if value not in allowed:
                raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {env.get(name)!r}")
            return value

        def sizes(name: str, default: tuple[int, ...], need_one: bool = False) -> tuple[int, ...]:
            raw = text(name, "")
            if not raw:
                return default
            try:
                values = tuple(sorted({int(v) for v in raw.split(",") if v.strip()}))
            except ValueError:
                raise SettingsError(f"{name} must be comma-separated integers, got {raw!r}") from None
            if not values or values[0] < 1 or (need_one and values[0] != 1):
                rule = "integers >= 1, holding 1" if need_one else "integers >= 1"
                raise SettingsError(f"{name} must be {rule}, got {raw!r}")
            return values

        micro = text("CORES_MICRO_BATCH", "")
        if micro and (not micro.isdigit() or int(micro) < 1):
            raise SettingsError(f"CORES_MICRO_BATCH must be an integer >= 1, got {micro!r}")
        return cls(
            sam_attention=choice("CORES_SAM_ATTENTION", "auto", ATTENTIONS),
            fast_paths=choice("CORES_FAST_PATHS", "auto", SWITCHES),
            compile_sam=choice("CORES_COMPILE_SAM", "false", ("true", "false")) == "true",
            batch_buckets=sizes("CORES_BATCH_BUCKETS", cls.batch_buckets, need_one=True),
            length_buckets=sizes("CORES_LENGTH_BUCKETS", cls.length_buckets),
            micro_batch=int(micro) if micro else None,
            warm_up=choice("CORES_WARMUP", "auto", SWITCHES),
        )

    def fast_paths_on(self, device_type: str) -> bool:
        """Whether the fast paths run on a ``device_type`` (``cuda``/``cpu``) worker."""
        return self.fast_paths == "true" or (self.fast_paths == "auto" and device_type == "cuda")

    def warm_up_on(self, device_type: str) -> bool:
        """Whether a ``device_type`` worker warms up at start (never without fast paths)."""
        if not self.fast_paths_on(device_type):
            return False
        return self.warm_up == "true" or (self.warm_up == "auto" and device_type == "cuda")
