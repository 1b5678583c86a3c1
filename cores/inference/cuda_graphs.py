"""CUDA graph capture of static-shape functions (``torch.cuda.CUDAGraph``), guarded by device type.

:class:`GraphedCall` runs ``fn`` on static inputs: on CUDA it warms ``fn`` up on a side stream, captures one
call into a graph and afterwards copies new inputs into the captured input buffers, replays the graph and
returns copies of the captured outputs (one kernel-launch sequence for the whole function, no Python per
op). Elsewhere it simply calls ``fn``: the same static shapes, no capture. The graph reads parameters and
other tensors it closed over *at their addresses*: update them in place (``copy_``), never rebind them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


def _clone(outputs: Outputs) -> Outputs:
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    return tuple(t.clone() for t in outputs)


class GraphedCall:
    """``fn(*inputs)`` for inputs shaped like ``example``, captured as a CUDA graph when on CUDA.

    Args:
        fn: a function of tensors returning a tensor or a tuple of tensors, with no host synchronisation and
            no shape that depends on values (what a CUDA graph can hold).
        example: inputs of the shapes, dtypes and device every call will have.
        capture: capture a graph (only honoured on CUDA).
        pool: a graph memory pool shared with other captures (``torch.cuda.graph_pool_handle()``).
        name: for the log line that reports the capture time.
    """

    def __init__(
        self,
        fn: Callable[..., Outputs],
        example: tuple[torch.Tensor, ...],
        *,
        capture: bool = True,
        pool: Any = None,
        warmup: int = 2,
        name: str = "call",
    ) -> None:
        self.fn = fn
        self.name = name
        self.shapes = tuple(t.shape for t in example)
        self.captured = capture and example[0].device.type == "cuda"
        self.capture_s = 0.0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._outputs: Outputs | None = None
        if self.captured:
            self._capture(example, pool, warmup)

    def _capture(self, example: tuple[torch.Tensor, ...], pool: Any, warmup: int) -> None:
        started = time.perf_counter()
        self._inputs = tuple(t.clone() for t in example)
        side = torch.cuda.Stream(device=example[0].device)
        side.wait_stream(torch.cuda.current_stream(example[0].device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                self.fn(*self._inputs)
        torch.cuda.current_stream(example[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool), torch.no_grad():
            self._outputs = self.fn(*self._inputs)
        torch.cuda.synchronize(example[0].device)
        self._graph = graph
        self.capture_s = time.perf_counter() - started
        logger.info("captured %s %s as a CUDA graph in %.2f s", self.name, list(self.shapes), self.capture_s)

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        """The function's outputs for ``inputs`` (fresh tensors; shapes must be the example's).

        Raises:
            ValueError: an input shape differs from the captured one.
        """
        shapes = tuple(t.shape for t in inputs)
        if shapes != self.shapes:
            raise ValueError(f"{self.name} was built for shapes {list(self.shapes)}, not {list(shapes)}")
        if self._graph is None:
            return self.fn(*inputs)
        for buffer, value in zip(self._inputs, inputs, strict=True):
            buffer.copy_(value)
        self._graph.replay()
        assert self._outputs is not None
        return _clone(self._outputs)
