"""Fine-tuning data: ReasonSeg samples with per-level masks, the train/validation split, and prompts.

A sample is a ReasonSeg pair (see :mod:`cores.evaluation.reasonseg`). Its json may also hold ``levels``, as
the correction export writes it::

    "levels": [{"level": 1, "token": "[SEG_SEMA]", "shapes": [...]},
               {"level": 2, "token": "[SEG]", "shapes": [...]}]

Supervision per chain level of the model:

* the last level (the target) is supervised by the top-level ``shapes``, unless a ``levels`` entry is
  placed on it (the export writes the same polygons in both places);
* an earlier level is supervised only when a ``levels`` entry is placed on it. An entry is placed by its
  ``token`` when that is a string, else by its 1-based ``level``; an entry the model's chain has no place
  for (another model's token, a level beyond the chain) is skipped with a warning.

Training prompts follow CoReS: the sentence or noun-phrase template of the inference prompt, one of the
sample's queries, and an answer drawn from :data:`cores.modeling.prompts.CORES_ANSWERS` (two levels), LISA's
answers (one level) or :func:`cores.modeling.prompts.chain_answer` (other lengths), teacher-forced.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cores.errors import QueryError
from cores.evaluation.metrics import IGNORE_INDEX
from cores.evaluation.reasonseg import ReasonSegError, ReasonSegSample, fill_shapes, iter_samples, load_image
from cores.inference.pipeline import image_key
from cores.modeling.llama_tokenizer import SlowLlamaTokenizer
from cores.modeling.prompts import CORES_ANSWERS, build_prompt, chain_answer, style_for_chain
from cores.modeling.queries import check_query
from cores.modeling.tokenizer import tokenize_prompt

logger = logging.getLogger(__name__)

#: LISA's one-level answers; ``{}`` is the chain token.
LISA_ANSWERS = ("It is {}.", "Sure, {}.", "Sure, it is {}.", "Sure, the segmentation result is {}.")
Shapes = list[dict[str, Any]]


@dataclass(frozen=True)
class TrainingSample:
    """One fine-tuning sample; ``level_shapes[k]`` are chain level k+1's polygons, None = unsupervised."""

    base: ReasonSegSample
    level_shapes: tuple[Shapes | None, ...]

    @property
    def stem(self) -> str:
        return self.base.stem

    @property
    def texts(self) -> list[str]:
        return self.base.texts

    @property
    def is_sentence(self) -> bool:
        return self.base.is_sentence

    @property
    def supervised(self) -> list[bool]:
        """Per chain level, whether a mask supervises it."""
        return [shapes is not None for shapes in self.level_shapes]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(HxWx3 uint8 RGB image, NxHxW uint8 masks: 0/1, 255 ignored and everywhere on unsupervised
        levels)."""
        image = load_image(self.base)
        height, width = image.shape[:2]
        masks = np.full((len(self.level_shapes), height, width), IGNORE_INDEX, dtype=np.uint8)
        for k, shapes in enumerate(self.level_shapes):
            if shapes is not None:
                masks[k] = fill_shapes(shapes, height, width)
        return image, masks


def _check_shapes(shapes: object, where: str) -> Shapes:
    if not isinstance(shapes, list):
        raise ReasonSegError(f"{where}: 'shapes' must be a list")
    for i, shape in enumerate(shapes):
        points = shape.get("points") if isinstance(shape, dict) else None
        ok = (
            isinstance(points, list)
            and points
            and all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int | float) for v in p)
                for p in points
            )
        )
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not ok:
            raise ReasonSegError(f"{where}: shapes[{i}] needs a string 'label' and 'points' [[x, y], ...]")
    return shapes


def _place_levels(
    entries: object, chain: tuple[str, ...], where: str, skipped: list[str]
) -> dict[int, Shapes]:
    """Chain index -> shapes of the ``levels`` entries the chain has a place for."""
    if not isinstance(entries, list) or not entries:
        raise ReasonSegError(f"{where}: 'levels' must be a non-empty list of {{level, token, shapes}}")
    placed: dict[int, Shapes] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ReasonSegError(f"{where}: levels[{i}] must be an object")
        token, level = entry.get("token"), entry.get("level")
        if isinstance(token, str):
            index = chain.index(token) if token in chain else None
        elif isinstance(level, int) and not isinstance(level, bool):
            index = level - 1 if 1 <= level <= len(chain) else None
        else:
            raise ReasonSegError(f"{where}: levels[{i}] needs a string 'token' or an integer 'level'")
        shapes = _check_shapes(entry.get("shapes"), f"{where}: levels[{i}]")
        if index is None:
            skipped.append(f"{where}: levels[{i}] (token {token!r}, level {level!r})")
            continue
        if index in placed:
            raise ReasonSegError(
                f"{where}: two 'levels' entries for chain level {index + 1} ({chain[index]})"
            )
        placed[index] = shapes
    return placed


def load_training_samples(data_dir: Path, chain: tuple[str, ...]) -> list[TrainingSample]:
    """Every sample of a ReasonSeg folder with its per-level supervision for a model with ``chain``.

    Raises:
        ReasonSegError: missing or empty folder, malformed json or ``levels`` (naming the file).
    """
    samples: list[TrainingSample] = []
    skipped: list[str] = []
    for base in iter_samples(Path(data_dir)):
        raw = json.loads(base.json_path.read_text(encoding="utf-8"))
        placed: dict[int, Shapes] = {}
        if raw.get("levels") is not None:
            placed = _place_levels(raw["levels"], chain, str(base.json_path), skipped)
        placed.setdefault(len(chain) - 1, base.shapes)
        shapes = tuple(placed.get(k) for k in range(len(chain)))
        samples.append(TrainingSample(base, shapes))
    if skipped:
        logger.warning(
            "%d 'levels' entr(ies) name no level of the model's chain %s and are skipped, e.g. %s",
            len(skipped),
            list(chain),
            skipped[0],
        )
    return samples


def split_samples(
    samples: Sequence[TrainingSample], val_fraction: float, seed: int
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Seeded (train, validation) split; ``round(n * val_fraction)`` samples (at least one when the
    fraction is positive) are held out.

    Raises:
        ValueError: a fraction outside [0, 1), or no sample left to train on.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(len(samples) * val_fraction))
    if n_val >= len(samples):
        raise ValueError(
            f"{len(samples)} sample(s) cannot be split with --val-fraction {val_fraction}: "
            "nothing would be left to train on (add samples or use --val-fraction 0)"
        )
    order = np.random.default_rng(seed).permutation(len(samples))
    held = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in held]
    return train, [s for i, s in enumerate(samples) if i in held]


@lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(np.random.default_rng((seed, epoch)).permutation(n).tolist())


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Sample indices at positions ``start .. start+count-1`` of the seeded stream that visits every
    sample once per epoch in a fresh order (so any step's batch is known without replaying the run)."""
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + count)]


def training_answers(chain: tuple[str, ...]) -> tuple[str, ...]:
    """Teacher-forced answers to draw from: CoReS's for two levels, LISA's for one, else the fixed one."""
    if len(chain) == 2:
        return tuple(
            a.replace("[SEG_SEMA]", "{0}").replace("[SEG]", "{1}").format(*chain) for a in CORES_ANSWERS
        )
    if len(chain) == 1:
        return tuple(a.format(chain[0]) for a in LISA_ANSWERS)
    return (chain_answer(chain),)


@dataclass
class TrainingExample:
    """One teacher-forced example: ``ids`` L token ids (one image slot), the answer from ``answer_start``
    (index into ``ids``), the image HxWx3 and the level masks NxHxW (255 ignored)."""

    stem: str
    ids: torch.Tensor
    answer_start: int
    image: np.ndarray
    masks: torch.Tensor
    supervised: torch.Tensor  # N bool
    image_key: str  # the image's content key (cores.inference.pipeline.image_key), computed once


@dataclass(frozen=True)
class LoadedSample:
    """A sample's decoded image (HxWx3 uint8), its level masks (NxHxW uint8) and the image's content key."""

    image: np.ndarray
    masks: np.ndarray
    image_key: str

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.masks.nbytes)


class SampleCache:
    """Decoded samples kept across steps: each image is decoded, its masks rasterised and its content
    hashed once per fine-tune (not at every step), least recently used first out beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = 2 * 2**30) -> None:
        self.max_bytes = max_bytes
        self._loaded: OrderedDict[str, LoadedSample] = OrderedDict()
        self.loads = 0

    def get(self, sample: TrainingSample) -> LoadedSample:
        """The sample decoded (from the cache when it is there)."""
        key = str(sample.base.json_path)
        found = self._loaded.get(key)
        if found is None:
            image, masks = sample.load()
            found = LoadedSample(image=image, masks=masks, image_key=image_key(image))
            self.loads += 1
            self._loaded[key] = found
            while len(self._loaded) > 1 and sum(s.nbytes for s in self._loaded.values()) > self.max_bytes:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return found


class ExampleBuilder:
    """Turns samples into teacher-forced examples for a model's tokenizer and chain.

    Args:
        tokenizer: the checkpoint's tokenizer.
        chain: the model's chain tokens.
        image_tokens: how many tokens replace the image slot.
        max_positions: the language model's context length.
    """

    def __init__(
        self,
        tokenizer: SlowLlamaTokenizer,
        chain: tuple[str, ...],
        image_tokens: int,
        max_positions: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.style = style_for_chain(chain)
        self.answers = training_answers(chain)
        self.image_tokens = image_tokens
        self.max_positions = max_positions
        self.samples = SampleCache()

    def token_ids(self, query: str, is_sentence: bool, answer: str) -> tuple[list[int], int]:
        """(prompt + answer + EOS ids, index where the answer starts); the query is only stripped.

        Raises:
            QueryError: a query :func:`cores.modeling.queries.check_query` refuses.
        """
        text = check_query(query, self.tokenizer.no_split_tokens)
        eos = str(self.tokenizer.eos_token)
        full = tokenize_prompt(
            self.tokenizer,
            build_prompt(text, is_sentence=is_sentence, style=self.style, answer=answer, eos=eos),
        )
        prompt = tokenize_prompt(
            self.tokenizer, build_prompt(text, is_sentence=is_sentence, style=self.style, answer=None)
        )
        pairs = zip(full[: len(prompt)], prompt, strict=True)  # the answer only adds tokens after the prompt
        start = next((i for i, (a, b) in enumerate(pairs) if a != b), len(prompt))
        return full, start

    def check(self, samples: Sequence[TrainingSample]) -> None:
        """Raise :class:`QueryError` naming the first sample with a query that is refused (empty, invisible,
        holding a special token, ...) or whose longest prompt overflows the context."""
        longest = max(self.answers, key=len)
        for sample in samples:
            for query in sample.texts:
                try:
                    ids, _ = self.token_ids(query, sample.is_sentence, longest)
                except QueryError as exc:
                    raise QueryError(f"{sample.stem}: {exc}") from exc
                needed = len(ids) - 1 + self.image_tokens
                if needed > self.max_positions:
                    raise QueryError(
                        f"{sample.stem}: the prompt for {query[:60]!r} needs {needed} positions, "
                        f"the model's context holds {self.max_positions}"
                    )

    def example(self, sample: TrainingSample, rng: np.random.Generator) -> TrainingExample:
        """A random query and answer for ``sample`` (drawn with ``rng``), tokenised, with its masks."""
        query = sample.texts[int(rng.integers(len(sample.texts)))]
        answer = self.answers[int(rng.integers(len(self.answers)))]
        ids, start = self.token_ids(query, sample.is_sentence, answer)
        loaded = self.samples.get(sample)
        return TrainingExample(
            stem=sample.stem,
            ids=torch.tensor(ids, dtype=torch.long),
            answer_start=start,
            image=loaded.image,
            masks=torch.from_numpy(loaded.masks),
            supervised=torch.tensor(sample.supervised),
            image_key=loaded.image_key,
        )
