"""SAM from pip ``segment_anything`` modules: geometry registry, geometry from weights, pre/post-processing.

The modules are used unmodified, composed with two rules that make them what LISA/CoReS were trained with:

* text embeddings are appended to the sparse prompt embeddings by the caller (see
  :mod:`cores.modeling.model`);
* the prompt encoder's random positional encoding is :class:`DtypePositionEmbedding`: computed in the dtype of
  its Gaussian matrix, which is the model dtype (bf16 serving computes it in bf16, as the released stack does;
  float32 is pip segment-anything's computation exactly).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from segment_anything.utils.transforms import ResizeLongestSide

from cores.errors import CheckpointError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class DtypePositionEmbedding(PositionEmbeddingRandom):
    """SAM's random-frequency positional encoding, computed in the dtype of its Gaussian matrix ``G`` (2xC/2).

    The released LISA/CoReS stack computes it that way, so under bf16 (its training and inference dtype, ``G``
    converted with the model) every step is bf16: the dense grid (ones, cumsum - 0.5, / size), ``2*x - 1``,
    ``@ G``, ``* 2*pi``, ``cat(sin, cos)``; point coordinates are normalised in float32 and cast to ``G``'s
    dtype after ``2*x - 1``. In float32 every step is pip segment-anything's ``PositionEmbeddingRandom``, op
    for op. Same state-dict key as the pip module (``positional_encoding_gaussian_matrix``).
    """

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """...x2 coordinates in [0, 1] -> ...xC encoding, in ``G``'s dtype."""
        gaussian = self.positional_encoding_gaussian_matrix
        centred = 2 * coords - 1
        projected = centred.to(gaussian.dtype) @ gaussian
        angles = 2 * np.pi * projected
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """The dense encoding of an ``h x w`` grid of cell centres: CxHxW in ``G``'s dtype."""
        h, w = size
        gaussian = self.positional_encoding_gaussian_matrix
        ones = torch.ones((h, w), device=gaussian.device, dtype=gaussian.dtype)
        rows = (ones.cumsum(dim=0) - 0.5) / h
        cols = (ones.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([cols, rows], dim=-1)).permute(2, 0, 1)

    def point_encoding(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """BxNx2 (x, y) pixel coordinates in the ``image_size`` (h, w) input frame -> BxNxC, in ``G``'s dtype
        (pip segment-anything's ``forward_with_coords``: normalised in float32, then encoded)."""
        return self.forward_with_coords(coords, image_size)


class CoresPromptEncoder(PromptEncoder):
    """pip segment-anything's ``PromptEncoder`` with :class:`DtypePositionEmbedding` as its positional
    encoding (nothing else differs; same state-dict keys)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim,
            image_embedding_size=image_embedding_size,
            input_image_size=input_image_size,
            mask_in_chans=mask_in_chans,
        )
        self.pe_layer = DtypePositionEmbedding(embed_dim // 2)


@dataclass(frozen=True)
class SamGeometry:
    """Sizes of a SAM model. ``img_size`` is the square input side in pixels (1024 for released SAM)."""

    img_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 1280
    encoder_depth: int = 32
    encoder_heads: int = 16
    encoder_mlp_dim: int = 5120
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 px / 16 px patches)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the mask decoder's low-resolution logits (256 for released SAM)."""
        return 4 * self.embedding_size


SAM_GEOMETRIES: dict[str, SamGeometry] = {
    "vit_h": SamGeometry(),
    "vit_l": SamGeometry(
        encoder_dim=1024, encoder_depth=24, encoder_mlp_dim=4096, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_b": SamGeometry(
        encoder_dim=768,
        encoder_depth=12,
        encoder_heads=12,
        encoder_mlp_dim=3072,
        global_attn_indexes=(2, 5, 8, 11),
    ),
    # For tests and demos: the same module types at toy sizes.
    "tiny": SamGeometry(
        img_size=128,
        patch_size=16,
        encoder_dim=32,
        encoder_depth=2,
        encoder_heads=2,
        encoder_mlp_dim=64,
        window_size=4,
        global_attn_indexes=(1,),
        prompt_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    ),
}


def build_sam(geometry: SamGeometry) -> Sam:
    """Build an uninitialised-weights ``Sam`` of the given geometry (on the current default device)."""
    grid = geometry.embedding_size
    encoder = ImageEncoderViT(
        img_size=geometry.img_size,
        patch_size=geometry.patch_size,
        embed_dim=geometry.encoder_dim,
        depth=geometry.encoder_depth,
        num_heads=geometry.encoder_heads,
        mlp_ratio=geometry.encoder_mlp_dim / geometry.encoder_dim,
        out_chans=geometry.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=geometry.window_size,
        global_attn_indexes=geometry.global_attn_indexes,
    )
    prompt_encoder = CoresPromptEncoder(
        embed_dim=geometry.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(geometry.img_size, geometry.img_size),
        mask_in_chans=geometry.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=geometry.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=geometry.decoder_depth,
            embedding_dim=geometry.prompt_dim,
            mlp_dim=geometry.decoder_mlp_dim,
            num_heads=geometry.decoder_heads,
        ),
        transformer_dim=geometry.prompt_dim,
        iou_head_depth=geometry.iou_head_depth,
        iou_head_hidden_dim=geometry.iou_head_hidden_dim,
    )
    return Sam(encoder, prompt_encoder, decoder, pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD))


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


def geometry_from_shapes(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> SamGeometry:
    """Read a SAM geometry from weight shapes (stock segment-anything key names after ``prefix``).

    The head count of the image encoder comes from the relative-position tables (``2*size-1 x head_dim``):
    global-attention blocks have ``2*grid-1`` rows, windowed blocks ``2*window-1``.

    Raises:
        CheckpointError: a key needed to infer the geometry is missing.
    """

    def shape(name: str) -> tuple[int, ...]:
        try:
            return tuple(shapes[prefix + name])
        except KeyError as exc:
            raise CheckpointError(
                f"SAM weights lack {prefix + name!r}; cannot infer the SAM geometry"
            ) from exc

    encoder_dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(shapes, re.escape(prefix) + r"image_encoder\.blocks\.(\d+)\.")
    rows = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
    global_blocks = tuple(i for i, r in enumerate(rows) if r == 2 * grid - 1)
    windowed = [r for r in rows if r != 2 * grid - 1]
    prompt_dim = shape("image_encoder.neck.0.weight")[0]
    return SamGeometry(
        img_size=grid * patch,
        patch_size=patch,
        encoder_dim=encoder_dim,
        encoder_depth=depth,
        encoder_heads=encoder_dim // head_dim,
        encoder_mlp_dim=shape("image_encoder.blocks.0.mlp.lin1.weight")[0],
        window_size=(windowed[0] + 1) // 2 if windowed else 0,
        global_attn_indexes=global_blocks,
        prompt_dim=prompt_dim,
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=_count(shapes, re.escape(prefix) + r"mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count(
            shapes, re.escape(prefix) + r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."
        ),
        iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def reset_sam_buffers(sam: Sam, device: torch.device) -> None:
    """Recreate SAM's non-persistent buffers (pixel mean/std) on ``device`` after a meta-device build."""
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1), False)


@dataclass(frozen=True)
class SamInput:
    """One image resized for SAM: ``pixels`` 3xhxw uint8 after the longest-side resize (normalisation and
    padding happen on the model's device, see :func:`sam_batch`), ``input_size`` (h, w), ``original_size``
    (H, W)."""

    pixels: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def sizes_only(self) -> SamInput:
        """The same sizes without the pixels (what a cache needs after encoding)."""
        return SamInput(torch.empty(0, dtype=torch.uint8), self.input_size, self.original_size)


def prepare_sam_input(image: np.ndarray, img_size: int) -> SamInput:
    """Resize the longest side of an HxWx3 uint8 RGB image to ``img_size`` (segment-anything's transform)."""
    resized = ResizeLongestSide(img_size).apply_image(image)
    h, w = resized.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
    return SamInput(pixels=pixels, input_size=(h, w), original_size=image.shape[:2])


def sam_batch(inputs: list[SamInput], img_size: int, device: torch.device) -> torch.Tensor:
    """Bx3xSxS float32 SAM input on ``device``: normalised with SAM's pixel statistics, zero-padded bottom and
    right to ``img_size`` (uint8 travels to the device, the float work happens there)."""
    mean = torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1)
    out = torch.zeros(len(inputs), 3, img_size, img_size, device=device)
    for i, item in enumerate(inputs):
        h, w = item.input_size
        out[i, :, :h, :w] = (item.pixels.to(device, non_blocking=True).float() - mean) / std
    return out


def upscale_logits(sam: Sam, low_res: torch.Tensor, prepared: SamInput) -> torch.Tensor:
    """Low-res logits Nx1xLxL -> Nx1xHxW float32 logits at the original size (SAM's postprocess_masks)."""
    return sam.postprocess_masks(low_res.float(), prepared.input_size, prepared.original_size)
