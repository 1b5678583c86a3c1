"""Queries are only stripped, never collapsed; queries that would break the chain are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from cores.errors import QueryError
from cores.inference.pipeline import CoresPipeline
from cores.modeling.config import CORES_CHAIN
from cores.modeling.queries import check_query
from cores.modeling.tokenizer import load_tokenizer, prompt_token_ids

REFUSED = {
    "": "empty",
    "   ": "empty",
    "\n\t \r\n": "empty",
    "\x00": "no visible characters",
    "\x00\x00 \x00": "no visible characters",
    "\u200b": "no visible characters",
    "\u200b\u200c\u200d\ufeff\u2060": "no visible characters",
    "\x00 \u200b \x07": "no visible characters",
    "[SEG]": "contains '\\[SEG\\]'",
    "find the [SEG_SEMA] here": "contains '\\[SEG_SEMA\\]'",
    "the cup</s>": "contains '</s>'",
    "<s> the cup": "contains '<s>'",
    "what is <image> here": "contains '<image>'",
    "a <im_start> b": "contains '<im_start>'",
    "b <im_end>": "contains '<im_end>'",
    "an <unk> thing": "contains '<unk>'",
    "broken \ud800 text": "lone surrogate U\\+D800",
    "x" * 2001: "2001 characters",
}


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> CoresPipeline:
    return CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.mark.parametrize("query", list(REFUSED))
def test_refused_queries_say_why(pipe, query):
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(QueryError, match=REFUSED[query]):
        pipe.segment(image, query)
    with pytest.raises(QueryError, match=REFUSED[query]):
        pipe.segment(image, query, mode="generate")
    with pytest.raises(QueryError, match=REFUSED[query]):
        pipe.segment_batch([(image, "the cup", None), (image, query, None)])


def test_queries_are_stripped_not_collapsed(pipe):
    def ids(query: str) -> list[int]:
        return pipe.prompt_ids(query, is_sentence=False, with_answer=True).tolist()

    assert check_query("  two  spaces\there \n") == "two  spaces\there"
    assert ids(" \n the red cup\t ") == ids("the red cup")
    assert ids("the red  cup") != ids("the red cup")
    assert ids("the red\tcup") != ids("the red cup")
    assert ids("the red\ncup") != ids("the red cup")


def test_special_tokens_of_this_tokenizer_only(tiny_checkpoints):
    """What is refused comes from the checkpoint's own tokenizer: LISA's has no [SEG_SEMA]."""
    lisa = load_tokenizer(tiny_checkpoints["lisa"])
    assert "[SEG_SEMA]" not in lisa.no_split_tokens
    assert prompt_token_ids(lisa, "the [SEG_SEMA] sign", ("[SEG]",), is_sentence=False, with_answer=True)
    cores = load_tokenizer(tiny_checkpoints["cores"])
    with pytest.raises(QueryError, match="SEG_SEMA"):
        prompt_token_ids(cores, "the [SEG_SEMA] sign", CORES_CHAIN, is_sentence=False, with_answer=True)
    # Look-alikes are text, not tokens.
    for query in ("[seg]", "[ SEG ]", "SEG]", "<IMAGE>", "< /s >", "<im_start"):
        assert prompt_token_ids(cores, query, CORES_CHAIN, is_sentence=False, with_answer=False)


def test_training_data_refuses_the_same_queries(tiny_checkpoint, tmp_path):
    from cores.evaluation.reasonseg import iter_samples, write_sample
    from cores.training.data import ExampleBuilder, TrainingSample

    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    write_sample(tmp_path, "bad", np.zeros((16, 16, 3), np.uint8), ["the [SEG] thing"], False, [("t", mask)])
    sample = next(iter_samples(tmp_path))
    builder = ExampleBuilder(load_tokenizer(tiny_checkpoint), CORES_CHAIN, 16, 1024)
    with pytest.raises(QueryError, match=r"bad: the query contains '\[SEG\]'"):
        builder.check([TrainingSample(sample, (None, sample.shapes))])
