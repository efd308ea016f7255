"""The vocabulary: tokens ↔ integer ids, with the seed's (d2l ``Vocab``) ordering.

Ids are assigned as d2l §8.2 does: ``<unk>`` is 0, then the reserved tokens in the order given,
then the corpus tokens by descending frequency, ties broken by first appearance in the text
(what a stable sort of a ``Counter`` gives), dropping tokens seen fewer than ``min_freq`` times.
On The Time Machine with d2l cleaning and characters that is 28 tokens:
``<unk>``, space, then the 26 letters ``e t a i n o s h r d l m u c f w g y p b v k x z j q``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from grulm.errors import ConfigError, DataError

UNK = "<unk>"
FORMAT = "grulm.vocab/1"


class Vocab:
    """A fixed token list; a token's id is its index.

    Build one with :meth:`build` (from a token sequence) or :meth:`from_counts` (from counts
    in first-appearance order); restore one with :meth:`from_dict` / :meth:`from_json`.

    ``vocab[token]`` → id (unknown tokens → 0, ``<unk>``); ``vocab[list_of_tokens]`` → list of
    ids; ``vocab.to_tokens(ids)`` → the inverse (an int gives a token, anything iterable or a
    tensor gives a list).
    """

    unk = 0

    def __init__(self, idx_to_token: Sequence[str]):
        tokens = list(idx_to_token)
        if not tokens or tokens[0] != UNK:
            raise DataError(
                f"a vocabulary must start with {UNK!r} at id 0, got {tokens[:3]!r}; "
                "rebuild it with Vocab.build or check the file it came from"
            )
        if len(set(tokens)) != len(tokens):
            duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
            raise DataError(
                f"a vocabulary lists tokens more than once: {duplicates[:5]!r}; "
                "rebuild it with Vocab.build or check the file it came from"
            )
        self.idx_to_token: list[str] = tokens
        self.token_to_idx: dict[str, int] = {t: i for i, t in enumerate(tokens)}

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
    ) -> Vocab:
        """The d2l vocabulary from token counts whose iteration order is first appearance.

        Args:
            counts: token → count, iterated in the order tokens first appear in the text
                (a ``Counter`` filled in text order has this order).
            min_freq: tokens counted fewer times are left out (they map to ``<unk>``).
            reserved_tokens: tokens placed right after ``<unk>``, whatever their counts.
        """
        if not isinstance(min_freq, int) or min_freq < 0:
            raise ConfigError(f"min_freq must be an integer ≥ 0, got {min_freq!r}")
        # sorted() is stable, also with reverse=True: equal counts keep first-appearance order.
        by_freq = sorted(counts.items(), key=lambda item: item[1], reverse=True)
        tokens = [UNK, *reserved_tokens]
        seen = set(tokens)
        for token, freq in by_freq:
            if freq < min_freq:
                break
            if token not in seen:
                tokens.append(token)
                seen.add(token)
        return cls(tokens)

    @classmethod
    def build(
        cls, tokens: Iterable[str], min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> Vocab:
        """The d2l vocabulary of a token sequence (d2l's ``Vocab(tokens, min_freq, reserved)``)."""
        return cls.from_counts(Counter(tokens), min_freq, reserved_tokens)

    # ----------------------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens: str | Sequence[str]) -> Any:
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.token_to_idx.get(t, self.unk) for t in tokens]

    def __contains__(self, token: object) -> bool:
        return token in self.token_to_idx

    def to_tokens(self, ids: int | Iterable[int] | torch.Tensor) -> Any:
        """Tokens of ids: an int gives a str; a sequence or tensor (any shape, flattened)
        gives a list. An id outside ``[0, len)`` raises ``DataError``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        if isinstance(ids, int):
            return self._token(ids)
        return [self._token(int(i)) for i in ids]

    def _token(self, index: int) -> str:
        if not 0 <= index < len(self.idx_to_token):
            raise DataError(
                f"token id {index} is outside this vocabulary of {len(self)} tokens; "
                "the ids come from a model or data with a different vocabulary"
            )
        return self.idx_to_token[index]

    # ----------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: ``{"format": "grulm.vocab/1", "tokens": [...]}``."""
        return {"format": FORMAT, "tokens": list(self.idx_to_token)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise DataError(
                f"not a grulm vocabulary (format {found!r}, expected {FORMAT!r}); "
                "pass the 'vocab' entry written by Vocab.to_dict"
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(
                "a grulm vocabulary needs 'tokens': a list of strings; the file is damaged, "
                "prepare the data again"
            )
        return cls(tokens)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"vocabulary JSON does not parse ({error}); it is damaged") from None
        return cls.from_dict(data)

    # ----------------------------------------------------------------------------- comparing
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.idx_to_token == other.idx_to_token

    def __hash__(self) -> int:
        return hash(tuple(self.idx_to_token))

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        more = ", …" if len(self) > 8 else ""
        return f"Vocab({len(self)} tokens: {head}{more})"
