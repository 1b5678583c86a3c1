"""``cores.inference.images.load_image`` decodes every file as the backend's fetcher does (one documented
rule: EXIF applied, transparency composited onto white, 16-bit grey's high byte), so the command line,
evaluation and fine-tuning see the pixels the served model sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.images.decode import decode_image
from cores.errors import ImageError
from cores.inference.images import load_image


def _gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(
        np.uint8
    )


def _rgba() -> Image.Image:
    alpha = np.linspace(0, 255, 30 * 40).reshape(30, 40).astype(np.uint8)
    return Image.fromarray(np.dstack([_gradient(30, 40), alpha]), "RGBA")


def _palette_with_transparency() -> tuple[Image.Image, dict]:
    return Image.fromarray(_gradient(30, 40)).quantize(32), {"transparency": 3}


def _rotated(orientation: int) -> tuple[Image.Image, dict]:
    image = Image.fromarray(_gradient(20, 36))
    exif = image.getexif()
    exif[0x0112] = orientation
    return image, {"exif": exif.tobytes()}


CASES = {
    "RGBA png": (lambda: (_rgba(), {}), "PNG"),
    "LA png": (lambda: (_rgba().convert("LA"), {}), "PNG"),
    "P with transparency": (_palette_with_transparency, "PNG"),
    "P": (lambda: (Image.fromarray(_gradient(30, 40)).quantize(16), {}), "PNG"),
    "L": (lambda: (Image.fromarray(_gradient(30, 40)).convert("L"), {}), "PNG"),
    "I;16": (lambda: (Image.fromarray((np.mgrid[:30, :40][1] * 1500).astype(np.uint16)), {}), "PNG"),
    "CMYK jpeg": (lambda: (Image.fromarray(_gradient(30, 40)).convert("CMYK"), {"quality": 95}), "JPEG"),
    "RGBA webp": (lambda: (_rgba(), {"lossless": True}), "WEBP"),
    "EXIF 6": (lambda: _rotated(6), "JPEG"),
    "EXIF 8": (lambda: _rotated(8), "JPEG"),
    "EXIF 3": (lambda: _rotated(3), "JPEG"),
    "GIF": (lambda: (Image.fromarray(_gradient(30, 40)).quantize(64), {"transparency": 0}), "GIF"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cores_decodes_as_the_backend_decodes(tmp_path, name):
    make, fmt = CASES[name]
    image, options = make()
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(buffer.getvalue())
    ours = load_image(path)
    backend = decode_image(buffer.getvalue(), max_pixels=10**8, shown=name)
    assert ours.dtype == np.uint8
    assert ours.shape == backend.shape
    assert np.array_equal(ours, backend)


def test_transparency_goes_onto_white_not_dropped(tmp_path):
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent red
    assert (load_image(tmp_path / "clear.png") == 255).all()


def test_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "bad.png")
