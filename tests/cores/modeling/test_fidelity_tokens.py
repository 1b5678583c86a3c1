"""Token ids bit-identical to the trained stack: the product against transformers 4.31's slow LLaMA tokenizer,
run live in ``.venv-ref`` (``AutoTokenizer.from_pretrained(path, use_fast=False)`` + the released
``tokenizer_image_token`` rule), on the tiny checkpoints' tokenizers and on a LLaMA-like SentencePiece model
trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cores.errors import CheckpointError
from cores.inference.pipeline import CoresPipeline
from cores.modeling.config import CORES_CHAIN, LISA_CHAIN
from cores.modeling.prompts import chain_answer, chain_prompt, looks_like_sentence
from cores.modeling.queries import check_query
from cores.modeling.tokenizer import decode_chain_text, detect_chain, load_tokenizer, prompt_token_ids
from tests.cores.modeling.fidelity_corpus import QUERIES, TEXTS
from tests.cores.modeling.llama_like import added_token, llama_like_model, write_tokenizer
from tests.reference_env import run_reference

LLAVA_ADDED = ["<im_patch>", "<im_start>", "<im_end>"]


@pytest.fixture(scope="module")
def llama_model() -> bytes:
    return llama_like_model(list(QUERIES))


@pytest.fixture(scope="module")
def llama_tokenizers(tmp_path_factory, llama_model) -> dict[str, Path]:
    """LLaMA-like tokenizers in the released layouts: LISA (LLaVA's tokens, then [SEG]) and CoReS."""
    root = tmp_path_factory.mktemp("llama-like")
    return {
        "lisa": write_tokenizer(root / "lisa", llama_model, [*LLAVA_ADDED, "[SEG]"]),
        "cores": write_tokenizer(root / "cores", llama_model, [*LLAVA_ADDED, "[SEG_SEMA]", "[SEG]"]),
    }


def _cases(chain: tuple[str, ...]) -> list[tuple[str, bool, bool]]:
    """(query, is_sentence, with_answer): every query, both templates, answer mode and generate's prompt."""
    return [(q, s, a) for q in QUERIES for s in (True, False) for a in (True, False)]


def _reference_prompts(chain: tuple[str, ...], eos: str) -> list[str]:
    return [
        chain_prompt(check_query(q), chain, is_sentence=s, with_answer=a, eos=eos)
        for q, s, a in _cases(chain)
    ]


def _explain(tokenizer, ours: list[int], theirs: list[int]) -> str:
    def pieces(ids):
        return [tokenizer.convert_ids_to_tokens([i])[0] if i >= 0 else "<image>" for i in ids]

    return f"\nours:   {pieces(ours)}\n4.31:   {pieces(theirs)}"


def _compare_prompts(reference_python, folder: Path, product_ids) -> None:
    tokenizer = load_tokenizer(folder)
    chain = detect_chain(tokenizer)
    prompts = _reference_prompts(chain, str(tokenizer.eos_token))
    ref = run_reference(reference_python, "tokens.py", {"tokenizer": str(folder), "prompts": prompts})
    assert ref["class"] == "LlamaTokenizer"
    cases = _cases(chain)
    assert len(cases) >= 4 * 50
    for (query, sentence, answer), theirs in zip(cases, ref["prompt_ids"], strict=True):
        ours = product_ids(tokenizer, chain, query, sentence, answer)
        assert ours == theirs, f"{query!r} sentence={sentence} answer={answer}" + _explain(
            tokenizer, ours, theirs
        )


@pytest.mark.parametrize("layout", ["lisa", "cores"])
def test_tiny_checkpoint_prompt_ids_equal_transformers_431(reference_python, tiny_checkpoints, layout):
    pipe = CoresPipeline.from_pretrained(tiny_checkpoints[layout], device="cpu")

    def product_ids(tokenizer, chain, query, sentence, answer):
        assert chain == pipe.chain_tokens
        return pipe.prompt_ids(query, is_sentence=sentence, with_answer=answer).tolist()

    _compare_prompts(reference_python, tiny_checkpoints[layout], product_ids)


@pytest.mark.parametrize("layout", ["lisa", "cores"])
def test_llama_like_prompt_ids_equal_transformers_431(reference_python, llama_tokenizers, layout):
    def product_ids(tokenizer, chain, query, sentence, answer):
        return prompt_token_ids(tokenizer, query, chain, is_sentence=sentence, with_answer=answer)

    _compare_prompts(reference_python, llama_tokenizers[layout], product_ids)


def test_chain_tokens_follow_the_words_they_were_trained_after(llama_tokenizers):
    """The reason for all this: 4.31 puts '▁on' before [SEG_SEMA] and '▁is' before [SEG] (the hidden states
    feeding SAM), never a lone '▁', and drops the "\\n " after <im_end> (transformers 5.x gives five extra
    tokens here)."""
    tokenizer = load_tokenizer(llama_tokenizers["cores"])
    ids = prompt_token_ids(tokenizer, "the knife", CORES_CHAIN, is_sentence=False, with_answer=True)
    pieces = tokenizer.convert_ids_to_tokens([i for i in ids if i >= 0])
    sema, seg = pieces.index("[SEG_SEMA]"), pieces.index("[SEG]")
    assert pieces[sema - 1] == "▁on"
    assert pieces[seg - 1] == "▁is"
    assert pieces[sema + 1] == pieces[seg + 1] == "▁."
    assert pieces[-1] == "</s>"
    turn = pieces[pieces.index("<im_start>") :]  # (the CoReS prefix itself has "surface.  USER": '▁' '▁USER')
    assert "▁" not in turn
    assert "<0x0A>" not in turn
    assert turn[turn.index("<im_end>") + 1] == "▁What"
    lisa = load_tokenizer(llama_tokenizers["lisa"])
    ids = prompt_token_ids(lisa, "the knife", LISA_CHAIN, is_sentence=False, with_answer=True)
    assert lisa.convert_ids_to_tokens(ids[-3:]) == ["[SEG]", "▁.", "</s>"]


# --- the tokenizer's rules, on files written in every way 4.31 reads them --------------------------
VARIANTS: dict[str, dict] = {
    "special map of strings (LLaVA)": {},
    "special map of AddedTokens": {
        "special_map": {
            name: {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
            for name, c in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
        }
    },
    "eos stripping both sides, no special map": {
        "config": {"eos_token": added_token("</s>", lstrip=True, rstrip=True)},
        "special_map": {},
    },
    "bos rstrip and eos lstrip in the map": {
        "special_map": {
            "bos_token": {"content": "<s>", "rstrip": True},
            "eos_token": {"content": "</s>", "lstrip": True},
            "unk_token": "<unk>",
        }
    },
    "plain-string config, no special map": {
        "config": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "special_map": {},
    },
    "legacy false": {"config": {"legacy": False}},
    "clean-up spaces": {"config": {"clean_up_tokenization_spaces": True}},
    "eos framing": {"config": {"add_eos_token": True}},
    "pad and additional special tokens": {
        "special_map": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "additional_special_tokens": ["<extra_a>", {"content": "<extra_b>", "lstrip": True}],
        }
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tokenizer_rules_equal_transformers_431_for_every_file_variant(
    reference_python, llama_model, tmp_path, variant
):
    folder = write_tokenizer(
        tmp_path / "tok", llama_model, [*LLAVA_ADDED, "[SEG_SEMA]", "[SEG]"], **VARIANTS[variant]
    )
    tokenizer = load_tokenizer(folder)
    queries = QUERIES[::3]
    prompts = [
        chain_prompt(
            check_query(q), CORES_CHAIN, is_sentence=looks_like_sentence(q), with_answer=a, eos="</s>"
        )
        for q in queries
        for a in (True, False)
    ]
    encoded = [tokenizer.encode(t) for t in TEXTS]
    request = {"tokenizer": str(folder), "prompts": prompts, "texts": list(TEXTS), "decode": encoded}
    ref = run_reference(reference_python, "tokens.py", request)
    assert len(tokenizer) == ref["vocab_size"]
    for text, ours, theirs in zip(TEXTS, (tokenizer.tokenize(t) for t in TEXTS), ref["tokens"], strict=True):
        assert ours == theirs, f"tokenize({text!r})"
    for text, ours, theirs in zip(TEXTS, encoded, ref["text_ids"], strict=True):
        assert ours == theirs, f"encode({text!r})"
    for text, ids, theirs in zip(TEXTS, encoded, ref["decoded"], strict=True):
        assert tokenizer.decode(ids) == theirs, f"decode(encode({text!r}))"
    ours_prompts = [
        prompt_token_ids(tokenizer, q, CORES_CHAIN, is_sentence=looks_like_sentence(q), with_answer=a)
        for q in queries
        for a in (True, False)
    ]
    assert ours_prompts == ref["prompt_ids"]


def test_generated_ids_decode_as_431_decodes_them(reference_python, llama_tokenizers, tiny_checkpoints):
    """Generate mode: 4.31's slow decode of answer ids and of arbitrary id runs (added, special and byte
    tokens mixed); the chain text shown is that decode, tidied, and equals the fixed answer for its ids."""
    for folder in (*llama_tokenizers.values(), tiny_checkpoints["lisa"], tiny_checkpoints["cores"]):
        tokenizer = load_tokenizer(folder)
        chain = detect_chain(tokenizer)
        runs = []
        for query in QUERIES[:12]:
            full = prompt_token_ids(tokenizer, query, chain, is_sentence=False, with_answer=True)
            prompt = prompt_token_ids(tokenizer, query, chain, is_sentence=False, with_answer=False)
            answer = full[len(prompt) :]
            assert decode_chain_text(tokenizer, answer) == chain_answer(chain)
            runs.append(answer)
            runs.append([i for i in full if i >= 0])
        special = [*sorted(tokenizer.added_tokens_decoder), 0, 1, 2]
        runs += [[special[i % len(special)], 3 + (7 * i) % 300, 250 + i] for i in range(40)]
        ref = run_reference(reference_python, "tokens.py", {"tokenizer": str(folder), "decode": runs})
        for ids, theirs in zip(runs, ref["decoded"], strict=True):
            assert tokenizer.decode(ids) == theirs, f"{folder.name}: decode({ids})"


def test_non_consecutive_added_token_ids_are_refused_as_431_refuses_them(
    reference_python, llama_model, tmp_path
):
    folder = write_tokenizer(tmp_path / "tok", llama_model, [*LLAVA_ADDED, "[SEG]"])
    (folder / "added_tokens.json").write_text(
        json.dumps({"<im_start>": 32000, "<im_end>": 32001, "[SEG]": 32005})
    )
    with pytest.raises(CheckpointError, match="consecutively"):
        load_tokenizer(folder)
    with pytest.raises(RuntimeError, match="Non-consecutive added token"):
        run_reference(reference_python, "tokens.py", {"tokenizer": str(folder), "texts": ["x"]})
