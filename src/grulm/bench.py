"""Training throughput, side by side: the seed's two models in the seed's loop, and grulm.

For one configuration (:class:`BenchConfig`), every contender trains on the same random
(B, T) token batches with SGD and gradient clipping:

- ``textbook``: the seed's from-scratch GRU (:func:`grulm.textbook.gru_model`) in the seed's
  loop (:func:`grulm.textbook.train_epoch`);
- ``nn.GRU``: the seed's concise model (``nn.GRU`` over float one-hot inputs; an
  ``nn.Embedding`` in front when the config asks for one) in the same loop: the baseline;
- ``grulm/<backend>``: :class:`grulm.model.GRULM` in grulm's training loop
  (:func:`grulm.train.fit` with the step :func:`grulm.train.build_step` makes, as ``grulm
  train`` runs it, in the process's thread count), one per registered backend that supports
  the config's cell, gates and variant on the device. With another cell than the GRU, the
  ratios still compare with the seed's ``nn.GRU``.

An epoch is one pass over the same ``batches`` fixed batches, the state carried from batch to
batch. Honest timing (STYLE 10): a warm-up, then ``repeats`` rounds in which every contender
trains in turn (so background load hits all of them alike), the device synchronised before
the clock stops, and the median of the rounds reported. A round is as many whole epochs as
fill ``min_round_seconds`` (sized from the last warm-up epoch), like a stretch of a training
run: the start of a round (threads waking up, caches refilled after the other contenders)
is then a small part of it, as it is of training, whose epochs follow each other. Nothing
here prints: :mod:`grulm.cli.bench` renders the table and the JSON line.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from grulm import backends, textbook
from grulm.backends import cpu
from grulm.data.batches import EpochBatches
from grulm.model import GRULM, GRUConfig
from grulm.train import TrainConfig, build_step, fit

BASELINE = "nn.GRU"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmarked shape.

    Attributes:
        name: a label for the table.
        vocab_size, hidden_size, num_layers, variant, input_kind, cell, gates: the model, as
            in :class:`grulm.model.GRUConfig` (the embedding is ``hidden_size`` wide).
        batch_size, num_steps: B and T of every batch.
        lr, clip: SGD learning rate and the gradient-norm bound θ.
        precision: of the grulm contenders' recurrent products (``float32`` or ``bf16``,
            :mod:`grulm.backends.precision`); the seed's baselines always run in float32.
    """

    name: str
    vocab_size: int = 28
    hidden_size: int = 256
    num_layers: int = 1
    variant: str = "reset_before"
    input_kind: str = "onehot"
    batch_size: int = 32
    num_steps: int = 35
    lr: float = 1.0
    clip: float = 1.0
    cell: str = "gru"
    gates: str = "both"
    precision: str = "float32"

    def __post_init__(self) -> None:
        self.model_config("auto")  # a known cell, and gates only on a GRU

    def model_config(self, backend: str) -> GRUConfig:
        return GRUConfig(self.vocab_size, self.hidden_size, num_layers=self.num_layers,
                         variant=self.variant, input_kind=self.input_kind, backend=backend,
                         cell=self.cell, gates=self.gates, precision=self.precision)

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.num_steps


SEED = BenchConfig("seed")
LARGE = BenchConfig(
    "large", hidden_size=512, num_layers=2, input_kind="embedding", batch_size=64, num_steps=100
)


@dataclass
class Result:
    """One contender's measurement.

    Attributes:
        contender: its name (``textbook``, ``nn.GRU``, ``grulm/<backend>``).
        tokens_per_s: the median over rounds, or None where it was skipped.
        rounds: tokens/s of every round.
        skipped: why it did not run, if it did not.
        ratio: ``tokens_per_s`` over the baseline's (``nn.GRU``) in the same run.
        epochs_per_round: epochs of ``batches`` steps in each of its timed rounds.
    """

    contender: str
    tokens_per_s: float | None = None
    rounds: list[float] = field(default_factory=list)
    skipped: str | None = None
    ratio: float | None = None
    epochs_per_round: int | None = None


@dataclass
class Report:
    """Everything one configuration's run measured, with the conditions it ran under.

    Attributes:
        batches: training steps per epoch; min_round_seconds: what a round lasts at least.
        isa: the instruction-set path of the ``cpu`` backend's kernels in this process
            (:func:`grulm.backends.cpu.isa`), or None where that backend cannot load.
    """

    config: BenchConfig
    results: list[Result]
    threads: int
    device: str
    warmup: int
    repeats: int
    batches: int
    min_round_seconds: float
    isa: str | None

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "threads": self.threads,
            "device": self.device,
            "isa": self.isa,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batches": self.batches,
            "min_round_seconds": self.min_round_seconds,
            "results": [asdict(r) for r in self.results],
        }


# A runner trains ``epochs`` epochs over a list of (X, Y) batches (the state carried from
# batch to batch, from zeros at each epoch's start) and returns once the device is done.
Runner = Callable[[list[tuple[torch.Tensor, torch.Tensor]], int], None]


class EmbeddingRNNModel(textbook.RNNModel):
    """The seed's concise model with an ``nn.Embedding`` instead of float one-hot inputs."""

    def __init__(self, rnn_layer: nn.GRU, vocab_size: int) -> None:
        super().__init__(rnn_layer, vocab_size)
        self.embedding = nn.Embedding(vocab_size, rnn_layer.input_size)

    def forward(self, inputs, state):
        Y, state = self.rnn(self.embedding(inputs.T), state)  # (T, B, H)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state


def _seed_loop_runner(net, device: torch.device, lr: float) -> Runner:
    updater = textbook.make_updater(net, lr)
    loss = nn.CrossEntropyLoss()

    def run(batches, epochs):
        for _ in range(epochs):
            textbook.train_epoch(net, batches, loss, updater, device, use_random_iter=False)
        _synchronize(device)  # the seed's loop already waits for every loss; for symmetry

    return run


def _textbook_runner(config: BenchConfig, device: torch.device) -> Runner | str:
    if config.num_layers != 1 or config.input_kind != "onehot":
        return "the seed's from-scratch model is one layer with one-hot input"
    if (config.variant, config.cell, config.gates) != ("reset_before", "gru", "both"):
        return "the seed's from-scratch model is a reset-before GRU with both gates"
    net = textbook.gru_model(config.vocab_size, config.hidden_size, device)
    return _seed_loop_runner(net, device, config.lr)


def _nn_gru_runner(config: BenchConfig, device: torch.device) -> Runner:
    if config.input_kind == "onehot":
        rnn = nn.GRU(config.vocab_size, config.hidden_size, config.num_layers)
        net = textbook.RNNModel(rnn, config.vocab_size)
    else:
        rnn = nn.GRU(config.hidden_size, config.hidden_size, config.num_layers)
        net = EmbeddingRNNModel(rnn, config.vocab_size)
    return _seed_loop_runner(net.to(device), device, config.lr)


def _grulm_runner(config: BenchConfig, device: torch.device, backend: str) -> Runner:
    model = GRULM(config.model_config(backend)).to(device)
    # The seed's training: plain SGD, clipping, the state carried from batch to batch.
    train_config = TrainConfig(epochs=1, batch_size=config.batch_size,
                               num_steps=config.num_steps, lr=config.lr, clip=config.clip)
    update = build_step(model, train_config)

    def run(batches, epochs):
        epoch = _FixedBatches(batches)
        # A fresh run of `epochs` epochs each round; fit reads every epoch's loss, so it
        # returns once the device is done.
        fit(model, lambda rng: epoch, dataclasses.replace(train_config, epochs=epochs),
            optimizer=update)

    return run


class _FixedBatches(EpochBatches):
    """The round's batches as an epoch, in order, whatever offset the data RNG would draw."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches = batches
        self.batch_size, self.num_steps = batches[0][0].shape
        self.offset = 0

    def __len__(self) -> int:
        return len(self._batches)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_index(index)
        return self._batches[index]


def contenders(config: BenchConfig, device: torch.device) -> dict[str, Runner | str]:
    """Every contender for ``config``: a runner, or the reason it cannot run."""
    found: dict[str, Runner | str] = {
        "textbook": _textbook_runner(config, device),
        BASELINE: _nn_gru_runner(config, device),
    }
    for name, backend in backends.BACKENDS.items():
        reason = backend.unsupported(config.variant, device.type, cell=config.cell,
                                     gates=config.gates, precision=config.precision)
        found[f"grulm/{name}"] = reason or _grulm_runner(config, device, name)
    return found


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(config: BenchConfig, count: int, device: torch.device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    shape = (config.batch_size, config.num_steps)
    return [
        (torch.randint(0, config.vocab_size, shape, generator=generator).to(device),
         torch.randint(0, config.vocab_size, shape, generator=generator).to(device))
        for _ in range(count)
    ]


def run(
    config: BenchConfig,
    *,
    device: torch.device | str = "cpu",
    batches: int = 10,
    warmup: int = 1,
    repeats: int = 5,
    only: list[str] | None = None,
    seed: int = 0,
    min_round_seconds: float = 1.0,
) -> Report:
    """Measure training tokens/s of every contender on ``config``.

    Args:
        batches: training steps per epoch.
        warmup: untimed epochs per contender first (at least one when ``min_round_seconds``
            is positive: the last one sizes the rounds).
        repeats: timed rounds; contenders take turns within each round.
        only: contender names to run (the baseline always runs); None for all.
        min_round_seconds: each contender's round is the fewest whole epochs expected to
            last this long (each timed as a whole); 0: one epoch per round.

    Returns:
        A :class:`Report` with the median tokens/s and the ratio to ``nn.GRU`` of each.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    found = contenders(config, device)
    runners = {
        name: runner for name, runner in found.items()
        if not isinstance(runner, str) and (only is None or name in only or name == BASELINE)
    }
    data = _batches(config, batches, device, seed)
    epochs = {name: _warm_up(runner, data, warmup, min_round_seconds)
              for name, runner in runners.items()}
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(data, epochs[name])
            seconds = time.perf_counter() - start
            rounds[name].append(epochs[name] * batches * config.tokens_per_batch / seconds)
    results = []
    for name, runner in found.items():
        if isinstance(runner, str):
            results.append(Result(name, skipped=runner))
        elif name in rounds:
            results.append(Result(name, statistics.median(rounds[name]), rounds[name],
                                  epochs_per_round=epochs[name]))
    baseline = next(r.tokens_per_s for r in results if r.contender == BASELINE)
    for result in results:
        if result.tokens_per_s is not None:
            result.ratio = result.tokens_per_s / baseline
    return Report(config, results, torch.get_num_threads(), str(device), warmup, repeats,
                  batches, min_round_seconds, _cpu_isa())


def _warm_up(runner: Runner, data, warmup: int, min_round_seconds: float) -> int:
    """Run the untimed epochs; return the epochs per round that fill ``min_round_seconds``
    at the pace of the last of them (1 when it is 0)."""
    seconds = None
    for _ in range(max(warmup, 1 if min_round_seconds > 0 else 0)):
        start = time.perf_counter()
        runner(data, 1)
        seconds = time.perf_counter() - start
    if min_round_seconds <= 0:
        return 1
    return max(1, math.ceil(min_round_seconds / max(seconds, 1e-9)))


def _cpu_isa() -> str | None:
    """The ``cpu`` backend's instruction-set path, or None where it cannot load."""
    return None if cpu.unavailable() is not None else cpu.isa()
