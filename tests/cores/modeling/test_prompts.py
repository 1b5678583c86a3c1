"""Golden prompt strings (verbatim CoReS / LISA wording) and tokenisation of the image slot."""

from __future__ import annotations

import pytest

from cores.modeling.prompts import (
    CORES_ANSWERS,
    CORES_STYLE,
    LISA_STYLE,
    build_prompt,
    chain_answer,
    looks_like_sentence,
    style_for_chain,
)

CORES_GOLDEN = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. To realize segmentation, the assistant guesses "
    "all possible object it typically appears on and its distinct appearance. USER: What is the blade in "
    "this image? Please output segmentation mask. ASSISTANT: It is usually found on a knife or propeller. "
    "It is the flat, cutting or propelling surface.  USER: <im_start><image><im_end>\n sent Please output "
    "segmentation mask. ASSISTANT: It usually appears on [SEG_SEMA]. It is [SEG].</s>"
)


def test_cores_sentence_prompt_is_verbatim():
    answer = chain_answer(("[SEG_SEMA]", "[SEG]"))
    assert build_prompt("sent", is_sentence=True, style=CORES_STYLE, answer=answer) == CORES_GOLDEN


def test_cores_phrase_prompt_and_generation_prompt():
    text = build_prompt("the knife", is_sentence=False, style=CORES_STYLE, answer=None)
    assert text.endswith(
        "USER: <im_start><image><im_end>\n What is the knife in this image? Please output segmentation mask."
        " ASSISTANT:"
    )


def test_lisa_prompt_has_plain_system_and_lisas_evaluation_answer():
    # LISA's ValDataset teacher-forces "[SEG]." (not "It is [SEG]."), see the reference facts.
    text = build_prompt("the dog", is_sentence=False, style=LISA_STYLE, answer=chain_answer(("[SEG]",)))
    assert text == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <im_start><image><im_end>\n"
        " What is the dog in this image? Please output segmentation mask. ASSISTANT: [SEG].</s>"
    )


def test_chain_answers():
    assert chain_answer(("[SEG_SEMA]", "[SEG]")) == CORES_ANSWERS[1]
    assert (
        chain_answer(("[A]", "[B]", "[C]"))
        == "It usually appears on [A]. It usually appears on [B]. It is [C]."
    )
    assert len(set(CORES_ANSWERS)) == 18
    assert all(a.index("[SEG_SEMA]") < a.index("[SEG]") for a in CORES_ANSWERS)
    with pytest.raises(ValueError, match="at least one"):
        chain_answer(())
    assert style_for_chain(("[SEG]",)) is LISA_STYLE
    assert style_for_chain(("[SEG_SEMA]", "[SEG]")) is CORES_STYLE


@pytest.mark.parametrize(
    ("query", "sentence"),
    [
        ("the dog", False),
        ("red cup", False),
        ("what would you use to cut bread?", True),
        ("the thing people sit on when tired", True),
    ],
)
def test_sentence_heuristic(query, sentence):
    assert looks_like_sentence(query) is sentence


def test_tokenized_prompt_has_one_image_slot_and_bos(tiny_checkpoint):
    from cores.modeling.tokenizer import IMAGE_TOKEN_ID, load_tokenizer, token_id, tokenize_prompt

    tokenizer = load_tokenizer(tiny_checkpoint)
    ids = tokenize_prompt(tokenizer, CORES_GOLDEN)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_ID) == 1
    slot = ids.index(IMAGE_TOKEN_ID)
    assert ids[slot - 1] == token_id(tokenizer, "<im_start>")
    assert ids[slot + 1] == token_id(tokenizer, "<im_end>")
    assert ids[-1] == tokenizer.eos_token_id
    sema, seg = token_id(tokenizer, "[SEG_SEMA]"), token_id(tokenizer, "[SEG]")
    assert ids.count(sema) == 1
    assert ids.count(seg) == 1
    assert ids.index(sema) < ids.index(seg)
    with pytest.raises(ValueError, match="exactly one <image>"):
        tokenize_prompt(tokenizer, "no image here")
