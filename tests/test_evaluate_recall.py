"""Recall accuracy counts exactly the letters after a cue whose record lies inside its
stream, with the state carried across windows and the counts summed across ranks."""

import pytest
import torch
from torch import nn

from grulm.data import load_corpus
from grulm.data.recall import CUE, LETTERS
from grulm.distributed import World
from grulm.evaluate import evaluate_recall, recall_accuracy

K = 2  # records of 6 characters: letter, 2 fillers, cue (offset 3), letter, space


class LastLetter(nn.Module):
    """A model with perfect memory: at every position it predicts the last letter it has
    seen in its stream (its state), ``<unk>`` before it has seen one."""

    def __init__(self, vocab) -> None:
        super().__init__()
        self.head = nn.Linear(1, len(vocab))  # where evaluation looks for the device
        self.vocab_size = len(vocab)
        self.is_letter = torch.zeros(len(vocab), dtype=torch.bool)
        self.is_letter[[vocab[c] for c in LETTERS]] = True

    def begin_state(self, batch_size):
        return torch.zeros(batch_size, dtype=torch.int64)

    def forward(self, X, state):
        logits = torch.zeros(*X.shape, self.vocab_size)  # (B, t, V)
        for t in range(X.shape[1]):
            state = torch.where(self.is_letter[X[:, t]], X[:, t], state)
            logits[torch.arange(X.shape[0]), t, state] = 1.0
        return logits, state


@pytest.fixture(scope="module")
def stream():
    corpus = load_corpus(f"recall:{K}", cleaning="raw")
    return corpus.ids[:61].to(torch.int64), corpus.vocab  # 10 records and one character


@pytest.mark.parametrize("num_steps", [2, 7, 100])
def test_four_streams_count_the_eight_cues_whose_letter_they_saw(stream, num_steps):
    """B = 4 streams of 15 inputs start at 0, 15, 30, 45; the cues are at 3, 9, … 57. The
    cues at 15 and 45 open their streams (their letters lie in the stream before), so 8 of
    the 10 count, and a model that remembers gets all 8 right whatever the window length."""
    ids, vocab = stream
    result = recall_accuracy(LastLetter(vocab), ids, vocab[CUE], K, batch_size=4,
                             num_steps=num_steps)
    assert (result.correct, result.total, result.accuracy) == (8, 8, 1.0)
    assert result.to_dict() == {"recall_accuracy": 1.0, "recall_positions": 8}


def test_streams_that_start_with_a_record_count_every_cue(stream):
    ids, vocab = stream
    result = recall_accuracy(LastLetter(vocab), ids, vocab[CUE], K, batch_size=2, num_steps=4)
    assert (result.correct, result.total) == (10, 10)


def test_a_model_without_memory_scores_only_its_lucky_guesses(stream):
    """Predicting the letter of record 0 at every position is right exactly where a counted
    record has that letter."""
    ids, vocab = stream
    text = "".join(vocab.to_tokens(ids[:60]))
    first = ids[0].item()

    class Constant(LastLetter):
        def forward(self, X, state):
            logits = torch.zeros(*X.shape, self.vocab_size)
            logits[..., first] = 1.0
            return logits, state

    result = recall_accuracy(Constant(vocab), ids, vocab[CUE], K, batch_size=2, num_steps=5)
    expected = sum(text[6 * r] == text[0] for r in range(10))
    assert (result.correct, result.total) == (expected, 10)
    assert 1 <= expected < 10


def test_ranks_score_their_streams_and_the_counts_are_summed(stream):
    ids, vocab = stream
    sums = []

    class Rank(World):
        def sum(self, values):
            sums.append(values)
            return list(values)

    for rank in (0, 1):
        recall_accuracy(LastLetter(vocab), ids, vocab[CUE], K, batch_size=4, num_steps=3,
                        world=Rank(rank=rank, size=2))
    assert sums == [[4.0, 4.0], [4.0, 4.0]]  # streams 0–1 and 2–3: two counted cues each


def test_only_recall_sources_get_a_recall_accuracy(stream):
    ids, vocab = stream
    model = LastLetter(vocab)
    assert evaluate_recall(model, vocab, "timemachine", ids, 4, 5) is None
    assert evaluate_recall(model, vocab, f"recall:{K}", ids, 4, 5).total == 8
