"""Fine-tuning: losses, data with per-level masks, which weights train, a real overfit, resume, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from cores.checkpoints.loading import load_checkpoint
from cores.evaluation.metrics import intersection_union
from cores.evaluation.reasonseg import ReasonSegError, mask_to_polygons, write_sample
from cores.inference.pipeline import CoresPipeline, image_key
from cores.training.config import FinetuneConfig, FinetuneError, lr_factor
from cores.training.data import (
    ExampleBuilder,
    load_training_samples,
    split_samples,
    stream_indices,
    training_answers,
)
from cores.training.finetune import finetune, set_llm_checkpointing
from cores.training.lora import add_lora, trainable_parameters
from cores.training.losses import IGNORE_LABEL, masked_bce, masked_dice, shifted_ce
from cores.training.step import batch_loss
from tests.paths import REPO_ROOT as ROOT

#: (level 1 box, level 2 box) as (x0, y0, x1, y1) on a 64x64 image: a table and the cup on it.
BOXES = (
    ((8, 8, 56, 40), (16, 20, 32, 36)),
    ((20, 16, 60, 60), (36, 40, 52, 56)),
    ((0, 32, 40, 64), (8, 40, 24, 56)),
)
OVERFIT_STEPS = 30
OVERFIT_LR = 2e-2


def _shapes(mask: np.ndarray) -> list[dict]:
    return [{"label": "target", "points": p, "shape_type": "polygon"} for p in mask_to_polygons(mask)]


def _box(box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def write_level_samples(folder: Path, boxes=BOXES, *, levels: bool = True) -> Path:
    """ReasonSeg samples with a ``levels`` field: level 1 a yellow table, level 2 a red cup on it."""
    for i, (outer, inner) in enumerate(boxes):
        noise = np.random.default_rng(i).integers(0, 20, (64, 64, 3), dtype=np.uint8)
        image = np.full((64, 64, 3), (40, 90, 160), np.uint8) + noise
        table, cup = _box(outer), _box(inner)
        image[table] = (200, 180, 60)
        image[cup] = (220, 30, 30)
        sample = write_sample(folder, f"s{i}", image, [f"the red cup number {i}"], False, [("target", cup)])
        if levels:
            anno = json.loads(sample.json_path.read_text())
            anno["levels"] = [
                {"level": 1, "token": "[SEG_SEMA]", "shapes": _shapes(table)},
                {"level": 2, "token": "[SEG]", "shapes": _shapes(cup)},
            ]
            sample.json_path.write_text(json.dumps(anno))
    return folder


def _config(checkpoint: Path, data: Path, out: Path, **kwargs) -> FinetuneConfig:
    settings = {"steps": 4, "lr": 1e-2, "warmup": 0, "val_fraction": 0.0, "device": "cpu", "dtype": "fp32"}
    settings.update(kwargs)
    return FinetuneConfig(checkpoint=str(checkpoint), data=data, out=out, progress=False, **settings)


def _level_ious(pipe: CoresPipeline, data: Path) -> list[list[float]]:
    """Per sample, per chain level: IoU of the pipeline's mask against that level's ground truth."""
    ious = []
    for sample in load_training_samples(data, pipe.chain_tokens):
        image, masks = sample.load()
        result = pipe.segment(image, sample.texts[0], is_sentence=sample.is_sentence)
        row = []
        for level, gt in zip(result.levels, masks, strict=True):
            inter, union = intersection_union(level.mask, gt)
            row.append(inter / union if union else 1.0)
        ious.append(row)
    return ious


# ------------------------------------------------------------------------------------------------ losses


def test_bce_and_dice_match_hand_computed_values_and_skip_ignored_pixels():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 5.0]]])
    target = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    bce = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-5)) / 3
    assert masked_bce(logits, target).item() == pytest.approx(bce, rel=1e-5)
    p = [0.5, 1 / (1 + math.e**-2), 1 / (1 + math.e**-5)]
    dice = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
    assert masked_dice(logits, target).item() == pytest.approx(dice, rel=1e-5)
    moved = logits.clone()
    moved[0, 1, 0] = 40.0  # the ignored pixel
    assert masked_bce(moved, target).item() == pytest.approx(bce, rel=1e-5)
    assert masked_dice(moved, target).item() == pytest.approx(dice, rel=1e-5)
    all_ignored = torch.full((1, 2, 2), 255, dtype=torch.uint8)
    assert masked_bce(logits, all_ignored).item() == 0.0
    assert masked_dice(logits, all_ignored).item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        masked_bce(logits, target[:, :1])


def test_shifted_ce_predicts_each_label_from_the_previous_state():
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    hidden = torch.tensor([[1.0, 2.0], [0.0, -1.0], [9.0, 9.0]])
    labels = torch.tensor([IGNORE_LABEL, 2, 0])

    def ce(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    total, count = shifted_ce(hidden, labels, head)
    assert count == 2
    assert total.item() == pytest.approx(ce([1, 2, 3], 2) + ce([0, -1, -1], 0), rel=1e-5)


def test_lr_warms_up_then_decays_linearly():
    assert [lr_factor(s, 2, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_factor(0, 0, 4) == 1.0


# -------------------------------------------------------------------------------------------------- data


def test_levels_field_supervises_every_level_and_plain_samples_the_last(tmp_path):
    write_level_samples(tmp_path / "lv", BOXES[:1])
    write_level_samples(tmp_path / "plain", BOXES[:1], levels=False)
    (with_levels,) = load_training_samples(tmp_path / "lv", ("[SEG_SEMA]", "[SEG]"))
    (plain,) = load_training_samples(tmp_path / "plain", ("[SEG_SEMA]", "[SEG]"))
    assert with_levels.supervised == [True, True]
    assert plain.supervised == [False, True]
    _, masks = with_levels.load()
    assert np.array_equal(masks[0] == 1, _box(BOXES[0][0]))
    assert np.array_equal(masks[1] == 1, _box(BOXES[0][1]))
    _, masks = plain.load()
    assert (masks[0] == 255).all()
    # A one-level model places the data's [SEG] level on its only level and skips [SEG_SEMA].
    (lisa,) = load_training_samples(tmp_path / "lv", ("[SEG]",))
    assert lisa.supervised == [True]


def test_bad_levels_and_bad_folders_raise_clear_errors(tmp_path):
    data = write_level_samples(tmp_path / "d", BOXES[:1])
    path = data / "s0.json"
    anno = json.loads(path.read_text())
    anno["levels"] = [{"level": 1, "shapes": "nope"}]
    path.write_text(json.dumps(anno))
    with pytest.raises(ReasonSegError, match=r"levels\[0\].*'shapes' must be a list"):
        load_training_samples(data, ("[SEG_SEMA]", "[SEG]"))
    anno["levels"] = [{"token": "[SEG]", "shapes": []}, {"level": 2, "shapes": []}]
    path.write_text(json.dumps(anno))
    with pytest.raises(ReasonSegError, match="two 'levels' entries for chain level 2"):
        load_training_samples(data, ("[SEG_SEMA]", "[SEG]"))
    with pytest.raises(ReasonSegError, match="not a directory"):
        load_training_samples(tmp_path / "missing", ("[SEG]",))


def test_split_and_sample_stream_are_seeded():
    samples = [object()] * 10
    train, val = split_samples(samples, 0.2, seed=3)  # type: ignore[arg-type]
    assert (len(train), len(val)) == (8, 2)
    with pytest.raises(ValueError, match="nothing would be left"):
        split_samples(samples[:1], 0.5, seed=0)  # type: ignore[arg-type]
    stream = stream_indices(4, seed=1, start=0, count=12)
    assert [sorted(stream[i : i + 4]) for i in (0, 4, 8)] == [[0, 1, 2, 3]] * 3
    assert stream_indices(4, seed=1, start=5, count=3) == stream[5:8]
    assert len(training_answers(("[SEG_SEMA]", "[SEG]"))) == 18
    assert training_answers(("[SEG]",))[0] == "It is [SEG]."


# ----------------------------------------------------------------------------------- trainable weights


def test_lora_only_on_the_language_models_q_and_v(tiny_checkpoints):
    model = load_checkpoint(tiny_checkpoints["cores-refiner"]).model
    add_lora(model, r=8, alpha=16, dropout=0.05)
    lora_modules = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    layers = model.llm.config.num_hidden_layers
    assert sorted(lora_modules) == sorted(
        f"llm.model.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("q_proj", "v_proj")
    )
    names = set(trainable_parameters(model))
    full = ("llm.lm_head.", "llm.model.embed_tokens.", "sam.mask_decoder.", "text_hidden_fcs.", "refiner.")
    assert {n for n in names if not n.startswith(full)} == {
        n for n in names if ".lora_A." in n or ".lora_B." in n
    }
    for prefix in full:
        module_params = [n for n, _ in model.named_parameters() if n.startswith(prefix) and ".lora_" not in n]
        assert module_params
        assert set(module_params) <= names
    frozen = ("vision_tower.", "sam.image_encoder.", "sam.prompt_encoder.", "mm_projector.", "llm.model.norm")
    assert not [n for n in names if n.startswith(frozen) or ".base_layer." in n]
    assert all(".lora_" in n for n in names if n.startswith("llm.model.layers."))


def test_gradient_checkpointing_recomputes_the_llm_with_the_same_gradients(tiny_checkpoint, tmp_path):
    data = write_level_samples(tmp_path / "d", BOXES[:1])
    results = []
    for checkpointing in (False, True):
        loaded = load_checkpoint(tiny_checkpoint)
        model = loaded.model
        torch.manual_seed(0)
        add_lora(model, r=8, alpha=16, dropout=0.0)
        if checkpointing:
            set_llm_checkpointing(model.llm, True)
        model.train()
        calls: list[int] = []
        for part in (model.llm.model.layers[0].self_attn, model.llm.model.layers[0].mlp):
            part.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        builder = ExampleBuilder(loaded.tokenizer, model.chain_tokens, 16, 1024)
        sample = load_training_samples(data, model.chain_tokens)[0]
        loss = batch_loss(model, CoresPipeline(loaded), [builder.example(sample, np.random.default_rng(0))])
        loss.total.backward()
        grad = model.llm.model.layers[0].self_attn.v_proj.lora_B["default"].weight.grad
        results.append((len(calls), float(loss.total.detach()), grad.clone()))
    (plain_calls, plain_loss, plain_grad), (ckpt_calls, ckpt_loss, ckpt_grad) = results
    assert plain_calls == 2
    assert ckpt_calls > plain_calls  # the backward pass recomputed (part of) layer 0
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    assert torch.allclose(ckpt_grad, plain_grad, atol=1e-6)
    assert plain_grad.abs().sum() > 0


def test_each_sample_is_decoded_and_hashed_once_across_steps(tiny_checkpoint, tmp_path):
    """A fine-tune draws the same samples step after step: the image is decoded, its masks rasterised and
    its content hashed once, and the pipeline uses that key instead of hashing the pixels again."""
    data = write_level_samples(tmp_path / "d", BOXES[:2])
    loaded = load_checkpoint(tiny_checkpoint)
    builder = ExampleBuilder(loaded.tokenizer, loaded.model.chain_tokens, 16, 1024)
    samples = load_training_samples(data, loaded.model.chain_tokens)
    rng = np.random.default_rng(0)
    examples = [builder.example(samples[i % 2], rng) for i in range(6)]
    assert builder.samples.loads == 2
    assert examples[0].image is examples[2].image
    assert examples[0].image_key == image_key(examples[0].image)
    pipe = CoresPipeline(loaded)
    first = pipe.set_images([examples[0].image], keys=[examples[0].image_key])[0]
    # a given key is trusted, not recomputed: another image under the same key is the cached state
    other = np.zeros_like(examples[1].image)
    assert pipe.set_images([other], keys=[examples[0].image_key])[0] is first
    with pytest.raises(ValueError, match="image keys"):
        pipe.set_images([other], keys=[])


# ---------------------------------------------------------------------------------- overfit, resume, CLI


@pytest.fixture(scope="module")
def overfit(tiny_checkpoint, tmp_path_factory):
    """One seeded fine-tune on three samples, every level supervised; IoUs before and after."""
    root = tmp_path_factory.mktemp("overfit")
    data = write_level_samples(root / "data")
    before = _level_ious(CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32"), data)
    report = finetune(
        _config(tiny_checkpoint, data, root / "out", steps=OVERFIT_STEPS, lr=OVERFIT_LR, seed=0)
    )
    after = _level_ious(CoresPipeline.from_pretrained(root / "out", device="cpu", dtype="float32"), data)
    return {"out": root / "out", "report": report, "before": before, "after": after}


def test_overfit_lowers_the_loss_and_raises_every_levels_iou(overfit):
    losses = [r["loss"] for r in overfit["report"]["losses"]]
    assert len(losses) == OVERFIT_STEPS
    assert np.mean(losses[-5:]) < 0.35 * np.mean(losses[:3])
    masks = [r["mask"] for r in overfit["report"]["losses"]]
    assert np.mean(masks[-5:]) < 0.3 * np.mean(masks[:3])
    before, after = np.array(overfit["before"]), np.array(overfit["after"])  # samples x levels
    assert before.shape == after.shape == (3, 2)
    for level in range(2):
        assert after[:, level].mean() > before[:, level].mean() + 0.3, (before, after)
        assert after[:, level].mean() > 0.6, (before, after)


def test_only_the_intended_weights_changed(overfit, tiny_checkpoint):
    source = load_checkpoint(tiny_checkpoint).model.state_dict()
    tuned_model = load_checkpoint(overfit["out"]).model
    tuned = tuned_model.state_dict()
    assert set(source) == set(tuned)
    changed = {k for k in source if not torch.equal(source[k], tuned[k])}
    assert not [
        k for k in changed if k.startswith(("vision_tower.", "sam.image_encoder.", "sam.prompt_encoder."))
    ]
    assert not [k for k in changed if k.startswith("mm_projector.")]
    llm_changed = {k for k in changed if k.startswith("llm.model.layers.")}
    assert not [k for k in llm_changed if not k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert not [k for k in changed if k.startswith("llm.model.norm")]
    for expected in ("sam.mask_decoder.", "text_hidden_fcs.", "llm.lm_head.", "llm.model.embed_tokens."):
        assert any(k.startswith(expected) for k in changed), expected
    layers = tuned_model.llm.config.num_hidden_layers
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            assert f"llm.model.layers.{i}.self_attn.{proj}.weight" in changed


def test_resume_continues_exactly(tiny_checkpoint, tmp_path):
    data = write_level_samples(tmp_path / "data", BOXES[:2])
    straight = finetune(_config(tiny_checkpoint, data, tmp_path / "straight"))
    stopped = finetune(_config(tiny_checkpoint, data, tmp_path / "split", stop_after=2))
    assert stopped["stopped_at"] == 2
    assert not (tmp_path / "split" / "config.json").exists()
    with pytest.raises(FinetuneError, match=r"lr: saved 0\.01, now 0\.02"):
        finetune(_config(tiny_checkpoint, data, tmp_path / "split", lr=2e-2, resume=True))
    resumed = finetune(_config(tiny_checkpoint, data, tmp_path / "split", resume=True))
    assert resumed["resumed_from_step"] == 2
    assert [r["step"] for r in resumed["losses"]] == [1, 2, 3, 4]
    for a, b in zip(straight["losses"], resumed["losses"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    one = load_checkpoint(tmp_path / "straight").model.state_dict()
    two = load_checkpoint(tmp_path / "split").model.state_dict()
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-6), key
    with pytest.raises(FinetuneError, match="already holds a fine-tune"):
        finetune(_config(tiny_checkpoint, data, tmp_path / "straight"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cores", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_finetune_writes_a_loadable_checkpoint_and_before_after_scores(tiny_checkpoint, tmp_path):
    data = write_level_samples(tmp_path / "data")
    out = tmp_path / "out"
    run = _cli(
        "finetune", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--out", str(out),
        "--steps", "3", "--lr", "1e-2", "--warmup", "1", "--val-fraction", "0.34", "--seed", "1",
        "--device", "cpu", "--dtype", "fp32", "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["steps"] == 3
    report = json.loads((out / "finetune.json").read_text())
    assert [r["step"] for r in report["losses"]] == [1, 2, 3]
    assert report["args"]["lr"] == 1e-2
    validation = report["validation"]
    assert len(validation["samples"]) == 1
    for when in ("before", "after"):
        assert 0.0 <= validation[when]["giou"] <= 1.0
        assert [lv["token"] for lv in validation[when]["levels"]] == ["[SEG_SEMA]", "[SEG]"]
    assert (out / "trainer_state" / "state.pt").exists()
    assert (out / "clip-vit-tiny").is_dir()
    assert json.loads((out / "config.json").read_text())["mm_vision_tower"] == "clip-vit-tiny"
    pipe = CoresPipeline.from_pretrained(out, device="cpu")
    sample = load_training_samples(data, pipe.chain_tokens)[0]
    image, _ = sample.load()
    assert [lv.token for lv in pipe.segment(image, sample.texts[0]).levels] == ["[SEG_SEMA]", "[SEG]"]


def test_cli_finetune_bad_data_exits_2(tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    run = _cli(
        "finetune", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "empty"),
        "--out", str(tmp_path / "out"), "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 2
    assert "no ReasonSeg samples" in run.stderr
