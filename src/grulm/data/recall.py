"""The long-range recall task: a synthetic character stream that only memory can predict.

``--data recall:K`` names a stream of records, each a random letter, K filler characters, a
cue, the same letter again and a space::

    q........=q k........=k a........=a      (K = 8)

Every character of a record but the letter after the cue is predictable from the few
before it (the filler count is fixed, so a model learns where the cue comes), and the first
letter of a record is random. The letter after the cue is predictable only by remembering
the letter seen K + 1 steps earlier: the cue spares the model from counting, so the task
measures memory alone. Chance is 1/26.

The stream is the same on every machine and for every run: :data:`RECORDS` records drawn by
``random.Random(DATA_SEED)`` (Python's generator, stable across versions), so
``RECORDS · (K + 4)`` characters (880,000 for K = 40); training seeds change the model and
the batch order, never the data. A checkpoint records the source name ``recall:K`` and the
stream's SHA-256 like any corpus, so ``eval``, ``generate``, ``info`` and ``resume`` rebuild
it. K runs from 1 to :data:`MAX_DISTANCE`.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections import Counter
from dataclasses import dataclass

import torch

from grulm.data.prepare import Prepared, storage_dtype
from grulm.data.vocab import Vocab
from grulm.errors import ConfigError

PREFIX = "recall:"
LETTERS = string.ascii_lowercase
FILLER, CUE, SEPARATOR = ".", "=", " "
DATA_SEED = 0
RECORDS = 20_000  # 18,000 to train on and 2,000 to measure recall on with a 90/10 split
# The stream grows as RECORDS · (K + 4) characters, and a model must be trained on windows
# of at least K + 3 steps: beyond 1,000 neither fits a CPU run of minutes.
MAX_DISTANCE = 1_000


@dataclass(frozen=True)
class RecallTask:
    """``recall:K``: remember a letter across ``distance`` filler characters.

    Attributes:
        distance: K, the filler characters between a letter and its cue.
    """

    distance: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.distance}"

    @property
    def record_length(self) -> int:
        """Characters per record: letter, K fillers, cue, letter, separator."""
        return self.distance + 4

    @property
    def min_num_steps(self) -> int:
        """The shortest training window holding a whole letter-to-letter span (K + 3 inputs
        and labels), so that backpropagation reaches the letter from its recall."""
        return self.distance + 3

    def text(self) -> bytes:
        """The whole stream, ASCII: :data:`RECORDS` records, ``RECORDS · (K + 4)`` bytes."""
        rng = random.Random(DATA_SEED)
        middle = (FILLER * self.distance + CUE).encode("ascii")
        return b"".join(
            letter + middle + letter + SEPARATOR.encode("ascii")
            for letter in (c.encode("ascii") for c in rng.choices(LETTERS, k=RECORDS))
        )

    def prepared(self, min_freq: int = 0, reserved_tokens: tuple[str, ...] = ()) -> Prepared:
        """The stream as character ids with the seed's vocabulary order (by frequency, ties
        by first appearance): ``<unk>``, ``.``, ``=``, `` ``, then the letters."""
        text = self.text()
        counts = Counter(text.decode("ascii"))  # insertion order = first appearance
        vocab = Vocab.from_counts(counts, min_freq, reserved_tokens)
        if len(vocab) < 1 + len(reserved_tokens) + len(counts):
            raise ConfigError(f"min_freq {min_freq} drops characters of {self.name} from the "
                              "vocabulary (its letters occur about 770 times each); use "
                              "--min-freq 0")
        lookup = torch.zeros(256, dtype=torch.int32)  # byte → id
        for char in counts:
            lookup[ord(char)] = vocab[char]
        ids = lookup[torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.int64)]
        ids = ids.to(torch.uint8) if storage_dtype(len(vocab)) == "uint8" else ids
        return Prepared(ids, vocab, hashlib.sha256(text).hexdigest())


def recall_task(data: str | None) -> RecallTask | None:
    """The task ``data`` names (``recall:K``), or None for any other source.

    Raises:
        ConfigError: ``recall:`` followed by anything but a whole number from 1 to
            :data:`MAX_DISTANCE`.
    """
    if data is None or not data.startswith(PREFIX):
        return None
    value = data[len(PREFIX):]
    distance = int(value) if re.fullmatch("[0-9]{1,9}", value) else None
    if distance is None or not 1 <= distance <= MAX_DISTANCE:
        raise ConfigError(
            f"{data!r}: K in recall:K is the number of characters to remember a letter "
            f"across, a whole number from 1 to {MAX_DISTANCE:,} (e.g. recall:40); got "
            f"{value!r}"
        )
    return RecallTask(distance)


def check_recall_text_options(task: RecallTask, cleaning: str, token: str) -> None:
    """``ConfigError`` unless the stream is read as raw characters: d2l cleaning would
    drop the filler and the cue, and words would make each record one token."""
    if cleaning == "d2l" or token != "char":
        raise ConfigError(
            f"{task.name} is a character stream with filler and cue characters; train it "
            f"with --cleaning raw (or none) and --token char, not --cleaning {cleaning} "
            f"--token {token}"
        )
