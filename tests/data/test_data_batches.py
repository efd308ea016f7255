"""Batch iterators: equal to d2l's generators for the same seed, shapes, bounds, resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from grulm.data import (
    RandomBatches,
    SequentialBatches,
    epoch_batches,
    eval_batches,
    min_tokens,
    rng_from_state,
    rng_state,
)
from grulm.errors import ConfigError, DataError


# d2l §8.3, verbatim (global `random`).
def seq_data_iter_random(corpus, batch_size, num_steps):
    corpus = corpus[random.randint(0, num_steps - 1) :]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    random.shuffle(initial_indices)

    def data(pos):
        return corpus[pos : pos + num_steps]

    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        initial_indices_per_batch = initial_indices[i : i + batch_size]
        X = [data(j) for j in initial_indices_per_batch]
        Y = [data(j + 1) for j in initial_indices_per_batch]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(corpus, batch_size, num_steps):
    offset = random.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset : offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1 : offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        X = Xs[:, i : i + num_steps]
        Y = Ys[:, i : i + num_steps]
        yield X, Y


D2L = {"sequential": seq_data_iter_sequential, "random": seq_data_iter_random}


def as_list(batches):
    return [(x.tolist(), y.tolist()) for x, y in batches]


@pytest.mark.parametrize("partition", ["sequential", "random"])
@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize("n, batch_size, num_steps", [(35, 2, 5), (1000, 32, 7), (401, 3, 11)])
def test_equal_to_d2l_for_the_same_seed(partition, seed, n, batch_size, num_steps):
    corpus = [(7 * i) % 251 for i in range(n)]
    random.seed(seed)
    expected = as_list(D2L[partition](corpus, batch_size, num_steps))
    rng = random.Random(seed)
    ids = torch.tensor(corpus, dtype=torch.uint8)
    epoch = epoch_batches(ids, batch_size, num_steps, rng, partition)
    got = as_list(epoch)
    assert got == expected and len(epoch) == len(expected) > 0
    # Later epochs too: the rng continues exactly as d2l's global random does.
    expected2 = as_list(D2L[partition](corpus, batch_size, num_steps))
    assert as_list(epoch_batches(ids, batch_size, num_steps, rng, partition)) == expected2


@pytest.mark.parametrize("partition", ["sequential", "random"])
def test_shapes_dtype_and_shifted_labels(partition):
    ids = torch.arange(500, dtype=torch.int32)
    for x, y in epoch_batches(ids, 4, 6, random.Random(3), partition):
        assert x.shape == y.shape == (4, 6) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # the label of token i is token i + 1


def test_sequential_batches_continue_each_row():
    epoch = SequentialBatches(torch.arange(200), 4, 5, random.Random(0))
    (x0, _), (x1, _) = epoch.batch(0), epoch.batch(1)
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)


@pytest.mark.parametrize("partition, need", [("sequential", 4 * 6 + 6 + 1), ("random", 5 * 6)])
def test_the_too_short_boundary_is_exact(partition, need):
    assert min_tokens(4, 6, partition) == need
    ids = torch.arange(need)
    # At exactly `need` tokens every offset (including the largest) gives one batch.
    for seed in range(60):
        assert len(epoch_batches(ids, 4, 6, random.Random(seed), partition)) >= 1
    offsets = {epoch_batches(ids, 4, 6, random.Random(s), partition).offset for s in range(60)}
    assert max(offsets) == (6 if partition == "sequential" else 5)
    with pytest.raises(DataError, match=f"has {need - 1} tokens.*at least {need}"):
        epoch_batches(ids[:-1], 4, 6, random.Random(0), partition)


def test_one_token_short_loses_the_batch_at_the_worst_offset():
    # The bound is tight: with need - 1 tokens, the largest offset would leave no batch.
    need = min_tokens(4, 6, "sequential")
    assert ((need - 1 - 6 - 1) // 4 * 4) // 4 // 6 == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises(ConfigError, match="must be a positive integer"):
        epoch_batches(torch.arange(100), bad, 5, random.Random(0))
    with pytest.raises(ConfigError, match="must be a positive integer"):
        min_tokens(2, bad)


def test_unknown_partition():
    with pytest.raises(ConfigError, match="partition must be one of sequential, random"):
        epoch_batches(torch.arange(100), 2, 5, random.Random(0), "shuffled")


@pytest.mark.parametrize("cls", [SequentialBatches, RandomBatches])
def test_resume_from_saved_rng_state_and_position(cls):
    ids = torch.arange(3000) % 28
    rng = random.Random(7)
    cls(ids, 8, 10, rng)  # one epoch already consumed
    saved = json.loads(json.dumps(rng_state(rng)))  # what a checkpoint stores
    full = as_list(cls(ids, 8, 10, rng))
    resumed = cls(ids, 8, 10, rng_from_state(saved))
    assert as_list(resumed.iter_from(3)) == full[3:]
    assert as_list(resumed.iter_from(len(resumed))) == []
    with pytest.raises(IndexError):
        resumed.batch(len(resumed))
    with pytest.raises(ConfigError, match="start must be in"):
        next(resumed.iter_from(-1))


def test_damaged_rng_state():
    with pytest.raises(DataError, match="random-number state is damaged"):
        rng_from_state({"version": 3})


def test_eval_batches_score_every_prediction_once():
    ids = torch.arange(103)
    windows = list(eval_batches(ids, 4, 7))
    length = (103 - 1) // 4  # 25 columns: windows of 7, 7, 7, 4
    assert [x.shape[1] for x, _ in windows] == [7, 7, 7, 4]
    xs = torch.cat([x for x, _ in windows], dim=1)
    ys = torch.cat([y for _, y in windows], dim=1)
    assert torch.equal(xs, ids[: 4 * length].reshape(4, length)) and torch.equal(ys, xs + 1)
    with pytest.raises(DataError, match="fewer than batch size \\+ 1 = 5"):
        list(eval_batches(torch.arange(4), 4, 7))
