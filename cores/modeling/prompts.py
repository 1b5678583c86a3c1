"""Prompt strings, as data: system prompts, in-context examples, query templates and chain answers.

The CoReS strings are verbatim from the CoReS repository (llava_v1 conversation format). In the CoReS
conversation the in-context example follows the system prompt directly (no separator: the system prompt
ends with a space), and the llava_v1 separator ``" "`` follows the example, which itself ends with a space.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CORES_SYSTEM = (
    LLAVA_SYSTEM + " To realize segmentation, the assistant guesses all possible object it typically "
    "appears on and its distinct appearance. "
)
#: In-context examples, keyed by name. ``PromptStyle.example`` names one (or none).
IN_CONTEXT_EXAMPLES: dict[str, str] = {
    "blade": (
        "USER: What is the blade in this image? Please output segmentation mask. "
        "ASSISTANT: It is usually found on a knife or propeller. It is the flat, cutting or propelling "
        "surface. "
    ),
}
SENTENCE_QUERY = "{image}\n {text} Please output segmentation mask."
PHRASE_QUERY = "{image}\n What is {text} in this image? Please output segmentation mask."
#: CoReS training answers (any of them teaches the chain); ``CORES_ANSWERS[1]`` is the evaluation answer.
CORES_ANSWERS: tuple[str, ...] = tuple(
    f"{lead} [SEG_SEMA]. {tail} [SEG]."
    for tail in ("It is", "The segmentation result is")
    for lead in (
        "It appears on",
        "It usually appears on",
        "It typically appears on",
        "We can usually find it on",
        "It is usually found on",
        "Sure, we can usually find it on",
        "Sure, it usually appears on",
        "Sure, it typically appears on",
        "Sure, it appears on",
        "Sure, it is typically found on",
    )
    if not (
        tail == "The segmentation result is"
        and lead in ("It is usually found on", "Sure, it is typically found on")
    )
)


@dataclass(frozen=True)
class PromptStyle:
    """How a model family words its conversation.

    ``system`` ends where the conversation starts; ``example`` names an entry of :data:`IN_CONTEXT_EXAMPLES`
    or is None; ``separator`` follows the system prompt (and example) before the first turn.
    """

    system: str
    example: str | None
    separator: str = " "

    def prefix(self) -> str:
        """Everything before the query turn: the part shared by every query."""
        example = IN_CONTEXT_EXAMPLES[self.example] if self.example else ""
        if example:
            return self.system + example + self.separator
        return self.system + self.separator


CORES_STYLE = PromptStyle(system=CORES_SYSTEM, example="blade")
LISA_STYLE = PromptStyle(system=LLAVA_SYSTEM, example=None)


def chain_answer(chain_tokens: tuple[str, ...]) -> str:
    """The fixed (teacher-forced) answer that places every chain token, in order: each family's own evaluation
    answer.

    CoReS: ``"It usually appears on [SEG_SEMA]. It is [SEG]."``; LISA (one level): ``"[SEG]."`` (its
    ``ValDataset``). Longer chains repeat the "usually appears on" clause for every level but the last.
    """
    if not chain_tokens:
        raise ValueError("a chain needs at least one token")
    if len(chain_tokens) == 1:
        return f"{chain_tokens[0]}."
    clauses = [f"It usually appears on {token}." for token in chain_tokens[:-1]]
    clauses.append(f"It is {chain_tokens[-1]}.")
    return " ".join(clauses)


def style_for_chain(chain_tokens: tuple[str, ...]) -> PromptStyle:
    """CoReS wording for chains of two or more levels, LISA wording for one level."""
    return LISA_STYLE if len(chain_tokens) == 1 else CORES_STYLE


def chain_prompt(
    query: str, chain_tokens: tuple[str, ...], *, is_sentence: bool, with_answer: bool, eos: str = "</s>"
) -> str:
    """The conversation a checkpoint of this chain is prompted with: its family's wording
    (:func:`style_for_chain`) and, with ``with_answer``, its teacher-forced evaluation answer
    (:func:`chain_answer`) closed by ``eos``; without, the text ends at ``"ASSISTANT:"`` (generation)."""
    answer = chain_answer(chain_tokens) if with_answer else None
    return build_prompt(
        query, is_sentence=is_sentence, style=style_for_chain(chain_tokens), answer=answer, eos=eos
    )


def looks_like_sentence(query: str) -> bool:
    """Free-form queries are sentences unless they are a short noun phrase (<= 4 words, no end punctuation).

    ReasonSeg data says ``is_sentence`` explicitly; this rule is for queries typed by annotators.
    """
    text = query.strip()
    return len(text.split()) > 4 or text.endswith(("?", ".", "!"))


def query_turn(query: str, *, is_sentence: bool, use_im_start_end: bool = True) -> str:
    """The user's message: image placeholder plus the query in the sentence or noun-phrase template."""
    image = f"<im_start>{IMAGE_PLACEHOLDER}<im_end>" if use_im_start_end else IMAGE_PLACEHOLDER
    template = SENTENCE_QUERY if is_sentence else PHRASE_QUERY
    return template.format(image=image, text=query.strip())


def build_prompt(
    query: str,
    *,
    is_sentence: bool,
    style: PromptStyle,
    answer: str | None,
    use_im_start_end: bool = True,
    eos: str = "</s>",
) -> str:
    """The whole llava_v1 conversation text.

    With ``answer`` the assistant turn is closed with ``eos`` (teacher-forced evaluation); with None the
    text ends at ``"ASSISTANT:"`` for generation.
    """
    text = (
        style.prefix()
        + "USER: "
        + query_turn(query, is_sentence=is_sentence, use_im_start_end=use_im_start_end)
    )
    text += " ASSISTANT:"
    if answer is not None:
        text += " " + answer + eos
    return text
