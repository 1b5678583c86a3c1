"""Strict, key-exact loading of the released layouts; the full-size layout on the meta device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cores.checkpoints.loading import (
    assign_weights,
    iter_tensors,
    load_checkpoint,
    to_model_key,
    weight_files,
)
from cores.errors import CheckpointError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("layout", "chain", "refiner"),
    [
        ("lisa", ("[SEG]",), False),
        ("cores", ("[SEG_SEMA]", "[SEG]"), False),
        ("cores-refiner", ("[SEG_SEMA]", "[SEG]"), True),
    ],
)
def test_each_tiny_layout_loads_strictly(tiny_checkpoints, layout, chain, refiner):
    path = tiny_checkpoints[layout]
    loaded = load_checkpoint(path)
    assert loaded.model.chain_tokens == chain
    assert (loaded.model.refiner is not None) is refiner
    # Every checkpoint tensor landed in the model unchanged.
    params = dict(loaded.model.state_dict())
    count = 0
    for key, tensor in iter_tensors(weight_files(path)):
        target = to_model_key(key)
        if target is None:
            continue
        assert torch.equal(params[target], tensor), key
        count += 1
    non_clip = [k for k in params if not k.startswith("vision_tower.")]
    assert count == len(non_clip)
    assert not any(t.is_meta for t in loaded.model.state_dict().values())


def test_released_layout_files(tiny_checkpoints):
    path = tiny_checkpoints["cores-refiner"]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LISAForCausalLM"]
    assert config["mm_vision_select_layer"] == -2
    assert config["mm_use_im_start_end"] is True
    assert (path / config["mm_vision_tower"]).is_dir()
    index = json.loads((path / "pytorch_model.bin.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2
    keys = set(index["weight_map"])
    assert "model.visual_model.mask_decoder.iou_token.weight" in keys
    assert "model.text_hidden_fcs.0.0.weight" in keys
    assert "model.text_hidden_fcs.0.2.weight" in keys
    assert "lm_head.weight" in keys
    assert "model.mm_projector.weight" in keys
    assert {k for k in keys if k.startswith("transformer_cross_attention_layers.")} == {
        "transformer_cross_attention_layers.multihead_attn.in_proj_weight",
        "transformer_cross_attention_layers.multihead_attn.in_proj_bias",
        "transformer_cross_attention_layers.multihead_attn.out_proj.weight",
        "transformer_cross_attention_layers.multihead_attn.out_proj.bias",
        "transformer_cross_attention_layers.norm.weight",
        "transformer_cross_attention_layers.norm.bias",
    }
    added = json.loads((path / "added_tokens.json").read_text())
    assert list(added) == ["[SEG_SEMA]", "[SEG]", "<im_start>", "<im_end>"]
    assert sorted(added.values()) == list(added.values())
    assert config["vocab_size"] == max(added.values()) + 1


def _rewrite_shard(path: Path, edit) -> None:
    index = json.loads((path / "pytorch_model.bin.index.json").read_text())
    shard = path / sorted(set(index["weight_map"].values()))[0]
    state = torch.load(shard, weights_only=True)
    edit(state, index)
    torch.save(state, shard)
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_missing_key_is_named(tiny_checkpoints, tmp_path):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")

    def drop(state, index):
        key = next(iter(state))
        del state[key]
        del index["weight_map"][key]

    _rewrite_shard(path, drop)
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_checkpoint(path)


def test_unknown_key_is_named(tiny_checkpoints, tmp_path):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")
    _rewrite_shard(path, lambda state, index: state.update({"model.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"model\.extra_head\.weight"):
        load_checkpoint(path)


def test_wrong_shape_is_named(tiny_checkpoints, tmp_path):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")

    def reshape(state, index):
        key = next(k for k in state if k.endswith("mm_projector.bias") or k.startswith("model.layers.0."))
        state[key] = torch.zeros(3, 3)

    _rewrite_shard(path, reshape)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path)


def test_refiner_keys_in_a_plain_cores_checkpoint_need_the_whole_refiner(tiny_checkpoints, tmp_path):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")
    _rewrite_shard(
        path,
        lambda state, index: state.update({"transformer_cross_attention_layers.norm.weight": torch.ones(32)}),
    )
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("tokenizer.model", "no tokenizer"),
        ("pytorch_model-00002-of-00002.bin", "missing"),
        ("pytorch_model.bin.index.json", "no weights"),
    ],
)
def test_missing_files(tiny_checkpoints, tmp_path, remove, message):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")
    (path / remove).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file.bin")


def test_wrong_layout_tokenizer_without_chain_tokens(tiny_checkpoints, tmp_path):
    path = _copy(tiny_checkpoints["cores"], tmp_path / "ck")
    (path / "added_tokens.json").write_text(json.dumps({"<im_start>": 400, "<im_end>": 401}))
    with pytest.raises(CheckpointError, match=r"neither \[SEG\] nor \[SEG_SEMA\]"):
        load_checkpoint(path)


def test_dtype_is_applied_without_fp32_copy_and_the_pe_follows_it(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16)
    model = loaded.model
    assert model.llm.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.sam.mask_decoder.iou_token.weight.dtype == torch.bfloat16
    # As the released stack's .bfloat16(): SAM's Gaussian matrix too, so its PE is computed in bf16.
    assert model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.bfloat16
    assert model.sam.prompt_encoder.get_dense_pe().dtype == torch.bfloat16


# --- full size on the meta device ----------------------------------------------------------------------
def _released_cores_7b_shapes() -> dict[str, tuple[int, ...]]:
    """The released CoReS-7B key layout (transformers 4.31 names), written out from the reference."""
    from segment_anything import build_sam_vit_h

    hidden, inter, vocab = 4096, 11008, 32004
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
        "model.mm_projector.weight": (hidden, 1024),
        "model.mm_projector.bias": (hidden,),
        "model.text_hidden_fcs.0.0.weight": (hidden, hidden),
        "model.text_hidden_fcs.0.0.bias": (hidden,),
        "model.text_hidden_fcs.0.2.weight": (256, hidden),
        "model.text_hidden_fcs.0.2.bias": (256,),
    }
    for i in range(32):
        p = f"model.layers.{i}."
        for proj in "qkvo":
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"{p}self_attn.rotary_emb.inv_freq"] = (64,)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    with torch.device("meta"):
        sam = build_sam_vit_h(checkpoint=None)
    for key, tensor in sam.state_dict().items():
        shapes[f"model.visual_model.{key}"] = tuple(tensor.shape)
    return shapes


def _full_size_meta_model(refiner: bool):
    from transformers import CLIPVisionModel

    from cores.modeling.build import build_model
    from cores.modeling.config import CORES_7B
    from cores.modeling.sam import SAM_GEOMETRIES
    from cores.modeling.vision import CLIP_VIT_L14

    config = CORES_7B
    with torch.device("meta"):
        tower = CLIPVisionModel(CLIP_VIT_L14)
        return build_model(
            config,
            SAM_GEOMETRIES["vit_h"],
            vision_tower=tower,
            chain_token_ids=(32000, 32001),
            refiner=refiner,
        )


def test_full_size_model_accepts_the_released_layout_on_meta():
    from cores.modeling.sam import SAM_GEOMETRIES, geometry_from_shapes

    shapes = _released_cores_7b_shapes()
    assert geometry_from_shapes(shapes, prefix="model.visual_model.") == SAM_GEOMETRIES["vit_h"]
    model = _full_size_meta_model(refiner=False)
    tensors = ((k, torch.empty(s, device="meta")) for k, s in shapes.items())
    assign_weights(model, tensors, dtype=torch.bfloat16, device=torch.device("meta"))
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vision_tower."))
    assert 7.35e9 < n_params < 7.45e9  # LLaMA-7B (6.74 B) + SAM ViT-H (0.64 B) + projector, seg head
    assert model.llm.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.vision_tower.encoder.layers[0].self_attn.q_proj.weight.shape == (1024, 1024)


def test_full_size_layout_missing_a_layer_fails_on_meta():
    shapes = _released_cores_7b_shapes()
    del shapes["model.layers.31.mlp.down_proj.weight"]
    model = _full_size_meta_model(refiner=False)
    tensors = ((k, torch.empty(s, device="meta")) for k, s in shapes.items())
    with pytest.raises(CheckpointError, match=r"layers\.31\.mlp\.down_proj"):
        assign_weights(model, tensors, dtype=torch.bfloat16, device=torch.device("meta"))


def test_hub_id_resolves_through_the_hugging_face_cache_offline(tiny_checkpoint, tmp_path):
    """A hub id loads from the hub cache (the released layout in ``models--org--name/snapshots/<rev>``),
    with no network: the same code path a worker with ``CORES_CHECKPOINT=Shawnee-bxy/CoReS`` takes."""
    import os
    import subprocess
    import sys

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-cores"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = (
        "from cores.checkpoints.loading import load_checkpoint\n"
        "loaded = load_checkpoint('someone/tiny-cores')\n"
        "print(loaded.path)\n"
        "print(loaded.model.chain_tokens)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == str(repo / "snapshots" / revision)
    assert lines[-1] == "('[SEG_SEMA]', '[SEG]')"
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cores.checkpoints.loading import load_checkpoint; load_checkpoint('someone/absent')",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0
    assert "could not be fetched from the Hugging Face hub or found in its cache" in missing.stderr
