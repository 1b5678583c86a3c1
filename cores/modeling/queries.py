"""What a query may hold before it goes into a prompt (pure Python: no torch, no tokenizer library).

A query is only ``strip()``-ped, as LISA and CoReS do: the whitespace inside it stays as typed (it changes
the token ids). A query is refused, with a message the annotator can act on, when

* it is empty after stripping, or holds nothing visible (only NULs, other control characters, zero-width or
  other format characters, and whitespace);
* it holds a lone UTF-16 surrogate (not valid Unicode text; it cannot be encoded);
* it holds ``<image>`` or a special or added token of the model's tokenizer (``[SEG]``, ``<im_start>``,
  ``</s>``, ...): these would add or break links of the reasoning chain;
* it is longer than the character cap.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from cores.errors import QueryError
from cores.modeling.prompts import IMAGE_PLACEHOLDER

MAX_QUERY_CHARS = 2000
#: Unicode categories that show nothing: controls, format (zero-width) characters, surrogates, separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})"


def check_query(
    query: object, reserved_tokens: Iterable[str] = (), *, max_chars: int = MAX_QUERY_CHARS
) -> str:
    """The query as the prompt will hold it (``query.strip()``), or :class:`QueryError` saying what is wrong.

    Args:
        query: the text typed by the annotator.
        reserved_tokens: the tokenizer's special and added tokens (``SlowLlamaTokenizer.no_split_tokens``).
        max_chars: the most characters accepted after stripping.
    """
    if not isinstance(query, str):
        raise QueryError(f"the query must be text, found {type(query).__name__}")
    surrogate = next((c for c in query if "\ud800" <= c <= "\udfff"), None)
    if surrogate is not None:
        raise QueryError(
            f"the query holds a lone surrogate {_describe(surrogate)}, which is not valid Unicode text; "
            "retype it or remove the broken character"
        )
    text = query.strip()
    if not text:
        raise QueryError("the query is empty; type what to segment")
    if all(unicodedata.category(c) in INVISIBLE_CATEGORIES or c.isspace() for c in text):
        shown = ", ".join(sorted({_describe(c) for c in text if not c.isspace()})[:3])
        raise QueryError(f"the query holds no visible characters (only {shown}); type what to segment")
    if len(text) > max_chars:
        raise QueryError(f"the query has {len(text)} characters; at most {max_chars} are accepted")
    for token in sorted({IMAGE_PLACEHOLDER, *reserved_tokens}, key=len, reverse=True):
        if token and token in text:
            raise QueryError(
                f"the query contains {token!r}, a special token of the model; remove it (it would add to or "
                "break the reasoning chain the model answers with)"
            )
    return text
