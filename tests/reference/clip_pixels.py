"""Reference CLIP pixels: transformers 4.31's ``CLIPImageProcessor``, as LISA/CoReS call it.

Runs in ``.venv-ref``. Request (JSON on stdin)::

    {"processor": DIR, "images": [NPY], "out": DIR}

Each image is an HxWx3 uint8 RGB array (``.npy``); its pixels ``preprocess(image)["pixel_values"][0]`` (3xSxS
float32) are written to ``out/<i>.npy``. Answer (JSON on stdout): ``{"files": [...], "class": ...}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import transformers
from transformers import CLIPImageProcessor


def main() -> None:
    assert transformers.__version__ == "4.31.0", transformers.__version__
    request = json.load(sys.stdin)
    transformers.logging.set_verbosity_error()
    processor = CLIPImageProcessor.from_pretrained(request["processor"])
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for index, path in enumerate(request["images"]):
        image = np.load(path)
        pixels = processor.preprocess(image, return_tensors="np")["pixel_values"][0]
        target = out / f"{index}.npy"
        np.save(target, pixels)
        files.append(str(target))
    json.dump({"files": files, "class": type(processor).__name__}, sys.stdout)


if __name__ == "__main__":
    main()
