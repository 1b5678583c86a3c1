"""SAM image-encoder fast paths, chosen when a checkpoint loads: the attention kernel, trimmed windows and
``torch.compile``. Every choice keeps segment-anything's modules, parameters and state-dict keys.

* Attention (:func:`configure_encoder`): ``reference`` (segment-anything's own), ``sdpa`` (folded fused SDPA,
  :mod:`cores.modeling.sam_attention`), ``flex`` (FlexAttention with a score modifier,
  :mod:`cores.modeling.flex_attention`) or ``auto``: on CUDA both fast kernels are timed on the encoder's
  own block shapes and the faster wins (logged); elsewhere ``sdpa``.
* Trimmed windows (:class:`TrimmedWindowBlock`): segment-anything pads the token grid to whole windows
  (ViT-H: 64x64 -> 70x70 for 14x14 windows, 20% more tokens) before ``qkv`` and crops after ``proj``. Both
  are per-token linear layers, so they run on the real tokens only and the padded tokens' q/k/v are filled
  in with what ``qkv`` gives a zero token: its bias, exactly. The padded keys still take part in attention,
  as in segment-anything; the MLP already ran unpadded there.
* :func:`compile_encoder`: ``torch.compile`` over the encoder (``nn.Module.compile``: the module and its
  keys stay as they are); a shape compiles on first use, so workers warm it up at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention, Block, window_partition, window_unpartition

from cores.modeling.flex_attention import FlexAttention
from cores.modeling.sam_attention import SdpaAttention

logger = logging.getLogger(__name__)

SAM_ATTENTIONS = ("auto", "sdpa", "flex", "reference")
"""How SAM's image encoder may compute attention."""
FAST_KERNELS: dict[str, type[SdpaAttention | FlexAttention]] = {"sdpa": SdpaAttention, "flex": FlexAttention}
KERNELS: dict[str, type[Attention]] = {"reference": Attention, **FAST_KERNELS}


def pad_with_bias(qkv: torch.Tensor, bias: torch.Tensor | None, window: int) -> torch.Tensor:
    """BxHxWx3C ``qkv`` of real tokens -> padded to whole ``window`` s, each padded token holding ``qkv``'s
    output for a zero token (its bias, or zeros without one)."""
    batch, height, width, channels = qkv.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if not (pad_h or pad_w):
        return qkv
    fill = bias.to(qkv.dtype) if bias is not None else qkv.new_zeros(channels)
    out = fill.expand(batch, height + pad_h, width + pad_w, channels).clone()
    out[:, :height, :width] = qkv
    return out


class TrimmedWindowBlock(Block):
    """segment-anything's ``Block`` whose windowed attention runs ``qkv`` and ``proj`` on unpadded tokens.

    Needs an attention with ``attend`` (SDPA or Flex); global blocks and the reference kernel run the stock
    forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC tokens -> BxHxWxC."""
        attend = getattr(self.attn, "attend", None)
        if self.window_size == 0 or attend is None:
            return super().forward(x)
        shortcut = x
        x = self.norm1(x)
        height, width = x.shape[1], x.shape[2]
        qkv = pad_with_bias(self.attn.qkv(x), self.attn.qkv.bias, self.window_size)
        windows, padded = window_partition(qkv, self.window_size)
        out = window_unpartition(attend(windows), self.window_size, padded, (height, width))
        x = shortcut + self.attn.proj(out)
        return x + self.mlp(self.norm2(x))


def set_kernel(sam: Sam, kind: str, *, trim_windows: bool = True) -> None:
    """Switch every attention of SAM's image encoder to ``kind`` (``reference``/``sdpa``/``flex``) in place,
    and its blocks to :class:`TrimmedWindowBlock` (``trim_windows`` and a fast kernel) or back."""
    target = KERNELS[kind]
    block = TrimmedWindowBlock if trim_windows and kind != "reference" else Block
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = target
        elif isinstance(module, Block):
            module.__class__ = block


def _block_shapes(sam: Sam) -> list[tuple[Block, tuple[int, ...]]]:
    """One windowed and one global block with the qkv shape each attends (batch 1)."""
    encoder = sam.image_encoder
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    found: dict[int, tuple[Block, tuple[int, ...]]] = {}
    for blk in encoder.blocks:
        if not isinstance(blk, Block):
            continue
        window = blk.window_size
        channels = blk.attn.qkv.out_features
        side = window if window else grid
        count = (-(-grid // window)) ** 2 if window else 1
        found.setdefault(window, (blk, (count, side, side, channels)))
    return list(found.values())


def _time(fn: Callable[[], Any], device: torch.device, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1000


@torch.no_grad()
def choose_kernel(sam: Sam) -> tuple[str, dict[str, float | str]]:
    """The faster of ``sdpa`` and ``flex`` on this device for the encoder's block shapes, and the timings
    (ms per image's attention, or the error a kernel raised). Off CUDA: ``sdpa`` without timing."""
    device = sam.pixel_mean.device
    if device.type != "cuda":
        return "sdpa", {}
    dtype = next(sam.image_encoder.parameters()).dtype
    timings: dict[str, float | str] = {}
    blocks = [b for b in sam.image_encoder.blocks if isinstance(b, Block)]
    for kind in ("sdpa", "flex"):
        attend = FAST_KERNELS[kind].attend
        total = 0.0
        try:
            for blk, shape in _block_shapes(sam):
                qkv = torch.randn(shape, device=device, dtype=dtype)
                same = sum(1 for b in blocks if b.window_size == blk.window_size)
                total += same * _time(partial(attend, blk.attn, qkv), device)
        except Exception as exc:  # a kernel this build cannot run: reported, the other one is used
            timings[kind] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        timings[kind] = total
    measured = {k: v for k, v in timings.items() if isinstance(v, float)}
    if not measured:
        raise RuntimeError(f"no fast SAM attention kernel runs on {device}: {timings}")
    return min(measured, key=lambda k: measured[k]), timings


def configure_encoder(sam: Sam, attention: str = "auto", *, trim_windows: bool = True) -> str:
    """Set SAM's image-encoder attention (``SAM_ATTENTIONS``) and window trimming; returns the kernel used.

    Raises:
        ValueError: an unknown ``attention``.
    """
    if attention not in SAM_ATTENTIONS:
        raise ValueError(f"unknown sam_attention {attention!r}; expected one of {SAM_ATTENTIONS}")
    kind = attention
    if attention == "auto":
        kind, timings = choose_kernel(sam)
        if timings:
            logger.info("SAM encoder attention: %s (ms per image, attention only: %s)", kind, timings)
    set_kernel(sam, kind, trim_windows=trim_windows)
    return kind


def compile_encoder(sam: Sam, *, mode: str | None = None, **kwargs: Any) -> None:
    """``torch.compile`` SAM's image encoder in place (``nn.Module.compile``, static shapes); ``kwargs`` go
    to ``torch.compile`` (tests pass ``backend="eager"``)."""
    sam.image_encoder.compile(mode=mode, dynamic=False, **kwargs)


def uncompile_encoder(sam: Sam) -> None:
    """Undo :func:`compile_encoder`: the encoder runs eagerly again."""
    sam.image_encoder._compiled_call_impl = None
