"""The CLIP vision tower: found where mm_vision_tower says (CoReS's training path means the hub id), loaded
key-exact and quietly from a full CLIP checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cores.checkpoints.layout import CLIP_HUB_ID, CORES_TRAINING_TOWER, resolve_vision_tower
from cores.checkpoints.vision_tower import load_vision_tower, read_vision_tower
from cores.errors import CheckpointError
from tests.paths import REPO_ROOT as ROOT

CPU = torch.device("cpu")


def _tower(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint / "clip-vit-tiny", tmp_path / "tower"))


def test_full_clip_checkpoint_loads_with_one_line_about_the_text_tower(tiny_checkpoint, caplog, capfd):
    folder = tiny_checkpoint / "clip-vit-tiny"
    stored = load_file(folder / "model.safetensors")
    assert any(k.startswith("text_model.") for k in stored)  # a full CLIP model, like openai's
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        tower, processor = load_vision_tower(str(folder), dtype=torch.float32, device=CPU)
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err
    assert "LOAD REPORT" not in out + err
    lines = [r.getMessage() for r in caplog.records if "text-tower" in r.getMessage()]
    assert len(lines) == 1
    assert "text_model.*" in lines[0]
    assert "ignored" in lines[0]
    assert not any("UNEXPECTED" in r.getMessage() for r in caplog.records)
    # Every vision tensor landed unchanged.
    state = tower.state_dict()
    vision = {k.removeprefix("vision_model."): t for k, t in stored.items() if k.startswith("vision_model.")}
    assert set(vision) - {"embeddings.position_ids"} == set(state) - {"embeddings.position_ids"}
    for key, tensor in vision.items():
        assert torch.equal(state[key], tensor), key
    assert torch.equal(tower.embeddings.position_ids[0], torch.arange(tower.embeddings.num_positions))
    assert processor.crop_size.height == 56


def _rewrite(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def test_a_missing_vision_weight_is_named(tiny_checkpoint, tmp_path):
    folder = _tower(tiny_checkpoint, tmp_path)
    _rewrite(folder, lambda s: s.pop("vision_model.post_layernorm.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing from the checkpoint: \['vision_model\.post_layernorm\.weight'\]"
    ):
        read_vision_tower(folder, dtype=torch.float32, device=CPU)


def test_a_mis_shaped_vision_weight_is_named(tiny_checkpoint, tmp_path):
    folder = _tower(tiny_checkpoint, tmp_path)
    _rewrite(folder, lambda s: s.update({"vision_model.pre_layrnorm.weight": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: \['vision_model\.pre_layrnorm\.weight"):
        read_vision_tower(folder, dtype=torch.float32, device=CPU)


def test_an_unknown_key_is_named(tiny_checkpoint, tmp_path):
    folder = _tower(tiny_checkpoint, tmp_path)
    _rewrite(folder, lambda s: s.update({"vision_model.extra.weight": torch.zeros(2)}))
    with pytest.raises(
        CheckpointError, match=r"unexpected checkpoint keys: \['vision_model\.extra\.weight'\]"
    ):
        read_vision_tower(folder, dtype=torch.float32, device=CPU)


def test_tower_dtype_follows_the_model(tiny_checkpoint):
    tower, _ = load_vision_tower(str(tiny_checkpoint / "clip-vit-tiny"), dtype=torch.bfloat16, device=CPU)
    assert {p.dtype for p in tower.parameters()} == {torch.bfloat16}
    assert not tower.training


# --- where mm_vision_tower points -----------------------------------------------------------------------
def test_cores_training_default_means_the_hub_id(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cores.checkpoints.layout"):
        assert resolve_vision_tower(CORES_TRAINING_TOWER, tmp_path) == CLIP_HUB_ID
    lines = [r for r in caplog.records if CLIP_HUB_ID in r.getMessage()]
    assert len(lines) == 1
    assert CORES_TRAINING_TOWER in lines[0].getMessage()


def test_other_missing_relative_paths_mean_the_hub_id_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cores.checkpoints.layout"):
        assert resolve_vision_tower("models/hub/clip-vit-large-patch14", tmp_path) == CLIP_HUB_ID
        assert resolve_vision_tower("./clip-vit-large-patch14", tmp_path) == CLIP_HUB_ID
        assert resolve_vision_tower("clip-vit-large-patch14", tmp_path) == CLIP_HUB_ID
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3


def test_existing_folders_hub_ids_and_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "ck" / "towers" / "clip").mkdir(parents=True)
    assert resolve_vision_tower("towers/clip", tmp_path / "ck") == str(tmp_path / "ck" / "towers" / "clip")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert resolve_vision_tower("here", tmp_path / "ck") == "here"
    assert resolve_vision_tower("openai/clip-vit-large-patch14", tmp_path / "ck") == CLIP_HUB_ID
    assert resolve_vision_tower(str(tmp_path / "here"), None) == str(tmp_path / "here")
    with pytest.raises(CheckpointError, match="absolute path but not a folder"):
        resolve_vision_tower(str(tmp_path / "nowhere"), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="neither a folder nor an org/name hub id"):
        resolve_vision_tower("not/a/folder", None, fallback=False)


def test_a_checkpoint_naming_the_training_path_loads_the_hub_tower(tiny_checkpoints, tmp_path):
    """A config holding CoReS's training path loads openai's tower from the hub cache (here: a tiny CLIP
    model cached under that id, offline); without it, the error names the hub id the path stands for."""
    path = Path(shutil.copytree(tiny_checkpoints["cores"], tmp_path / "ck"))
    config = json.loads((path / "config.json").read_text())
    config["mm_vision_tower"] = config["vision_tower"] = CORES_TRAINING_TOWER
    (path / "config.json").write_text(json.dumps(config))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "cores", "-v", "segment", "--checkpoint", str(path), "--device", "cpu"]
    command += ["--image", str(tmp_path / "img.png"), "--query", "the cup", "--out", str(tmp_path / "out")]

    missing = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert "cannot load the CLIP vision tower 'openai/clip-vit-large-patch14'" in missing.stderr

    repo = tmp_path / "hf" / "hub" / "models--openai--clip-vit-large-patch14"
    commit = "0" * 40
    shutil.copytree(tiny_checkpoints["cores"] / "clip-vit-tiny", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    found = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert found.stderr.count(CLIP_HUB_ID) == 1  # the one line saying what the path means
    assert "UNEXPECTED" not in found.stderr + found.stdout
