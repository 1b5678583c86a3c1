"""Benchmark: SAM's image encoder with each attention kernel, windows padded vs trimmed, same process.

Usage::

    .venv/bin/python benchmarks/bench_sam_encoder.py [--geometry reduced|vit_h] [--device cpu] [--repeats 5]

``reduced`` keeps ViT-H's token grid and windows (64x64 tokens, 14x14 windows padded to 70x70, global
blocks every 4th) at a smaller width and depth, so the CPU can run it; ``vit_h`` is the real encoder (GPU).
Prints the median milliseconds per image of each variant and its ratio to segment-anything's own encoder,
and the largest difference of its output from that encoder's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cores.modeling.sam import SAM_GEOMETRIES, build_sam
from cores.modeling.sam_encoder import set_kernel

REDUCED = dataclasses.replace(
    SAM_GEOMETRIES["vit_h"], encoder_dim=256, encoder_depth=8, encoder_heads=4, encoder_mlp_dim=1024,
    global_attn_indexes=(3, 7),
)  # fmt: skip
VARIANTS = (("reference", False), ("sdpa", False), ("sdpa", True), ("flex", True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=("reduced", "vit_h"), default="reduced")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    geometry = REDUCED if args.geometry == "reduced" else SAM_GEOMETRIES["vit_h"]
    torch.manual_seed(0)
    with torch.device(device):
        reference = build_sam(geometry).to(dtype).eval()
    for name, param in reference.image_encoder.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(param, std=0.5)
    x = torch.randn(1, 3, geometry.img_size, geometry.img_size, device=device, dtype=dtype)
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        want = reference.image_encoder(x)
        for kind, trim in VARIANTS:
            sam = copy.deepcopy(reference)
            set_kernel(sam, kind, trim_windows=trim)
            out = sam.image_encoder(x)  # warm-up
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                out = sam.image_encoder(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append((time.perf_counter() - start) * 1000)
            label = f"{kind}{' trimmed' if trim else ''}"
            results[label] = {"ms": statistics.median(times), "max_abs_diff": float((out - want).abs().max())}
    base = results["reference"]["ms"]
    print(f"SAM encoder ({args.geometry}, {device}, {dtype}, median of {args.repeats})")
    for label, row in results.items():
        row["speed_up"] = base / row["ms"]
        print(
            f"{label:16s} {row['ms']:9.1f} ms  {row['speed_up']:5.2f}x  max |diff| {row['max_abs_diff']:.2e}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
