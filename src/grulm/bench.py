"""Training throughput, side by side: the seed's two models in the seed's loop, and grulm.

For one configuration (:class:`BenchConfig`), every contender trains on the same random
(B, T) token batches with SGD and gradient clipping:

- ``textbook``: the seed's from-scratch GRU (:func:`grulm.textbook.gru_model`) in the seed's
  loop (:func:`grulm.textbook.train_epoch`);
- ``nn.GRU``: the seed's concise model (``nn.GRU`` over float one-hot inputs; an
  ``nn.Embedding`` in front when the config asks for one) in the same loop: the baseline;
- ``grulm/<backend>``: :class:`grulm.model.GRULM` in grulm's training loop
  (:func:`grulm.train.fit`, one epoch of the round's batches per round), one per registered
  backend that supports the config's cell, gates and variant on the device. With another
  cell than the GRU, the ratios still compare with the seed's ``nn.GRU``.

Honest timing (STYLE 10): a warm-up, then ``repeats`` rounds in which every contender runs
``batches`` training steps in turn (so background load hits all of them alike), the device
synchronised before the clock stops, and the median of the rounds reported. Nothing here
prints: :mod:`grulm.cli.bench` renders the table and the JSON line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from grulm import backends, textbook
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
    """

    contender: str
    tokens_per_s: float | None = None
    rounds: list[float] = field(default_factory=list)
    skipped: str | None = None
    ratio: float | None = None


@dataclass
class Report:
    """Everything one configuration's run measured, with the conditions it ran under."""

    config: BenchConfig
    results: list[Result]
    threads: int
    device: str
    warmup: int
    repeats: int
    batches: int

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "threads": self.threads,
            "device": self.device,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batches": self.batches,
            "results": [asdict(r) for r in self.results],
        }


# A step function trains on a list of (X, Y) batches and returns once the device is done.
Runner = Callable[[list[tuple[torch.Tensor, torch.Tensor]]], None]


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

    def run(batches):
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

    def run(batches):
        epoch = _FixedBatches(batches)
        # A fresh one-epoch run each round; fit reads the epoch's loss, so it returns once
        # the device is done.
        fit(model, lambda rng: epoch, train_config, optimizer=update)

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
) -> Report:
    """Measure training tokens/s of every contender on ``config``.

    Args:
        batches: training steps per round (each round is timed as a whole).
        warmup: untimed rounds per contender first.
        repeats: timed rounds; contenders take turns within each round.
        only: contender names to run (the baseline always runs); None for all.

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
    for runner in runners.values():
        for _ in range(warmup):
            runner(data)
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(data)
            rounds[name].append(batches * config.tokens_per_batch / (time.perf_counter() - start))
    results = []
    for name, runner in found.items():
        if isinstance(runner, str):
            results.append(Result(name, skipped=runner))
        elif name in rounds:
            results.append(Result(name, statistics.median(rounds[name]), rounds[name]))
    baseline = next(r.tokens_per_s for r in results if r.contender == BASELINE)
    for result in results:
        if result.tokens_per_s is not None:
            result.ratio = result.tokens_per_s / baseline
    return Report(config, results, torch.get_num_threads(), str(device), warmup, repeats, batches)
