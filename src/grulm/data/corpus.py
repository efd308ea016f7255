"""A corpus: one token-id stream with its vocabulary and where it came from.

:func:`load_corpus` is the one entry point: it resolves ``data`` (built-in name or path, see
:mod:`grulm.data.sources`), then cleans, tokenizes and maps the whole file (cached, see
:mod:`grulm.data.prepare`). :func:`load_corpus_time_machine` is d2l's function of that name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from grulm.data.prepare import load_prepared
from grulm.data.recall import check_recall_text_options, recall_task
from grulm.data.sources import resolve_source
from grulm.data.text import join_tokens, text_to_tokens
from grulm.data.vocab import Vocab


@dataclass(frozen=True)
class Corpus:
    """The whole file as token ids.

    Attributes:
        ids: (N,) token ids of the whole text, in order (``torch.uint8`` when the vocabulary
            has ≤ 256 tokens, else ``torch.int32``; batch iterators yield int64).
        vocab: built from the whole text.
        source: the built-in name, or the path as given.
        sha256: hex sha256 of the file's bytes.
        cleaning: ``d2l``, ``raw`` or ``none`` (see :mod:`grulm.data.text`).
        token: ``char`` or ``word``.
        min_freq: tokens rarer than this map to ``<unk>``.
    """

    ids: Tensor
    vocab: Vocab
    source: str
    sha256: str
    cleaning: str = "d2l"
    token: str = "char"
    min_freq: int = 0

    def __len__(self) -> int:
        return self.ids.numel()

    def describe(self) -> dict[str, Any]:
        """What identifies this data, JSON-ready (for checkpoints and resume checks)."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "cleaning": self.cleaning,
            "token": self.token,
            "min_freq": self.min_freq,
            "num_tokens": len(self),
            "vocab_size": len(self.vocab),
        }

    def encode(self, text: str) -> Tensor:
        """(n,) int64 ids of ``text`` cleaned and tokenized like this corpus (unknown → 0)."""
        tokens = text_to_tokens(text, self.cleaning, self.token)
        return torch.tensor(self.vocab[tokens], dtype=torch.int64)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Text of ids (any shape, flattened): tokens joined as this corpus tokenizes."""
        return join_tokens(self.vocab.to_tokens(ids), self.cleaning, self.token)


def load_corpus(
    data: str = "timemachine",
    *,
    cleaning: str = "d2l",
    token: str = "char",
    min_freq: int = 0,
    reserved_tokens: Sequence[str] = (),
    use_cache: bool = True,
    progress: bool = False,
) -> Corpus:
    """Load a built-in corpus or a local text file as one token stream.

    Args:
        data: ``timemachine``, ``tinyshakespeare``, ``recall:K`` (the synthetic long-range
            recall stream, generated in memory: :mod:`grulm.data.recall`) or a path to a
            text file.
        cleaning: ``d2l`` (letters only, lower case; the seed), ``raw`` (UTF-8, the leading
            BOM dropped, universal newlines) or ``none`` (UTF-8 exactly as is).
        token: ``char`` (the seed) or ``word``.
        min_freq: drop tokens seen fewer times from the vocabulary (they become ``<unk>``).
        reserved_tokens: tokens placed right after ``<unk>`` in the vocabulary.
        use_cache: reuse and store prepared ids under ``<cache>/prepared``.
        progress: tqdm bars on stderr for downloading and preparing.

    Raises:
        DataError: see :func:`~grulm.data.sources.resolve_source`; also undecodable bytes
            with ``raw`` or ``none`` and a file with nothing left after cleaning.
        ConfigError: an unknown cleaning or token kind, a negative ``min_freq``, or one that
            leaves no token besides ``<unk>``; a malformed ``recall:K``, or one read with
            d2l cleaning or word tokens.
    """
    task = recall_task(data)
    if task is not None:
        check_recall_text_options(task, cleaning, token)
        prepared = task.prepared(min_freq, tuple(reserved_tokens))
        return Corpus(prepared.ids, prepared.vocab, task.name, prepared.sha256, cleaning,
                      token, min_freq)
    resolved = resolve_source(data, progress=progress)
    prepared = load_prepared(
        resolved.path,
        cleaning=cleaning,
        token=token,
        min_freq=min_freq,
        reserved_tokens=reserved_tokens,
        use_cache=use_cache,
        progress=progress,
        name=resolved.name,
    )
    return Corpus(
        prepared.ids, prepared.vocab, resolved.name, prepared.sha256, cleaning, token, min_freq
    )


def load_corpus_time_machine(
    max_tokens: int = -1, data: str = "timemachine", *, use_cache: bool = True
) -> tuple[Tensor, Vocab]:
    """d2l's ``load_corpus_time_machine``: (ids (n,) int64, vocab) with d2l characters.

    The vocabulary is built from the whole cleaned text and the ids are truncated to the
    first ``max_tokens`` when ``max_tokens > 0`` (the seed uses 10,000). For the held-out rest
    of the book use :func:`load_corpus` with :func:`grulm.data.splits.seed_splits`.
    """
    corpus = load_corpus(data, cleaning="d2l", token="char", use_cache=use_cache)
    ids = corpus.ids[:max_tokens] if max_tokens > 0 else corpus.ids
    return ids.to(torch.int64), corpus.vocab
