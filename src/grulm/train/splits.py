"""The token splits a run trains and validates on (recorded in its checkpoint)."""

from __future__ import annotations

from torch import Tensor

from grulm.data.splits import Splits, seed_splits, split_ids


def training_splits(ids: Tensor, max_tokens: int = 0,
                    fractions: list[float] | None = None) -> Splits:  # fmt: skip
    """The splits a run trains and validates on.

    ``fractions`` None: the seed's split (:func:`grulm.data.splits.seed_splits`): training
    from the start, validation = the last 10 % of ``ids`` (N,). Otherwise contiguous
    train/val[/test] fractions (:func:`grulm.data.splits.split_ids`). ``max_tokens > 0``
    then keeps only the first ``max_tokens`` tokens of the training split.
    """
    if fractions is None:
        return seed_splits(ids, max_tokens=max_tokens)
    splits = split_ids(ids, fractions)
    if max_tokens > 0 and len(splits.train) > max_tokens:
        start = splits.ranges["train"][0]
        ranges = {**splits.ranges, "train": (start, start + max_tokens)}
        splits = Splits(splits.train[:max_tokens], splits.val, splits.test, ranges)
    return splits
