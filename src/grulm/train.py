"""The training loop, with the seed's semantics by default.

One epoch (d2l's ``train_epoch_ch8``): the state starts from zeros at the first batch (at every
batch with random partitioning) and is otherwise carried over, detached; the loss is the mean
cross-entropy over all B·T tokens; the gradients' global L2 norm is clipped to θ; then one
optimiser step. Perplexity is exp of the mean loss over the epoch.

The loop is explicit and keeps the device busy: losses accumulate on the device, clipping and
the optimiser step use PyTorch's multi-tensor (``foreach``) kernels, and the host waits for the
device once per epoch, to read the loss and stop the clock.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.errors import ConfigError
from grulm.model import GRULM

Batches = Iterable[tuple[Tensor, Tensor]]
PARTITIONS = ("sequential", "random")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (saved in every checkpoint). The defaults are the seed experiment's.

    Attributes:
        epochs: passes over the training data.
        batch_size: B, sequences per batch.
        num_steps: T, time steps per sequence.
        lr: SGD learning rate.
        clip: θ, the maximum global gradient norm.
        partition: ``sequential`` (state carried across batches) or ``random``.
        seed: seeds the weights and the data order; the same seed repeats a run exactly.
    """

    epochs: int = 500
    batch_size: int = 32
    num_steps: int = 35
    lr: float = 1.0
    clip: float = 1.0
    partition: str = "sequential"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"partition must be one of {', '.join(PARTITIONS)}; got {self.partition!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured.

    Attributes:
        epoch: 1-based epoch number.
        loss: mean cross-entropy per token, in nats.
        perplexity: ``exp(loss)``.
        tokens: tokens trained on.
        seconds: wall-clock time, device-synchronised.
    """

    epoch: int
    loss: float
    perplexity: float
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def clip_gradients(parameters: list[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients by ``min(1, max_norm / norm)``, norm being their global L2 norm.

    The seed's ``grad_clipping`` without its host sync: the comparison happens on the device
    and the scale is applied with one multi-tensor kernel.

    Returns:
        The norm before clipping, a 0-dim tensor on the device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / norm, max=1.0))
    return norm


def train_epoch(
    model: GRULM,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    clip: float,
    fresh_state_every_batch: bool,
) -> tuple[Tensor, int]:
    """Train on every batch once, in the seed's way.

    Args:
        batches: (X, Y) pairs of (B, T) int64 token ids on the model's device; Y is X shifted
            by one token.
        clip: θ for :func:`clip_gradients`.
        fresh_state_every_batch: start each batch from the zero state (random partitioning)
            instead of carrying the previous batch's final state.

    Returns:
        The summed token loss (a 0-dim tensor on the device, not yet synchronised) and the
        number of tokens.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    state = None
    loss_sum = torch.zeros((), device=model.head.weight.device)
    num_tokens = 0
    model.train()
    for X, Y in batches:
        if state is None or fresh_state_every_batch:
            state = model.begin_state(X.shape[0])
        else:
            state = state.detach()  # carry the state, not its history
        logits, state = model(X, state)  # (B, T, V), (L, B, H)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(parameters, clip)
        optimizer.step()
        loss_sum += loss.detach() * Y.numel()
        num_tokens += Y.numel()
    return loss_sum, num_tokens


def make_optimizer(model: GRULM, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the configured learning rate, as the seed; one multi-tensor kernel per step."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, foreach=True)


def fit(
    model: GRULM,
    make_batches: Callable[[random.Random], Iterator[tuple[Tensor, Tensor]]],
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` for ``config.epochs`` epochs.

    Args:
        make_batches: builds one epoch's (X, Y) batches from the data-order RNG (seeded with
            ``config.seed``), already on the model's device.
        on_epoch: called after every epoch (progress bars, samples, plots live there).

    Returns:
        The statistics of every epoch.
    """
    rng = random.Random(config.seed)
    optimizer = make_optimizer(model, config)
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss_sum, num_tokens = train_epoch(
            model,
            make_batches(rng),
            optimizer,
            clip=config.clip,
            fresh_state_every_batch=config.partition == "random",
        )
        loss = loss_sum.item() / num_tokens  # the one host sync: waits for the whole epoch
        stats = EpochStats(epoch, loss, math.exp(loss), num_tokens, time.perf_counter() - start)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return history

