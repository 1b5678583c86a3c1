"""transformers 4.31's slow ``LlamaTokenizer`` behaviour, on the ``sentencepiece`` library directly.

The released LISA/CoReS checkpoints were trained and evaluated with token ids from that tokenizer.
Transformers 5.x cannot be configured to give them (its LLaMA tokenizer treats the whitespace around added
tokens differently), so this class reproduces 4.31's rules from the checkpoint's own files
(:mod:`cores.modeling.tokenizer_files`):

* **Encoding.** The text is split on the no-split tokens (added tokens and special tokens; longest match at
  the leftmost position). Around each such token the neighbouring text loses its whitespace on both sides --
  unless the token is an ``AddedToken``, whose own ``lstrip``/``rstrip`` decide. Pieces left empty are
  dropped; every other piece is encoded by SentencePiece *on its own* (so its dummy prefix applies: ``"."``
  after ``[SEG]`` becomes ``'▁.'``). Tokens map to ids through the added tokens first, then the SentencePiece
  vocabulary. ``add_bos_token`` / ``add_eos_token`` frame the result.
* **Decoding** (``skip_special_tokens=False``): runs of ordinary pieces are decoded by SentencePiece, with
  special tokens written out and a space put before a special token that follows text; added tokens stand
  alone; the parts are joined with single spaces; ``clean_up_tokenization_spaces`` applies 4.31's clean-up.

``tests/cores/modeling/test_fidelity_tokens.py`` compares every rule live with transformers 4.31 in
``.venv-ref``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from cores.errors import CheckpointError
from cores.modeling.tokenizer_files import SpecialToken, TokenizerFiles

SPIECE_UNDERLINE = "▁"
#: 4.31's ``clean_up_tokenization`` replacements, applied in this order.
CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class SlowLlamaTokenizer:
    """The checkpoint's LLaMA tokenizer with 4.31's slow-tokenizer rules (see the module docstring).

    Raises:
        CheckpointError: the SentencePiece model does not load, or ``added_tokens.json`` ids do not follow the
            vocabulary consecutively (4.31 refuses such a tokenizer too).
    """

    def __init__(self, files: TokenizerFiles) -> None:
        self.files = files
        self.sp = spm.SentencePieceProcessor(**files.sp_model_kwargs)
        try:
            self.sp.Load(str(files.model_file))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{files.model_file} is not a SentencePiece model: {exc}") from exc
        self.base_size = int(self.sp.get_piece_size())
        extended = files.extended()
        #: The special tokens' contents (bos, eos, unk, ...), in 4.31's order.
        self.all_special_tokens: list[str] = [t.content for t in extended]
        self._special = set(self.all_special_tokens)
        self._flags: dict[str, SpecialToken] = {}
        for token in extended:
            if token.added:
                self._flags.setdefault(token.content, token)
        self.added_tokens_encoder: dict[str, int] = {}
        self._no_split: set[str] = set()
        self._add_vocabulary()
        self.added_tokens_decoder = {i: t for t, i in self.added_tokens_encoder.items()}
        ordered = sorted(self._no_split, key=len, reverse=True)
        self._splitter = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None

    # --- vocabulary ---------------------------------------------------------------------------------
    def _add_vocabulary(self) -> None:
        """``added_tokens.json`` in id order, in runs of special / non-special tokens, then every special
        token (4.31's ``from_pretrained`` followed by ``sanitize_special_tokens``)."""
        special_now = set(self.all_special_tokens)
        pending: list[str] = []
        pending_special: bool | None = None
        for token, index in self.files.added_tokens:
            expected = len(self) + len(pending)
            if index != expected:
                raise CheckpointError(
                    f"added token {token!r} has id {index} in added_tokens.json, but ids must follow the "
                    f"vocabulary consecutively (expected {expected}); transformers 4.31 refuses it too"
                )
            special = token in special_now
            if pending_special is not None and special != pending_special:
                self._add(pending, special=pending_special)
                pending = []
            pending.append(token)
            pending_special = special
        if pending:
            self._add(pending, special=bool(pending_special))
        self._add(self.all_special_tokens, special=True)

    def _add(self, tokens: Iterable[str], *, special: bool) -> None:
        """4.31's ``_add_tokens``: new ids for tokens that map to the unknown id; all of them become no-split
        tokens when ``special``, else only the new ones."""
        tokens = list(tokens)
        unk = self.unk_token
        unk_id = self.convert_tokens_to_ids(unk) if unk is not None else None
        new: list[str] = []
        for token in tokens:
            if token != unk and self.convert_tokens_to_ids(token) == unk_id and token not in new:
                new.append(token)
        for token in new:
            self.added_tokens_encoder[token] = len(self)
        self._no_split.update(tokens if special else new)

    def __len__(self) -> int:
        """Vocabulary size with the added tokens."""
        return self.base_size + len(self.added_tokens_encoder)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary (SentencePiece pieces, then added tokens)."""
        vocab = {self.sp.id_to_piece(i): i for i in range(self.base_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    @property
    def no_split_tokens(self) -> frozenset[str]:
        """Tokens the text is split on (added and special tokens): a query must not contain them."""
        return frozenset(self._no_split)

    @property
    def bos_token(self) -> str | None:
        return self.files.token("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.files.token("eos_token")

    @property
    def unk_token(self) -> str | None:
        return self.files.token("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.convert_tokens_to_ids(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.convert_tokens_to_ids(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return None if self.unk_token is None else self.convert_tokens_to_ids(self.unk_token)

    def convert_tokens_to_ids(self, token: str) -> int:
        """An added token's id, else the SentencePiece id (the unknown id for a string it does not hold)."""
        if token in self.added_tokens_encoder:
            return self.added_tokens_encoder[token]
        return int(self.sp.piece_to_id(token))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings of ids.

        Raises:
            ValueError: an id outside the vocabulary.
        """
        tokens = []
        for index in ids:
            index = int(index)
            if index in self.added_tokens_decoder:
                tokens.append(self.added_tokens_decoder[index])
            elif 0 <= index < self.base_size:
                tokens.append(self.sp.id_to_piece(index))
            else:
                raise ValueError(f"token id {index} is outside the tokenizer's vocabulary of {len(self)}")
        return tokens

    # --- encoding -----------------------------------------------------------------------------------
    def _split(self, text: str) -> list[str]:
        if self._splitter is None:
            return [text] if text else []
        return [piece for piece in self._splitter.split(text) if piece]

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no BOS/EOS), by 4.31's rules."""
        if not self.files.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        pieces = self._split(text)
        for i, piece in enumerate(pieces):
            if piece not in self._no_split:
                continue
            flags = self._flags.get(piece)
            strip_after = flags.rstrip if flags is not None else True
            strip_before = flags.lstrip if flags is not None else True
            if strip_after and i + 1 < len(pieces) and pieces[i + 1]:
                pieces[i + 1] = pieces[i + 1].lstrip()
            if strip_before and i > 0 and pieces[i - 1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
        tokens: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            if piece in self._no_split:
                tokens.append(piece)
            else:
                tokens.extend(self._encode_piece(piece))
        return tokens

    def _encode_piece(self, text: str) -> list[str]:
        """SentencePiece pieces of one stretch of text between no-split tokens."""
        if self.files.legacy:
            return list(self.sp.encode(text, out_type=str))
        first = text.startswith(SPIECE_UNDERLINE)
        if first:
            text = text[1:]
        pieces = list(self.sp.encode(text, out_type=str))
        if not first and not text.startswith(" ") and pieces and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` framed by BOS/EOS as configured: 4.31's ``tokenizer(text).input_ids``."""
        ids = [self.convert_tokens_to_ids(token) for token in self.tokenize(text)]
        if self.files.add_bos_token and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        if self.files.add_eos_token and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    # --- decoding -----------------------------------------------------------------------------------
    def _pieces_to_text(self, tokens: list[str]) -> str:
        out = ""
        run: list[str] = []
        after_special = False
        for i, token in enumerate(tokens):
            if token in self._special:
                if not after_special and i != 0:
                    out += " "
                out += self.sp.decode(run) + token
                after_special = True
                run = []
            else:
                run.append(token)
                after_special = False
        return out + self.sp.decode(run)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens kept: 4.31's ``decode(ids, skip_special_tokens=False)``.

        Raises:
            ValueError: an id outside the vocabulary.
        """
        parts: list[str] = []
        run: list[str] = []
        for token in self.convert_ids_to_tokens(ids):
            if token in self.added_tokens_encoder:
                if run:
                    parts.append(self._pieces_to_text(run))
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self._pieces_to_text(run))
        text = " ".join(parts)
        if self.files.clean_up_tokenization_spaces:
            for old, new in CLEAN_UP:
                text = text.replace(old, new)
        return text
