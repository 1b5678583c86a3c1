"""CLIP pixels bit-identical to the trained stack: the product's processor against transformers 4.31's
``CLIPImageProcessor``, run live in ``.venv-ref``, on the same decoded RGB arrays (the product's own decoding,
``cores.inference.images.load_image``, handed to both as ``.npy``), for the tiny tower's config and for the
real ``openai/clip-vit-large-patch14`` preprocessor config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from cores.checkpoints.loading import load_checkpoint
from cores.checkpoints.vision_tower import load_image_processor
from cores.inference.images import load_image
from cores.modeling.vision import clip_pixels
from tests.reference_env import run_reference

#: ``preprocessor_config.json`` of ``openai/clip-vit-large-patch14`` as published (legacy integer sizes).
OPENAI_CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: resampling differences show on both."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(array: np.ndarray, mode: str | None = None, **kwargs) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = Image.fromarray(array)
        if mode is not None:
            image = image.convert(mode)
        image.save(path, **kwargs)

    return write


def _with_alpha(h: int, w: int, seed: int, mode: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        rgb = _rgb(h, w, seed)
        alpha = np.linspace(0, 255, h * w).reshape(h, w).astype(np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        (image.convert("LA") if mode == "LA" else image).save(path)

    return write


def _palette(transparent: bool) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = Image.fromarray(_rgb(90, 130, 11)).quantize(64)
        if transparent:
            image.info["transparency"] = 5
            image.save(path, transparency=5)
        else:
            image.save(path)

    return write


def _exif(orientation: int, h: int, w: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = Image.fromarray(_rgb(h, w, orientation))
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(path, exif=exif, quality=95)

    return write


def _grey16(path: Path) -> None:
    values = (np.mgrid[:70, :90][1] * 700).astype(np.uint16)
    Image.fromarray(values).save(path)


#: name -> (file suffix, writer). 26 images: sizes, aspect ratios, modes, EXIF orientations.
IMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "landscape 640x480": (".jpg", _save(_rgb(480, 640, 1), quality=92)),
    "portrait 480x640": (".png", _save(_rgb(640, 480, 2))),
    "odd 333x517": (".png", _save(_rgb(517, 333, 3))),
    "odd 517x333": (".png", _save(_rgb(333, 517, 4))),
    "exact 224x224": (".png", _save(_rgb(224, 224, 5))),
    "just over 225x223": (".png", _save(_rgb(223, 225, 6))),
    "tiny 2x2": (".png", _save(_rgb(2, 2, 7))),
    "tiny 7x5": (".png", _save(_rgb(5, 7, 8))),
    "one pixel wide 1x300": (".png", _save(_rgb(300, 1, 9))),
    "two pixels tall 400x2": (".png", _save(_rgb(2, 400, 10))),
    "extreme landscape 4000x100": (".png", _save(_rgb(100, 4000, 11))),
    "extreme portrait 64x4096": (".png", _save(_rgb(4096, 64, 12))),
    "huge 5000x3000": (".jpg", _save(_rgb(3000, 5000, 13), quality=90)),
    "tower size 56x56": (".png", _save(_rgb(56, 56, 14))),
    "uniform": (".png", _save(np.full((150, 200, 3), (200, 30, 90), np.uint8))),
    "grey L": (".png", _save(_rgb(120, 160, 15), "L")),
    "grey 16-bit": (".png", _grey16),
    "grey with alpha LA": (".png", _with_alpha(80, 100, 16, "LA")),
    "RGBA": (".png", _with_alpha(100, 140, 17, "RGBA")),
    "palette P": (".png", _palette(False)),
    "palette P with transparency": (".png", _palette(True)),
    "CMYK jpeg": (".jpg", _save(_rgb(110, 150, 18), "CMYK", quality=95)),
    "EXIF orientation 6": (".jpg", _exif(6, 120, 80)),
    "EXIF orientation 8": (".jpg", _exif(8, 80, 120)),
    "EXIF orientation 3": (".jpg", _exif(3, 99, 77)),
    "webp": (".webp", _save(_rgb(210, 190, 19), quality=90)),
}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, tuple[np.ndarray, Path]]:
    """name -> (the product's decoded RGB array, its .npy for the reference)."""
    root = tmp_path_factory.mktemp("clip-images")
    out = {}
    for i, (name, (suffix, write)) in enumerate(IMAGES.items()):
        path = root / f"{i}{suffix}"
        write(path)
        array = load_image(path)
        np.save(root / f"{i}.npy", array)
        out[name] = (array, root / f"{i}.npy")
    return out


def _compare(reference_python, processor_dir: Path, processor, decoded, tmp_path: Path) -> None:
    names = list(decoded)
    request = {
        "processor": str(processor_dir),
        "images": [str(decoded[n][1]) for n in names],
        "out": str(tmp_path / "ref"),
    }
    ref = run_reference(reference_python, "clip_pixels.py", request)
    assert ref["class"] == "CLIPImageProcessor"
    for name, file in zip(names, ref["files"], strict=True):
        theirs = np.load(file)
        ours = clip_pixels(processor, decoded[name][0])[0].numpy()
        assert ours.dtype == theirs.dtype == np.float32, name
        assert ours.shape == theirs.shape, name
        differ = int((ours != theirs).sum())
        assert differ == 0, f"{name}: {differ} of {ours.size} values differ from 4.31"


def test_decoded_images_cover_the_cases(decoded):
    assert len(decoded) >= 20
    assert decoded["EXIF orientation 6"][0].shape == (80, 120, 3)  # rotated upright
    assert decoded["EXIF orientation 8"][0].shape == (120, 80, 3)
    assert decoded["one pixel wide 1x300"][0].shape == (300, 1, 3)
    assert decoded["huge 5000x3000"][0].shape == (3000, 5000, 3)


def test_tiny_tower_pixels_equal_transformers_431(reference_python, tiny_checkpoint, decoded, tmp_path):
    processor = load_checkpoint(tiny_checkpoint).image_processor  # the product's processor, as loaded
    assert isinstance(processor, CLIPImageProcessorPil)
    _compare(reference_python, tiny_checkpoint / "clip-vit-tiny", processor, decoded, tmp_path)


def test_openai_clip_config_pixels_equal_transformers_431(reference_python, decoded, tmp_path):
    folder = tmp_path / "clip-vit-large-patch14"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(OPENAI_CLIP_PREPROCESSOR))
    processor = load_image_processor(folder)
    assert isinstance(processor, CLIPImageProcessorPil)
    _compare(reference_python, folder, processor, decoded, tmp_path)


def test_an_image_one_or_three_pixels_tall_is_read_channels_last(tiny_checkpoint):
    """4.31 guesses the channel axis and reads an image 1 or 3 pixels tall as channels-first; the product says
    which axis it is, so such an image is processed as the image it is (there is no parity to keep there)."""
    processor = load_checkpoint(tiny_checkpoint).image_processor
    colour = np.array([200, 30, 90])
    expected = (colour / 255 - np.array(processor.image_mean)) / np.array(processor.image_std)
    for h in (1, 3):
        pixels = clip_pixels(processor, np.broadcast_to(colour.astype(np.uint8), (h, 90, 3)))
        assert pixels.shape == (1, 3, 56, 56)
        for channel in range(3):
            np.testing.assert_allclose(pixels[0, channel].numpy(), expected[channel], atol=1e-5)
