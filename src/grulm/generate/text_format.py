"""Text in and out of generation: a prefix read as the training text was and mapped to ids
(unknown tokens become ``<unk>`` with one warning, and letters that d2l cleaning removes are
named in another), generated tokens written back as text, and the watch for stop strings in
what is generated."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grulm.data.text import check_text_options, text_to_tokens
from grulm.errors import ConfigError

if TYPE_CHECKING:
    from grulm.checkpoint import CheckpointMeta


class GenerationWarning(UserWarning):
    """Generation went ahead, but not exactly as asked (for example a clamped ``top_k``)."""


class OutOfVocabularyWarning(GenerationWarning):
    """Prefix tokens the vocabulary does not hold; they were read as ``<unk>``."""


class DroppedLettersWarning(OutOfVocabularyWarning):
    """Prefix letters outside A-Z (other scripts, accented letters) that d2l cleaning removed.

    The model never sees them, as with out-of-vocabulary tokens, but they vanish instead of
    becoming ``<unk>``: ``日本語`` reads as one space. Punctuation and digits are dropped
    silently; that is what d2l cleaning is documented to do.
    """


@dataclass(frozen=True)
class TextFormat:
    """How prefix text becomes tokens and generated tokens become text, as in training.

    Attributes:
        token: ``char`` or ``word`` (see :mod:`grulm.data.text`). Word tokens of d2l-cleaned
            text join with ``' '``; everything else joins with ``''``.
        cleaning: ``raw`` leaves the prefix as it is (the seed's ``predict``) but for line
            ends and a leading byte-order mark, read as the corpus was (``\\r\\n`` and
            ``\\r`` become ``\\n``); ``none`` leaves it exactly as it is; ``d2l`` cleans it
            as the seed's training text was, so that a model trained on letters-only lower-case
            text can be primed with ``"Time Traveller"``: every run of non-letters (newlines
            included) becomes one space and letters are lower-cased, with a
            :class:`DroppedLettersWarning` for letters outside A-Z. Unlike a corpus line, a
            character prefix is not stripped, since a trailing space is part of the prompt.
    """

    token: str = "char"
    cleaning: str = "raw"

    def __post_init__(self) -> None:
        check_text_options(self.cleaning, self.token)

    @classmethod
    def from_meta(cls, meta: CheckpointMeta) -> TextFormat:
        """The format a checkpoint's metadata describes: its data's ``token`` and ``cleaning``
        (``char`` and ``raw`` when it does not say)."""
        data = meta.data
        return cls() if data is None else cls(token=data.token, cleaning=data.cleaning)

    @property
    def joiner(self) -> str:
        return " " if self.token == "word" and self.cleaning == "d2l" else ""

    def tokenize(self, text: str) -> list[str]:
        """The prefix as tokens: its (cleaned) characters, or its words as training cut them."""
        if self.token == "char" and self.cleaning == "d2l":
            return list(re.sub("[^A-Za-z]+", " ", text).lower())
        return text_to_tokens(text, self.cleaning, self.token)


def encode_prefix(vocab, tokens: Sequence[str]) -> list[int]:
    """Token ids for ``tokens``; unknown tokens become ``<unk>`` (id ``vocab['<unk>']``).

    Warns once with :class:`OutOfVocabularyWarning`, naming every distinct unknown token.
    """
    ids = [vocab[token] for token in tokens]
    unk_token = vocab.idx_to_token[0]
    unknown = [t for t, i in zip(tokens, ids, strict=True) if i == 0 and t != unk_token]
    if unknown:
        names = ", ".join(repr(t) for t in dict.fromkeys(unknown))
        warnings.warn(
            f"prefix has {len(unknown)} token(s) not in the model's vocabulary, read as "
            f"{unk_token}: {names}",
            OutOfVocabularyWarning,
            stacklevel=3,
        )
    return ids


def warn_dropped_letters(prefix: str, shown: int = 10) -> None:
    """Warn once with :class:`DroppedLettersWarning` if d2l cleaning removes letters of
    ``prefix`` (any letter but A-Z, a-z), naming the first ``shown`` distinct ones."""
    counts = Counter(prefix)  # distinct characters in order of first appearance
    dropped = [ch for ch in counts if ch.isalpha() and not ch.isascii()]
    if not dropped:
        return
    count = sum(counts[ch] for ch in dropped)
    names = ", ".join(repr(ch) for ch in dropped[:shown])
    more = f" and {len(dropped) - shown} more" if len(dropped) > shown else ""
    warnings.warn(
        f"d2l cleaning drops {count} letter(s) of the prefix outside A-Z: {names}{more}; the "
        "model was trained on the letters a-z only, so write the prefix in those",
        DroppedLettersWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------
# Decoders: one token per sequence per step.
#
# A decoder works in its own array type (``xp``: torch, or NumPy for the CPU fast path): token
# ids (N,) int64 in, logits (N, V) out; ``array`` makes one from a list or a CPU tensor.
# ``.argmax(-1)``, ``[index]`` and ``.tolist()`` read the same for both.

def prefix_ids(vocab, prefix: str, text_format: TextFormat) -> tuple[list[str], list[int]]:
    if not isinstance(prefix, str):
        raise ConfigError(f"the prefix must be a string, got {type(prefix).__name__}")
    if text_format.cleaning == "d2l":
        warn_dropped_letters(prefix)
    tokens = text_format.tokenize(prefix)
    if not tokens:
        raise ConfigError(
            "the prefix is empty; give at least one "
            + ("character" if text_format.token == "char" else "word")
            + " to start from"
        )
    return tokens, encode_prefix(vocab, tokens)


def token_pieces(vocab, text_format: TextFormat) -> list[str]:
    """The text each token id adds to a continuation."""
    return [text_format.joiner + token for token in vocab.idx_to_token]


class StopWatch:
    """Finds the first stop string in a stream of text pieces, keeping only a bounded tail."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.tail = ""

    def feed(self, piece: str) -> int | None:
        """Where in ``piece`` the first stop string completed by it ends, or None."""
        window = self.tail + piece
        end = None
        for stop in self.stops:
            at = window.find(stop, max(0, len(self.tail) - len(stop) + 1))
            if at >= 0:
                stop_end = at + len(stop) - len(self.tail)
                end = stop_end if end is None else min(end, stop_end)
        self.tail = window[max(0, len(window) - self.keep) :] if self.keep else ""
        return end

    def copy(self) -> StopWatch:
        twin = StopWatch(self.stops)
        twin.tail = self.tail
        return twin


# ---------------------------------------------------------------------------------------------
# The public entry points.
