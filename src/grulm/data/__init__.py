"""Text in, batches of token ids out.

Modules, in the order data flows through them:

- :mod:`~grulm.data.sources`: built-in corpora, ``GRULM_DATA_PATH``, the cache, verified
  downloads, local files (regular files only), prime files for generation.
- :mod:`~grulm.data.text`: cleaning (``d2l`` | ``raw`` | ``none``) and tokens
  (``char`` | ``word``).
- :mod:`~grulm.data.vocab`: :class:`Vocab`, the seed's id order, JSON round-trip.
- :mod:`~grulm.data.prepare`: whole-file preparation to compact ids, cached on disk.
- :mod:`~grulm.data.recall`: the synthetic long-range recall stream ``recall:K``.
- :mod:`~grulm.data.corpus`: :func:`load_corpus` → :class:`Corpus` (the entry point).
- :mod:`~grulm.data.splits`: contiguous train/val/test splits; the seed experiment's split.
- :mod:`~grulm.data.batches`: d2l's sequential and random partitions, evaluation windows.

The seed experiment's data::

    corpus = load_corpus("timemachine")             # d2l cleaning, characters, 28 tokens
    splits = seed_splits(corpus.ids, max_tokens=10_000)
    rng = random.Random(seed)
    for X, Y in epoch_batches(splits.train, 32, 35, rng, "sequential"):  # (32, 35) int64
        ...
"""

from grulm.data.batches import (
    PARTITIONS,
    EpochBatches,
    RandomBatches,
    SequentialBatches,
    check_batchable,
    epoch_batches,
    eval_batches,
    min_tokens,
    rng_from_state,
    rng_state,
)
from grulm.data.corpus import Corpus, load_corpus, load_corpus_time_machine
from grulm.data.sources import BUILTIN_SOURCES, Source, cache_dir, resolve_source
from grulm.data.splits import Splits, seed_splits, split_ids
from grulm.data.text import CLEANINGS, TOKENS, join_tokens, text_to_tokens
from grulm.data.vocab import UNK, Vocab

__all__ = [
    "BUILTIN_SOURCES",
    "CLEANINGS",
    "PARTITIONS",
    "TOKENS",
    "UNK",
    "Corpus",
    "EpochBatches",
    "RandomBatches",
    "SequentialBatches",
    "Source",
    "Splits",
    "Vocab",
    "cache_dir",
    "check_batchable",
    "epoch_batches",
    "eval_batches",
    "join_tokens",
    "load_corpus",
    "load_corpus_time_machine",
    "min_tokens",
    "resolve_source",
    "rng_from_state",
    "rng_state",
    "seed_splits",
    "split_ids",
    "text_to_tokens",
]
