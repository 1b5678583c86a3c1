"""``python -m cores.bench``: latency, throughput and memory of the serving paths, against a naive baseline
run in the same process on the same weights.

Real sizes use random weights initialised on the device (LLaMA-7B + CLIP ViT-L/14 + SAM ViT-H, bf16): no
checkpoint download is needed, and the timings are those of the real shapes. ``--size tiny`` runs the same
script on the tiny test model (CPU smoke run). Prints a table and writes JSON (``--json``).

Paths compared:

* fast: answer mode, per-image cache of SAM/CLIP encodings, cached prompt prefix, SDPA in SAM's encoder,
  batched bulk (``segment_batch``);
* baseline: the same model with no caches, no prefix reuse, segment-anything's own attention, one query at
  a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from cores.bench_fast import graphed_pipeline, measure_graphed, memory_gib, to_jpeg
from cores.checkpoints.loading import LoadedCheckpoint
from cores.checkpoints.tiny import make_tiny_checkpoint
from cores.inference.devices import resolve_device, resolve_dtype
from cores.inference.pipeline import CoresPipeline
from cores.modeling.build import build_model
from cores.modeling.config import CORES_7B, CORES_CHAIN
from cores.modeling.sam import SAM_GEOMETRIES, prepare_sam_input, reset_sam_buffers, sam_batch
from cores.modeling.sam_attention import use_sdpa
from cores.modeling.sam_encoder import set_kernel, uncompile_encoder
from cores.modeling.tokenizer import load_tokenizer, token_id
from cores.modeling.vision import CLIP_VIT_L14

logger = logging.getLogger("cores.bench")

QUERIES = (
    "the thing you would use to cut the bread",
    "where would a tired person sit in this room?",
    "the object that keeps the food cold",
    "the red cup",
)


def random_checkpoint(
    size: str, device: torch.device, dtype: torch.dtype, workdir: Path, base_vocab: int = 1000
) -> LoadedCheckpoint:
    """A model of real (``7b``) or tiny size with random weights, built directly on ``device`` in ``dtype``.

    The tokenizer is a tiny one trained on the prompt text with ``base_vocab`` pieces (its ids fit any
    vocabulary): at 1000 it spells the prompts in whole words, ~380 positions with the image, like LLaMA's
    tokenizer; the positions are reported.
    """
    tiny_dir = make_tiny_checkpoint(workdir / "tiny", layout="cores", base_vocab=base_vocab)
    if size == "tiny":
        from cores.checkpoints.loading import load_checkpoint

        return load_checkpoint(tiny_dir, device=device, dtype=dtype)
    tokenizer = load_tokenizer(tiny_dir)
    chain_ids = tuple(token_id(tokenizer, t) for t in CORES_CHAIN)
    config = CORES_7B
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            tower = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14.to_dict()))
            model = build_model(
                config, SAM_GEOMETRIES["vit_h"], vision_tower=tower, chain_token_ids=chain_ids, refiner=False
            )
    finally:
        torch.set_default_dtype(previous)
    reset_sam_buffers(model.sam, device)
    model.eval().requires_grad_(False)
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        image_processor=CLIPImageProcessorPil(),
        config=config,
        path=tiny_dir,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def latency_stats(values: list[float]) -> dict[str, float]:
    """p50, p95 and mean (ms) of latencies in milliseconds, and their count."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": statistics.median(ordered),
        "p95_ms": p95,
        "mean_ms": statistics.fmean(ordered),
        "n": len(values),
    }


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _one_by_one(pipe: CoresPipeline, batch: Sequence[tuple[np.ndarray, str, bool | None]]) -> None:
    for image, query, _ in batch:
        pipe.segment(image, query)


def measure_path(
    pipe: CoresPipeline, *, fast: bool, images: list[np.ndarray], repeats: int, batch_sizes: list[int]
) -> dict[str, Any]:
    """Interactive latency (new image, repeated image) and bulk throughput of one path."""
    device = pipe.device
    use_sdpa(pipe.model.sam, fast)
    pipe.clear_cache()
    pipe.segment(images[-1], QUERIES[0])  # warm-up (kernels, allocator, prefix)
    _peak_reset(device)
    new = [
        _timed(partial(pipe.segment, im, QUERIES[i % len(QUERIES)]), device)
        for i, im in enumerate(images[:repeats])
    ]
    same = images[0]
    pipe.segment(same, QUERIES[0])
    repeated = [
        _timed(partial(pipe.segment, same, QUERIES[i % len(QUERIES)]), device) for i in range(repeats)
    ]
    out: dict[str, Any] = {
        "new_image": latency_stats(new),
        "repeated_image": latency_stats(repeated),
        "bulk": {},
    }
    for size in batch_sizes:
        batch = [(images[i % len(images)], QUERIES[i % len(QUERIES)], None) for i in range(size)]
        run = partial(pipe.segment_batch, batch) if fast else partial(_one_by_one, pipe, batch)
        try:
            pipe.clear_cache()
            run()  # untimed: this batch size's shapes warmed
            pipe.clear_cache()
            _peak_reset(device)
            ms = _timed(run, device)
        except torch.OutOfMemoryError:
            out["bulk"][str(size)] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        out["bulk"][str(size)] = {"images_per_s": size / (ms / 1000), "ms": ms, **memory_gib(device)}
    rates = [v["images_per_s"] for v in out["bulk"].values() if "images_per_s" in v]
    out["bulk_best_images_per_s"] = max(rates) if rates else None
    peaks = [v["peak_allocated_gib"] for v in out["bulk"].values() if v.get("peak_allocated_gib")]
    out["peak_memory_gb"] = max(peaks) if peaks else _peak_gb(device)  # the largest bulk batch's peak
    return out


def measure_components(pipe: CoresPipeline, image: np.ndarray, repeats: int) -> dict[str, Any]:
    """Per-stage timings (eager reference points: SAM encoder, CLIP, prefill, SAM decoder, decode step)."""
    device, model = pipe.device, pipe.model
    pipe.clear_cache()
    state = pipe.set_image(image)
    prepared = prepare_sam_input(image, model.sam.image_encoder.img_size)
    pixels = sam_batch([prepared], model.sam.image_encoder.img_size, device)
    clip_in = torch.zeros(1, 3, 224, 224) if pipe.model.vision_tower.config.image_size == 224 else None
    ids = pipe.prompt_ids(QUERIES[0], is_sentence=None, with_answer=True)
    embeds, _ = model.embed_sequence(ids, state.clip_tokens)
    chain = torch.zeros(1, 2, model.sam.prompt_encoder.embed_dim, device=device, dtype=model.dtype)
    out: dict[str, Any] = {"prompt_positions": int(embeds.shape[0])}
    with torch.no_grad():
        for name, fn in {
            "sam_encoder_sdpa": lambda: (use_sdpa(model.sam, True), model.encode_sam(pixels)),
            "sam_encoder_eager": lambda: (use_sdpa(model.sam, False), model.encode_sam(pixels)),
            "clip": (lambda: model.encode_clip(clip_in)) if clip_in is not None else None,
            "prefill_full_prompt": lambda: model.hidden_states([embeds]),
            "sam_decoder_chain": lambda: model.decode_chain(state.sam_embedding, chain),
        }.items():
            if fn is None:
                continue
            fn()
            out[f"{name}_ms"] = statistics.median(_timed(fn, device) for _ in range(repeats))
    use_sdpa(model.sam, True)
    out["flash_attention"] = _flash_check(device, model.dtype)
    forced = _forced(pipe, QUERIES[0])
    pipe.segment(image, QUERIES[0], mode="generate", allowed_tokens=forced)
    gen_ms = statistics.median(
        _timed(lambda: pipe.segment(image, QUERIES[0], mode="generate", allowed_tokens=forced), device)
        for _ in range(max(3, repeats // 4))
    )
    n_tokens = len(pipe.prompt_ids(QUERIES[0], is_sentence=None, with_answer=True)) - len(
        pipe.prompt_ids(QUERIES[0], is_sentence=None, with_answer=False)
    )
    out["generate_total_ms"] = gen_ms
    out["generated_tokens"] = n_tokens
    return out


def _flash_check(device: torch.device, dtype: torch.dtype) -> str:
    """Whether the flash kernel accepts SAM ViT-H's global-attention shape with folded rel-pos (dim 208)."""
    if device.type != "cuda":
        return "not on CUDA"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 16, 4096, 208, device=device, dtype=dtype)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as exc:
        return f"unavailable: {str(exc).splitlines()[0][:200]}"
    return "ok"


def _forced(pipe: CoresPipeline, query: str) -> Callable[[list[int]], list[int] | None]:
    """Constrain generation to the fixed answer (a random-weight model would not emit the chain)."""
    prompt = pipe.prompt_ids(query, is_sentence=None, with_answer=False).tolist()
    answer = pipe.prompt_ids(query, is_sentence=None, with_answer=True).tolist()[len(prompt) :]
    return lambda generated: [answer[len(generated)]] if len(generated) < len(answer) else None


def mask_agreement(
    fast: CoresPipeline, base: CoresPipeline, images: list[np.ndarray], n: int
) -> dict[str, float]:
    """IoU between the fast and baseline paths' masks per level (1.0 = identical), min and mean over n."""
    ious: list[float] = []
    for i in range(n):
        use_sdpa(fast.model.sam, True)
        a = fast.segment(images[i], QUERIES[i % len(QUERIES)])
        use_sdpa(base.model.sam, False)
        b = base.segment(images[i], QUERIES[i % len(QUERIES)])
        for la, lb in zip(a.levels, b.levels, strict=True):
            union = np.logical_or(la.mask, lb.mask).sum()
            ious.append(float(np.logical_and(la.mask, lb.mask).sum() / union) if union else 1.0)
    use_sdpa(fast.model.sam, True)
    return {"min_iou": min(ious), "mean_iou": statistics.fmean(ious), "pairs": len(ious)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cores.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=50, help="latencies per figure (p95 needs >= 50)")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--image-size", default="768x1024", help="HxW of the random test images")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--no-graphs", action="store_true", help="skip the static-shape / CUDA-graph path")
    parser.add_argument(
        "--compile-sam", action="store_true", help="torch.compile SAM's encoder (graphs path)"
    )
    parser.add_argument("--buckets", default="1,2,4,8,16,32", help="batch buckets of the graphs path")
    parser.add_argument("--base-vocab", type=int, default=1000, help="pieces of the benchmark tokenizer")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    h, w = (int(v) for v in args.image_size.split("x"))
    rng = np.random.default_rng(0)
    n_images = max(args.repeats, max(int(b) for b in args.batch_sizes.split(","))) + 1
    images = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for _ in range(n_images)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        checkpoint = random_checkpoint(args.size, device, dtype, Path(tmp), args.base_vocab)
        build_s = time.perf_counter() - started
        logger.info("built %s model on %s in %.1f s", args.size, device, build_s)
        report: dict[str, Any] = {
            "size": args.size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype),
            "torch": torch.__version__,
            "image_size": [h, w],
            "build_s": build_s,
            "weights_gb": _peak_gb(device),
        }
        fast = CoresPipeline(checkpoint)
        report["components"] = measure_components(fast, images[0], args.repeats)
        if not args.no_graphs:
            buckets = tuple(int(b) for b in args.buckets.split(","))
            graphed = graphed_pipeline(checkpoint, compile_sam=args.compile_sam, batch_buckets=buckets)
            report["graphs"] = measure_graphed(
                graphed,
                jpegs=[to_jpeg(im) for im in images],
                queries=QUERIES,
                repeats=args.repeats,
                batch_sizes=[b for b in batch_sizes if b <= max(buckets)],
            )
            graphed.fast = None  # the paths below run the same model eagerly, as in round 1
            uncompile_encoder(checkpoint.model.sam)
            set_kernel(checkpoint.model.sam, "sdpa", trim_windows=False)
        report["fast"] = measure_path(
            fast, fast=True, images=images, repeats=args.repeats, batch_sizes=batch_sizes
        )
        if not args.skip_baseline:
            base = CoresPipeline(
                checkpoint, cache_bytes=0, prefix_cache=False
            )  # measure_path sets its attention
            report["baseline"] = measure_path(
                base, fast=False, images=images, repeats=args.repeats, batch_sizes=batch_sizes
            )
            report["fast_vs_baseline_masks"] = mask_agreement(fast, base, images, n=4)
    _print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _print_table(report: dict[str, Any]) -> None:
    paths = [p for p in ("fast", "graphs", "baseline") if p in report]
    rows = [("figure", *paths, *(f"{p} speed-up" for p in paths if p != "baseline"))]

    def add(label: str, key: Callable[[dict[str, Any]], float | None], higher_better: bool = False) -> None:
        values = {p: key(report[p]) for p in paths}
        base = values.get("baseline")
        shown = [f"{v:.1f}" if v is not None else "-" for v in values.values()]
        ratios = [
            "" if not (v and base) else f"{(v / base if higher_better else base / v):.2f}x"
            for p, v in values.items()
            if p != "baseline"
        ]
        rows.append((label, *shown, *ratios))

    add("new image p50 (ms)", lambda r: r["new_image"]["p50_ms"])
    add("new image p95 (ms)", lambda r: r["new_image"]["p95_ms"])
    add("repeated image p50 (ms)", lambda r: r["repeated_image"]["p50_ms"])
    add("repeated image p95 (ms)", lambda r: r["repeated_image"]["p95_ms"])
    add("bulk best (images/s)", lambda r: r["bulk_best_images_per_s"], higher_better=True)
    add("peak memory (GB)", lambda r: r.get("peak_memory_gb"), higher_better=True)
    width = max(len(r[0]) for r in rows)
    print(f"{report['size']} on {report['device']} ({report['dtype']})")
    for row in rows:
        print(f"{row[0]:<{width}}  " + "  ".join(f"{cell:>16}" for cell in row[1:]))
    print(
        "components:",
        json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in report["components"].items()}),
    )
    if "graphs" in report:
        graphs = report["graphs"]
        print(f"graphs cold start: {graphs['cold_start_s']:.1f} s for {graphs['cold_start_shapes']} shapes")
        print("graphs bulk per batch size:", json.dumps(graphs["bulk"]))
        print("attention kernels:", json.dumps(graphs["attention_kernels"]))
    if "fast_vs_baseline_masks" in report:
        print("fast vs baseline masks:", json.dumps(report["fast_vs_baseline_masks"]))


if __name__ == "__main__":
    raise SystemExit(main())
