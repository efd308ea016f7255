"""Splits: contiguous, disjoint, covering; the seed's held-out validation; bad fractions."""

from __future__ import annotations

import pytest
import torch

from grulm.data import load_corpus, seed_splits, split_ids
from grulm.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "fractions, sizes",
    [((0.9, 0.1), [90, 10]), ((0.8, 0.1, 0.1), [80, 10, 10]), ((0.5, 0.25), [50, 25]),
     ((1.0,), [100]), ((0.7, 0.2, 0.1), [70, 20, 10])],
)  # fmt: skip
def test_splits_are_contiguous_and_disjoint(fractions, sizes):
    ids = torch.arange(100)
    splits = split_ids(ids, fractions)
    parts = [p for p in (splits.train, splits.val, splits.test) if p is not None]
    assert [len(p) for p in parts] == sizes
    joined = torch.cat(parts)
    assert torch.equal(joined, ids[: len(joined)])  # in order, no gap, no overlap
    stops = [stop for _, stop in splits.ranges.values()]
    starts = [start for start, _ in splits.ranges.values()]
    assert starts[1:] == stops[:-1]


def test_get_names_a_missing_split():
    splits = split_ids(torch.arange(100), (0.9, 0.1))
    assert torch.equal(splits.get("val"), torch.arange(90, 100))
    with pytest.raises(DataError, match="there is no test split"):
        splits.get("test")
    with pytest.raises(ConfigError, match="split must be one of"):
        splits.get("dev")


@pytest.mark.parametrize(
    "fractions, error, message",
    [((0.9, 0.2), ConfigError, "sum to at most 1"), ((0.9, 0.0), ConfigError, "must be > 0"),
     ((), ConfigError, "1 to 3"), ((0.5,) * 4, ConfigError, "1 to 3"),
     ((0.95, 0.01, 0.04), DataError, "the val split \\(fraction 0.01 of 50 tokens\\) is empty")],
)  # fmt: skip
def test_bad_fractions(fractions, error, message):
    with pytest.raises(error, match=message):
        split_ids(torch.arange(50), fractions)


def test_a_split_too_short_for_one_batch_is_named():
    splits = split_ids(torch.arange(1000), (0.95, 0.05))
    splits.check_batchable(4, 5)  # val has 50 ≥ 4·5 + 5 + 1
    with pytest.raises(DataError, match="the val split has 50 tokens.*at least 64"):
        splits.check_batchable(8, 7)


def test_seed_splits_hold_out_the_end_of_the_book(shared_data):
    corpus = load_corpus("timemachine")
    n = len(corpus)
    splits = seed_splits(corpus.ids, max_tokens=10_000)
    assert torch.equal(splits.train, corpus.ids[:10_000])
    assert splits.ranges == {"train": (0, 10_000), "val": (n - 17_058, n)}
    assert torch.equal(splits.val, corpus.ids[n - 17_058 :]) and splits.test is None


def test_seed_splits_never_overlap_training():
    ids = torch.arange(100)
    assert seed_splits(ids, max_tokens=95).ranges == {"train": (0, 95), "val": (95, 100)}
    assert seed_splits(ids, max_tokens=-1).ranges == {"train": (0, 90), "val": (90, 100)}
    with pytest.raises(DataError, match="nothing is left for validation.*smaller --max-tokens"):
        seed_splits(ids, max_tokens=100)
    with pytest.raises(ConfigError, match="val_fraction"):
        seed_splits(ids, val_fraction=1.0)
