"""A checkpoint's tokenizer files, resolved the way transformers 4.31's slow ``LlamaTokenizer`` resolves them.

LISA and CoReS load their tokenizer with ``AutoTokenizer.from_pretrained(path, use_fast=False)`` under
transformers 4.31. What that tokenizer does around special and added tokens depends on details of how it
reads four files, reproduced here (facts of 4.31, checked live against it by
``tests/cores/modeling/test_fidelity_tokens.py``):

* ``tokenizer.model``: the SentencePiece model; its pieces are ids ``0 .. size-1``.
* ``tokenizer_config.json``: keyword arguments of the tokenizer. ``bos/eos/unk/pad_token`` given as plain
  strings (or absent: ``<s>``, ``</s>``, ``<unk>``, none) become ``AddedToken(lstrip=False, rstrip=False)``;
  ``{"__type": "AddedToken", ...}`` objects keep their own flags; other special tokens stay as given.
* ``special_tokens_map.json``: read *after* the tokenizer is built, and it wins: a string there replaces the
  attribute by a *plain string* (no flags), an object by an ``AddedToken`` with its flags.
* ``added_tokens.json``: token -> id; ids must follow the SentencePiece vocabulary consecutively (4.31
  refuses anything else). Tokens are added in id order, in runs of special / non-special tokens; a token
  already in the vocabulary gets no new id. Finally every special token is registered as "no split" too
  (and gets a new id if it is not in the vocabulary).

The "flags" matter because 4.31 splits text on the no-split tokens and, around each one, strips whitespace
on both sides -- unless the token is an ``AddedToken``, whose own ``lstrip``/``rstrip`` decide.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cores.errors import CheckpointError

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
#: transformers' special-token attributes, in the order 4.31 lists them.
SPECIAL_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
)
#: ``LlamaTokenizer.__init__`` defaults; it wraps these four (when plain strings) into flag-less AddedTokens.
LLAMA_DEFAULTS: dict[str, str | None] = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
}


@dataclass(frozen=True)
class SpecialToken:
    """A special token as 4.31 holds it: an ``AddedToken`` (``added``: its lstrip/rstrip apply) or a plain
    string (``added`` False: whitespace is stripped on both sides of it)."""

    content: str
    added: bool
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class TokenizerFiles:
    """Everything a checkpoint's tokenizer files say, resolved (see the module docstring).

    Attributes:
        model_file: the SentencePiece model.
        special: attribute -> its tokens (one, or several for ``additional_special_tokens``; none if unset).
        added_tokens: ``added_tokens.json`` entries ``(token, id)`` in id order.
        add_bos_token, add_eos_token, legacy, clean_up_tokenization_spaces: ``tokenizer_config.json``
            options with ``LlamaTokenizer``'s defaults (True, False, True, False).
        sp_model_kwargs: extra ``SentencePieceProcessor`` arguments.
    """

    model_file: Path
    special: dict[str, tuple[SpecialToken, ...]]
    added_tokens: tuple[tuple[str, int], ...]
    add_bos_token: bool = True
    add_eos_token: bool = False
    legacy: bool = True
    clean_up_tokenization_spaces: bool = False
    sp_model_kwargs: dict[str, Any] = field(default_factory=dict)

    def token(self, attribute: str) -> str | None:
        """The content of a one-token attribute (``bos_token`` ...), or None when unset."""
        values = self.special.get(attribute, ())
        return values[0].content if values else None

    def extended(self) -> list[SpecialToken]:
        """4.31's ``all_special_tokens_extended``: every set special token in attribute order, without
        repeats (an AddedToken equals another AddedToken of the same content; a plain string equals the same
        string; an AddedToken never equals a plain string)."""
        seen: set[tuple[bool, str]] = set()
        out = []
        for attribute in SPECIAL_ATTRIBUTES:
            for token in self.special.get(attribute, ()):
                key = (token.added, token.content)
                if key not in seen:
                    seen.add(key)
                    out.append(token)
        return out


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON file: {exc}") from exc


def _added_token(value: dict[str, Any], where: str) -> SpecialToken:
    content = value.get("content")
    if not isinstance(content, str):
        raise CheckpointError(f"{where}: an AddedToken needs a string 'content', found {value!r}")
    return SpecialToken(content, True, bool(value.get("lstrip", False)), bool(value.get("rstrip", False)))


def _from_config(value: Any, where: str) -> SpecialToken | None:
    """A value of ``tokenizer_config.json``: only ``"__type": "AddedToken"`` objects become AddedTokens."""
    if value is None:
        return None
    if isinstance(value, str):
        return SpecialToken(value, False)
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return _added_token(value, where)
    raise CheckpointError(
        f"{where}: a special token must be a string or an AddedToken object, found {value!r}"
    )


def _from_map(value: Any, where: str) -> SpecialToken | None:
    """A value of ``special_tokens_map.json``: any object becomes an AddedToken."""
    if value is None or isinstance(value, str):
        return None if value is None else SpecialToken(value, False)
    if isinstance(value, dict):
        return _added_token(value, where)
    raise CheckpointError(f"{where}: a special token must be a string or an object, found {value!r}")


def _tokens(
    value: Any, parse: Callable[[Any, str], SpecialToken | None], where: str
) -> tuple[SpecialToken, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    return tuple(t for i, v in enumerate(values) if (t := parse(v, f"{where}[{i}]")) is not None)


def _option(config: dict[str, Any], name: str, default: bool) -> bool:
    """A true/false option; null counts as false, as 4.31 tests these options for truth."""
    value = config.get(name, default)
    if value is not None and not isinstance(value, bool):
        raise CheckpointError(f"{CONFIG_FILE}: {name} must be true or false, found {value!r}")
    return bool(value)


def read_tokenizer_files(path: Path) -> TokenizerFiles:
    """Read and resolve the tokenizer files of a checkpoint folder.

    Raises:
        CheckpointError: no ``tokenizer.model``, or a file that 4.31 could not have loaded either.
    """
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no {MODEL_FILE}: LISA/CoReS checkpoints carry the SentencePiece model of "
            "their slow LLaMA tokenizer"
        )
    config = _read_json(path / CONFIG_FILE, {})
    special_map = _read_json(path / SPECIAL_MAP_FILE, {})
    added = _read_json(path / ADDED_TOKENS_FILE, {})
    if not isinstance(config, dict) or not isinstance(special_map, dict) or not isinstance(added, dict):
        raise CheckpointError(
            f"{path}: {CONFIG_FILE}, {SPECIAL_MAP_FILE} and {ADDED_TOKENS_FILE} hold objects"
        )
    special: dict[str, tuple[SpecialToken, ...]] = {}
    for attribute in SPECIAL_ATTRIBUTES:
        where = f"{CONFIG_FILE}: {attribute}"
        value = config[attribute] if attribute in config else LLAMA_DEFAULTS.get(attribute)
        tokens = _tokens(value, _from_config, where) if value is not None else ()
        if attribute in LLAMA_DEFAULTS:
            tokens = tuple(SpecialToken(t.content, True) if not t.added else t for t in tokens)
        special[attribute] = tokens
    for attribute, value in special_map.items():
        if attribute in SPECIAL_ATTRIBUTES:
            special[attribute] = _tokens(value, _from_map, f"{SPECIAL_MAP_FILE}: {attribute}")
    # A set attribute must be truthy to count (4.31: an empty string is "unset").
    special = {a: tuple(t for t in tokens if t.content) for a, tokens in special.items()}
    entries = []
    for token, index in added.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise CheckpointError(f"{path / ADDED_TOKENS_FILE}: the id of {token!r} must be an integer")
        entries.append((token, index))
    kwargs = config.get("sp_model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{CONFIG_FILE}: sp_model_kwargs must be an object, found {kwargs!r}")
    return TokenizerFiles(
        model_file=model_file,
        special=special,
        added_tokens=tuple(sorted(entries, key=lambda entry: entry[1])),
        add_bos_token=_option(config, "add_bos_token", True),
        add_eos_token=_option(config, "add_eos_token", False),
        legacy=_option(config, "legacy", True),
        clean_up_tokenization_spaces=_option(config, "clean_up_tokenization_spaces", False),
        sp_model_kwargs=dict(kwargs),
    )
