"""``python -m cores``: make-tiny-checkpoint, segment, eval, finetune."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cores.errors import CoresError
from cores.inference.result import ChainResult

logger = logging.getLogger("cores")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or Hugging Face hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (default: bf16 on GPU)")
    parser.add_argument("--vision-tower", default=None, help="override mm_vision_tower (hub id or folder)")
    parser.add_argument("--mode", choices=("answer", "generate"), default="answer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cores", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("make-tiny-checkpoint", help="write a tiny random checkpoint (tests, demos)")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--layout", choices=("lisa", "cores", "cores-refiner"), default="cores")
    tiny.add_argument("--seed", type=int, default=0)

    base = sub.add_parser("build-base", help="base checkpoint from LLaVA-v1 + SAM weights (training start)")
    base.add_argument("--llava", required=True, help="LLaVA-v1 checkpoint folder or hub id")
    base.add_argument("--sam", required=True, type=Path, help="SAM checkpoint, e.g. sam_vit_h_4b8939.pth")
    base.add_argument("--out", required=True, type=Path)
    base.add_argument("--layout", choices=("lisa", "cores", "cores-refiner"), default="cores")
    base.add_argument("--dtype", default="bfloat16")

    seg = sub.add_parser("segment", help="segment one image: PNG per level, overlay PNG, JSON summary")
    _add_model_args(seg)
    seg.add_argument("--image", required=True, type=Path)
    seg.add_argument("--query", required=True)
    seg.add_argument("--sentence", choices=("auto", "yes", "no"), default="auto", help="query template")
    seg.add_argument("--out", required=True, type=Path)

    ev = sub.add_parser("eval", help="gIoU/cIoU on a ReasonSeg-format folder")
    _add_model_args(ev)
    ev.add_argument("--data", required=True, type=Path)
    ev.add_argument("--level", type=int, default=-1, help="chain level to score (default: last)")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--out", type=Path, default=None, help="write the JSON report here too")

    ft = sub.add_parser(
        "finetune", help="LoRA fine-tune on a ReasonSeg folder (every chain level with a mask)"
    )
    ft.add_argument("--checkpoint", required=True, help="checkpoint folder or Hugging Face hub id")
    ft.add_argument("--data", required=True, type=Path, help="ReasonSeg folder, optionally with 'levels'")
    ft.add_argument(
        "--out", required=True, type=Path, help="merged checkpoint, finetune.json, trainer_state/"
    )
    ft.add_argument("--epochs", type=float, default=3.0, help="passes over the training split (default 3)")
    ft.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    ft.add_argument("--lr", type=float, default=3e-4)
    ft.add_argument("--batch-size", type=int, default=1)
    ft.add_argument("--grad-accum", type=int, default=1)
    ft.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on GPU, else fp32")
    ft.add_argument("--grad-checkpointing", action="store_true", help="recompute LLM activations (memory)")
    ft.add_argument("--val-fraction", type=float, default=0.1, help="held out for gIoU/cIoU (0: none)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--resume", action="store_true", help="continue from OUT/trainer_state")
    ft.add_argument("--lora-r", type=int, default=8)
    ft.add_argument("--lora-alpha", type=int, default=16)
    ft.add_argument("--lora-dropout", type=float, default=0.05)
    ft.add_argument("--warmup", type=int, default=100, help="linear warmup steps, then linear decay")
    ft.add_argument("--save-every", type=int, default=100, help="trainer state every K steps")
    ft.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _segment(args: argparse.Namespace) -> dict:
    from cores.inference.overlay import overlay
    from cores.inference.pipeline import CoresPipeline, load_image

    image = load_image(args.image)
    pipe = CoresPipeline.from_pretrained(
        args.checkpoint, device=args.device, dtype=args.dtype, vision_tower=args.vision_tower
    )
    sentence = {"auto": None, "yes": True, "no": False}[args.sentence]
    result = pipe.segment(image, args.query, is_sentence=sentence, mode=args.mode)
    args.out.mkdir(parents=True, exist_ok=True)
    for level in result.levels:
        Image.fromarray(level.mask.astype(np.uint8) * 255).save(args.out / f"level{level.index}.png")
    Image.fromarray(overlay(image, [lv.mask for lv in result.levels])).save(args.out / "overlay.png")
    summary = result.summary()
    summary["files"] = [f"level{lv.index}.png" for lv in result.levels] + ["overlay.png"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _eval(args: argparse.Namespace) -> dict:
    from cores.evaluation.evaluate import evaluate
    from cores.inference.pipeline import CoresPipeline

    pipe = CoresPipeline.from_pretrained(
        args.checkpoint, device=args.device, dtype=args.dtype, vision_tower=args.vision_tower
    )
    mode = args.mode

    class _Segmenter:
        def segment(self, image: np.ndarray, query: str, *, is_sentence: bool | None = None) -> ChainResult:
            return pipe.segment(image, query, is_sentence=is_sentence, mode=mode)

    report = evaluate(_Segmenter(), args.data, level=args.level, limit=args.limit).to_dict()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


def _finetune(args: argparse.Namespace) -> dict:
    from cores.training.config import FinetuneConfig
    from cores.training.finetune import finetune

    config = FinetuneConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        dtype=args.dtype,
        grad_checkpointing=args.grad_checkpointing,
        val_fraction=args.val_fraction,
        seed=args.seed,
        resume=args.resume,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        warmup=args.warmup,
        device=args.device,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    report = finetune(config)
    report.pop("losses", None)
    return report


def torch_device(name: str) -> Any:
    """A ``torch.device`` (imported lazily: ``--help`` stays fast)."""
    import torch

    return torch.device(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "make-tiny-checkpoint":
            from cores.checkpoints.tiny import make_tiny_checkpoint

            path = make_tiny_checkpoint(args.dir, layout=args.layout, seed=args.seed)
            out: dict = {"checkpoint": str(path), "layout": args.layout}
        elif args.command == "build-base":
            from cores.checkpoints.base import build_base_checkpoint
            from cores.inference.devices import resolve_dtype

            dtype = resolve_dtype(args.dtype, torch_device("cpu"))
            path = build_base_checkpoint(args.llava, args.sam, args.out, layout=args.layout, dtype=dtype)
            out = {"checkpoint": str(path), "layout": args.layout}
        elif args.command == "segment":
            out = _segment(args)
        elif args.command == "finetune":
            out = _finetune(args)
        else:
            out = _eval(args)
    except (CoresError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
