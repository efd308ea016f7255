"""What a training step costs in arithmetic, and whether one fits in a time budget.

A time budget (``max_time``) is checked between steps, and a step cannot be cut short, so a
model whose single step outlasts the budget would overrun it many times over (a 1000-layer
GRU takes minutes a step on two cores). :func:`check_step_fits_time` refuses such a run
before anything is allocated: it counts a step's multiply-adds and divides by the throughput
of a matrix product of the step's own shapes, timed here in a few milliseconds. That is a
lower bound on the real step (which adds elementwise work and per-step overhead), so a run it
refuses could not have finished one step in time.
"""

from __future__ import annotations

import time

import torch

from grulm.cells import NAMES
from grulm.errors import ConfigError
from grulm.model import GRUConfig

PROBE_SECONDS = 0.02  # how long the throughput probe runs


def step_flops(config: GRUConfig, batch_size: int, num_steps: int) -> float:
    """Floating-point operations of one training step (forward and backward), counted.

    Per token and layer the gates' products are ``G·H × (I + H)`` multiply-adds, G the cell's
    blocks (:mod:`grulm.cells`: a GRU 3, fewer with gates ablated, an RNN 1, an LSTM 4); a
    minGRU's gates read only the input, ``2H × I``. One-hot input drops the input product
    (a row gather replaces it); the head is ``V × H``; the backward pass costs twice the
    forward.
    """
    H = config.hidden_size
    layout = config.layout()
    recurrent_width = H if layout.recurrent else 0
    per_token = 0
    for layer in range(config.num_layers):
        if layer > 0:
            input_width = H
        elif config.input_kind == "embedding":
            input_width = config.embedding_size or H
        else:
            input_width = 0  # one-hot: a row gather, no product
        per_token += layout.rows * H * (input_width + recurrent_width)
    per_token += config.vocab_size * H
    return 3 * 2 * per_token * batch_size * num_steps


def matmul_flops_per_second(batch_size: int, hidden_size: int, device: torch.device) -> float:
    """Throughput of ``(B, H) @ (H, 3H)`` products on ``device``, in FLOP/s, at best.

    On a CPU one thread is timed and the result multiplied by the thread count: a pool of
    threads on a busy machine waits for its slowest member, and what is wanted here is what
    the hardware can do. The fastest of the products timed in ``PROBE_SECONDS`` counts.
    """
    n, k, m = batch_size, hidden_size, 3 * hidden_size
    a = torch.randn(n, k, device=device)
    b = torch.randn(k, m, device=device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        fastest, started = float("inf"), time.perf_counter()
        while time.perf_counter() - started < PROBE_SECONDS:
            call = time.perf_counter()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            fastest = min(fastest, time.perf_counter() - call)
    finally:
        torch.set_num_threads(threads)
    scale = threads if device.type == "cpu" else 1
    return 2.0 * n * k * m * scale / max(fastest, 1e-9)


def check_step_fits_time(
    config: GRUConfig, batch_size: int, num_steps: int, max_time: float | None,
    device: torch.device,
) -> None:  # fmt: skip
    """Refuse a run whose one step cannot finish within ``max_time`` seconds.

    Raises:
        ConfigError: with the step's estimated minimum duration and what to change.
    """
    if max_time is None:
        return
    flops = step_flops(config, batch_size, num_steps)
    hidden = min(config.hidden_size, 4096)  # the probe's matrices stay small
    seconds = flops / matmul_flops_per_second(batch_size, hidden, device)
    if seconds > max_time:
        raise ConfigError(
            f"one training step of a {config.num_layers}×{config.hidden_size} "
            f"{NAMES[config.cell]} with batch "
            f"{batch_size} × {num_steps} takes at least {seconds:.0f} s here "
            f"({flops / 1e12:.2f} TFLOP), more than --max-time {max_time:g}: no step could "
            "finish in time; raise --max-time or use a smaller --num-layers, --hidden-size, "
            "--batch-size or --num-steps"
        )
