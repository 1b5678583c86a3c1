"""backend.label_studio.rle: byte-identical to label-studio-sdk's brush encoder, and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from backend.label_studio.rle import decode_mask, decode_values, encode_mask, encode_values, rle_value_count


def _sdk(mask: np.ndarray) -> list[int]:
    """The reference: what label-studio-sdk writes for a 0/255 mask."""
    return mask2rle(mask.astype(np.uint8) * 255)


def _disk(height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.hypot(yy - cy, xx - cx) < r


def _ragged(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = height / 2, width / 2
    angle = np.arctan2(yy - cy, xx - cx)
    limit = min(height, width) * (0.3 + 0.05 * np.sin(5 * angle)) + rng.normal(0, 2.5, (height, width))
    return np.hypot(yy - cy, xx - cx) < limit


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    cases: dict[str, np.ndarray] = {
        "empty": np.zeros((48, 64), dtype=bool),
        "full": np.ones((48, 64), dtype=bool),
        "one_pixel_1x1_on": np.ones((1, 1), dtype=bool),
        "one_pixel_1x1_off": np.zeros((1, 1), dtype=bool),
        "noise_50": rng.random((37, 53)) < 0.5,
        "noise_5": rng.random((61, 29)) < 0.05,
        "noise_95": rng.random((29, 61)) < 0.95,
        "blobs": _disk(90, 120, 30, 40, 20) | _disk(90, 120, 60, 90, 25),
        "blob_with_hole": _disk(101, 77, 50, 38, 30) & ~_disk(101, 77, 50, 38, 10),
        "ragged": _ragged(120, 160, seed=0),
        "row_1xN": rng.random((1, 257)) < 0.3,
        "column_Nx1": rng.random((311, 1)) < 0.3,
        "odd_size": _ragged(97, 131, seed=1),
        # run lengths (in RGBA values) at the size-class boundaries: 4, 8 | 12, 16 | 20, 256 | 260
        "run_boundaries": np.repeat(
            np.arange(12) % 2 == 0, [1, 2, 3, 4, 5, 63, 64, 65, 1, 2, 100, 3]
        ).reshape(1, -1),
        # 16384 px = 65536 values: exactly one maximal chunk; one more pixel needs a second chunk
        "run_65536": np.ones((128, 128), dtype=bool),
        "run_65540": np.ones((1, 16385), dtype=bool),
        "run_4x65536": np.ones((256, 256), dtype=bool),
        "long_run_then_short": np.concatenate([np.zeros(16384 * 3 + 7, bool), np.ones(3, bool)]).reshape(
            1, -1
        ),
    }
    for pos in [(0, 0), (0, 63), (47, 0), (47, 63), (20, 31)]:
        mask = np.zeros((48, 64), dtype=bool)
        mask[pos] = True
        cases[f"single_pixel_{pos[0]}_{pos[1]}"] = mask
    for n in range(1, 40):
        cases[f"row_1x{n}"] = rng.random((1, n)) < 0.5  # every padding residue (total bits mod 8)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_mask_matches_sdk_byte_for_byte(name: str) -> None:
    mask = CASES[name]
    assert encode_mask(mask) == _sdk(mask)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name: str) -> None:
    mask = CASES[name]
    decoded = decode_mask(encode_mask(mask), *mask.shape)
    assert decoded.dtype == np.bool_
    np.testing.assert_array_equal(decoded, mask)


def test_padding_covers_both_cases() -> None:
    """The reference pads 1..8 zero bits: a stream ending on a byte boundary gets a whole zero byte."""
    endings = set()
    for mask in CASES.values():
        rle = encode_mask(mask)
        endings.add(rle[-1] == 0)
    assert endings == {True, False}


@pytest.mark.parametrize("kind", ["blobs", "ragged", "noise"])
def test_large_1024x768_matches_sdk(kind: str) -> None:
    height, width = 768, 1024
    if kind == "blobs":
        mask = _disk(height, width, 300, 400, 200) | _disk(height, width, 600, 800, 120)
    elif kind == "ragged":
        mask = _ragged(height, width, seed=7)
    else:
        mask = np.random.default_rng(7).random((height, width)) < 0.5
    rle = encode_mask(mask)
    assert rle == _sdk(mask)
    if kind != "noise":  # the SDK's pure-Python decoder needs seconds for 400k runs
        alpha = np.asarray(decode_rle(rle)).reshape(height, width, 4)[:, :, 3]
        np.testing.assert_array_equal(alpha == 255, mask)


def test_accepts_uint8_int_and_noncontiguous_masks() -> None:
    mask = _ragged(40, 50, seed=3)
    expected = _sdk(mask)
    assert encode_mask(mask.astype(np.uint8)) == expected  # 0/1
    assert encode_mask(mask.astype(np.uint8) * 255) == expected  # 0/255: nonzero is foreground
    assert encode_mask(mask.astype(np.int64) * 7) == expected
    transposed = np.ascontiguousarray(mask.T)
    assert encode_mask(mask.T) == _sdk(transposed)
    assert encode_mask(np.asfortranarray(mask)) == expected
    assert encode_mask(mask[:, ::-1]) == _sdk(np.ascontiguousarray(mask[:, ::-1]))


def test_output_is_plain_json_ints() -> None:
    rle = encode_mask(CASES["blobs"])
    assert all(type(b) is int and 0 <= b <= 255 for b in rle)


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.zeros((2, 3, 4), dtype=bool), ValueError),
        (np.zeros(5, dtype=bool), ValueError),
        (np.zeros((0, 5), dtype=bool), ValueError),
        (np.zeros((3, 3), dtype=np.float32), TypeError),
    ],
)
def test_encode_mask_rejects_bad_input(mask: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_mask(mask)


def test_encode_values_matches_sdk_with_literals_and_long_runs() -> None:
    rng = np.random.default_rng(5)
    short = rng.integers(0, 4, 500).astype(np.uint8)  # many runs of one: literal chunks
    long_runs = np.repeat(rng.integers(0, 256, 40).astype(np.uint8), rng.integers(1, 200_000, 40))
    for values in (short, long_runs, np.array([7], dtype=np.uint8)):
        assert encode_values(values) == encode_rle(values)
        np.testing.assert_array_equal(decode_values(encode_values(values)), values)


def test_decode_mask_alpha_threshold() -> None:
    # a 1x3 RGBA bitmap with alphas 0, 100 and 255
    values = np.array([0, 0, 0, 0, 255, 255, 255, 100, 255, 255, 255, 255], dtype=np.uint8)
    rle = encode_values(values)
    np.testing.assert_array_equal(decode_mask(rle, 1, 3), [[False, True, True]])
    np.testing.assert_array_equal(decode_mask(rle, 1, 3, min_alpha=128), [[False, False, True]])


def test_decode_mask_rejects_wrong_size_and_garbage() -> None:
    rle = encode_mask(CASES["blobs"])
    assert rle_value_count(rle) == 90 * 120 * 4
    with pytest.raises(ValueError, match="90x121"):
        decode_mask(rle, 90, 121)
    with pytest.raises(ValueError, match="count field"):
        decode_mask([0, 0], 1, 1)
    with pytest.raises(ValueError, match="min_alpha"):
        decode_mask(rle, 90, 120, min_alpha=0)


def _sdk_mask(rle: list[int], height: int, width: int, min_alpha: int = 1) -> np.ndarray:
    """The reference decoder: label-studio-sdk's ``decode_rle``, alpha channel thresholded."""
    alpha = np.asarray(decode_rle(bytes(rle))).reshape(height, width, 4)[:, :, 3]
    return alpha >= min_alpha


def _bits_to_bytes(bits: str) -> list[int]:
    bits += "0" * (8 - len(bits) % 8)  # always at least one padding bit, like the reference encoder
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decode_mask_matches_the_sdk_decoder() -> None:
    for name, mask in CASES.items():
        rle = encode_mask(mask)
        np.testing.assert_array_equal(decode_mask(rle, *mask.shape), _sdk_mask(rle, *mask.shape), name)
    rng = np.random.default_rng(0)
    for height, width in [(30, 40), (1, 1), (7, 300), (64, 50)]:
        values = rng.integers(0, 256, height * width * 4).astype(np.uint8)
        values[::3] = 0
        rle = encode_values(values)
        for min_alpha in (1, 128, 255):
            expected = _sdk_mask(rle, height, width, min_alpha)
            np.testing.assert_array_equal(decode_mask(rle, height, width, min_alpha=min_alpha), expected)
    # Literal chunks of several values and runs in every size class (the browser's encoder writes these;
    # ours writes single literals), including a run longer than the values left.
    sizes = (3, 4, 8, 16)
    header = f"{2 * 9 * 4:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in sizes)
    chunks = [
        "0" + "00" + f"{4 - 1:03b}" + "".join(f"{v:08b}" for v in (0, 9, 0, 0)),  # 4 literals
        "1" + "01" + f"{12 - 1:04b}" + f"{200:08b}",  # 12 x 200
        "0" + "10" + f"{20 - 1:08b}" + "".join(f"{v:08b}" for v in rng.integers(0, 256, 20)),
        "1" + "11" + f"{100 - 1:016b}" + f"{255:08b}",  # 100 x 255, only 36 values left
    ]
    rle = _bits_to_bytes(header + "".join(chunks))
    for min_alpha in (1, 128, 255):
        np.testing.assert_array_equal(
            decode_mask(rle, 2, 9, min_alpha=min_alpha), _sdk_mask(rle, 2, 9, min_alpha)
        )


def test_decode_mask_rejects_a_truncated_stream() -> None:
    rle = encode_mask(CASES["blobs"])
    with pytest.raises(ValueError, match="ends early"):
        decode_mask(rle[:20], 90, 120)
    with pytest.raises(ValueError, match="header"):
        decode_mask(rle[:6], 90, 120)
