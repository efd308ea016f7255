"""Memory estimates, so that grulm refuses a size it cannot hold before allocating it.

A 1×100000 GRU or an evaluation batch of 10⁸ streams does not fail cleanly by itself: the
allocation either raises deep inside PyTorch or, worse, succeeds and grows until the machine
swaps or the kernel kills the process. :func:`check_fits` compares an estimate with
:func:`available_bytes` first and refuses with one line.

The estimates count float32 tensors (what grulm trains and evaluates in) and are ESTIMATES:
they follow what the backends allocate (see :func:`training_bytes`), take the largest of the
backends where they differ, and add :data:`MARGIN` for what they do not model (allocator
slack, small temporaries). They err high by a modest margin: ``tests/test_memory.py`` checks
them against the tensors a real step keeps. What they cannot bound is the allocator's share
of a process's resident size, which varies from run to run: glibc's heap can hold up to about
twice the live bytes when a backend makes many small tensors per time step. The ``cpu``
backend's kernels keep their freed large buffers (1 MiB and up) for the next call of the same
size, at most 1 GiB of them (``csrc/block_pool.h``): in a training loop those are the next
step's own buffers, but after a change of shapes (from training to evaluation) up to that much
can stay cached, unused, until newer freed blocks push them out.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from grulm.cells import NAMES
from grulm.errors import ConfigError
from grulm.model import GRUConfig, parameter_shapes
from grulm.optim import OPTIMIZERS

FLOAT_BYTES = 4  # float32
ID_BYTES = 8  # int64 token ids
MARGIN = 1.25  # what the estimates add for allocator slack and uncounted temporaries
SAFE_FRACTION = 0.8  # the share of the available memory a command may plan to use

# Copies of the parameters an optimiser keeps: Adam's two moments; plain SGD none.
OPTIMIZER_STATE = {"sgd": 0, "adam": 2, "adamw": 2}  # the names of grulm.optim.OPTIMIZERS

# Floats per token, per hidden unit, that ONE layer keeps for backward, per cell. GRU: the
# reference backend saves R, Z, R ⊙ H, H~, 1 − Z and the new H at every step, and stacks the
# outputs (7); the cpu backend saves the outputs, the gates [R, Z, H~] and R ⊙ h (or
# h W_hn + b_hn) (5), plus, above layer 0, the projected inputs x W_ih^T (3): 8, the larger
# (an ablated GRU keeps less). RNN: H per step, the outputs, the projected inputs. LSTM:
# what nn.LSTM's CPU kernel keeps, the most (the four gates, c, tanh(c), h per step, the
# projected inputs, the outputs: 18 measured with some slack). minGRU: the scan's (B, T, H)
# intermediates (log Z, log(1 − Z), log A and its exponential, log g(H~) and its branches,
# the logcumsumexp and its exponential, the outputs) and the projected inputs (2).
SAVED_PER_LAYER = {"gru": 8, "rnn": 3, "lstm": 18, "mingru": 12}
# Floats per token, per hidden unit, that backward needs at once for the layer it is in (not
# per layer): dL/d(x W_ih) and dL/d(h W_hh) (G + G, the cell's G blocks) and the gradient of
# the layer's outputs (1).
BACKWARD_WORKSPACE = {"gru": 7, "rnn": 3, "lstm": 9, "mingru": 6}
# Floats per token, per hidden unit, that a forward without autograd holds while it runs one
# layer: the projected inputs (G), the outputs (1) and the layer below's (1); the GRU's cpu
# backend computes what backward would need even when nobody asks (gates 3, extra 1); the
# minGRU's scan holds its intermediates (6).
INFERENCE_PER_LAYER = {"gru": 9, "rnn": 3, "lstm": 6, "mingru": 10}
# Floats per token, per vocabulary entry: training keeps the logits' log-softmax (or the cpu
# backend's probabilities) for backward, backward makes two gradients of that size, and the
# logits and a temporary of the loss live beside them for a moment (a process's resident
# memory grows by up to seven such copies for a large vocabulary).
TRAINING_HEAD = 7
INFERENCE_HEAD = 2  # the logits and their log-softmax
# Bytes per generated token while the whole text is kept (grulm generate without --stream):
# the int64 ids, their Python list, the list of pieces and the joined text, with slack.
BYTES_PER_GENERATED_TOKEN = 64
# Floats per sequence, per vocabulary entry, while decoding one step: logits, Gumbel noise,
# the masked and scaled copies, the top-k/top-p sort; beam search's float64 log-probabilities
# and candidates (2 × 2).
DECODING_HEAD = 8


def parameter_count(config: GRUConfig) -> int:
    """Numbers in a :class:`~grulm.model.GRULM` of this config (parameters and the zero
    ``bias_hh`` buffers; see :func:`grulm.model.parameter_shapes`)."""
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())


def parameter_bytes(config: GRUConfig) -> int:
    """Bytes the model's float32 parameters take (what loading a checkpoint allocates)."""
    return FLOAT_BYTES * parameter_count(config)


def training_bytes(config: GRUConfig, batch_size: int, num_steps: int, optimizer: str) -> int:
    """Estimated peak bytes of training ``config`` on batches of ``batch_size`` × ``num_steps``.

    What it counts, in float32 (P parameters, M = B·T tokens per batch, L layers of H units,
    V tokens in the vocabulary, I the width of layer 0's input):

    - the parameters, their gradients, the optimiser's state (``sgd`` 0, ``adam``/``adamw`` 2
      copies) and one copy for the optimiser step's and clipping's temporaries: (3 + s)·P;
    - the activations saved for backward, :data:`SAVED_PER_LAYER`·M·L·H, and backward's
      workspace for the layer it is in, :data:`BACKWARD_WORKSPACE`·M·H (both by cell);
    - the head: :data:`TRAINING_HEAD`·M·V (log-softmax kept, two gradients of that size,
      the logits and temporaries);
    - the input: layer 0's gathered table ``W_ih^T`` and its gradient (2·G·H·I, G the cell's
      blocks); the float one-hot input PyTorch's kernels are handed (M·V) where the
      ``torch`` backend may run; an embedding's
      output (M·I); the (B, T) int64 inputs and targets;

    then adds :data:`MARGIN`. The result errs high, by up to about 2×, never low.

    Raises:
        ConfigError: an unknown optimiser or a size that is not a positive integer.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    _check_sizes(batch_size, num_steps)
    H, L, V, cell = config.hidden_size, config.num_layers, config.vocab_size, config.cell
    G, tokens = config.layout().rows, batch_size * num_steps
    floats = (
        (3 + OPTIMIZER_STATE[optimizer]) * parameter_count(config)
        + tokens * (SAVED_PER_LAYER[cell] * L + BACKWARD_WORKSPACE[cell]) * H
        + tokens * TRAINING_HEAD * V
        + 2 * G * H * config.input_size
        + tokens * _input_width(config)
        + 4 * L * batch_size * H  # the state carried between batches, and the final one
    )
    return math.ceil(MARGIN * (FLOAT_BYTES * floats + 2 * ID_BYTES * tokens))


def inference_bytes(config: GRUConfig, batch_size: int, num_steps: int) -> int:
    """Estimated peak bytes of running ``config`` without autograd on ``batch_size`` sequences,
    ``num_steps`` tokens per call (evaluation; for generation see :func:`generation_bytes`).

    The parameters; one layer's forward at a time, :data:`INFERENCE_PER_LAYER`·M·H (by
    cell); the logits
    and their log-softmax, :data:`INFERENCE_HEAD`·M·V; the input as in :func:`training_bytes`;
    the carried state; then :data:`MARGIN`.

    Raises:
        ConfigError: a size that is not a positive integer.
    """
    _check_sizes(batch_size, num_steps)
    H, L, V = config.hidden_size, config.num_layers, config.vocab_size
    tokens = batch_size * num_steps
    floats = (
        parameter_count(config)
        + tokens * INFERENCE_PER_LAYER[config.cell] * H
        + tokens * INFERENCE_HEAD * V
        + config.layout().rows * H * config.input_size
        + tokens * _input_width(config)
        + 4 * L * batch_size * H  # the state (an LSTM's h and c), in and out
    )
    return math.ceil(MARGIN * (FLOAT_BYTES * floats + 2 * ID_BYTES * tokens))


def generation_bytes(
    config: GRUConfig, batch_size: int, max_new: int, *, keep_text: bool = True
) -> int:
    """Estimated peak bytes of generating ``max_new`` tokens for ``batch_size`` sequences.

    ``batch_size`` is the number of sequences decoded together: the samples, or the beam
    width for beam search. The model's weights (P; the step decoder reads them in place); per
    sequence the states and a step's gate inputs (L·8H) and :data:`DECODING_HEAD`·V for the
    logits and their filtered, noisy or float64 copies; and, unless the text is streamed
    (``keep_text=False``), :data:`BYTES_PER_GENERATED_TOKEN` per generated token; then
    :data:`MARGIN`. The prefix's warm-up runs one sequence and is bounded by the prime file.

    Raises:
        ConfigError: ``batch_size`` < 1.
    """
    _check_sizes(batch_size, 1)
    H, L, V = config.hidden_size, config.num_layers, config.vocab_size
    floats = (
        parameter_count(config)
        + batch_size * (8 * L * H + DECODING_HEAD * V)
    )
    text = BYTES_PER_GENERATED_TOKEN * batch_size * max_new if keep_text else 0
    return math.ceil(MARGIN * (FLOAT_BYTES * floats + text))


def _input_width(config: GRUConfig) -> int:
    """Floats per token of layer 0's input as a tensor: an embedding's output, or the float
    one-hot vectors PyTorch's kernels are handed where the ``torch`` backend may run them
    (nn.GRU for a reset-after GRU, nn.RNN, nn.LSTM; minGRU's scan gathers rows)."""
    if config.input_kind == "embedding":
        return config.input_size
    kernel = config.cell in ("rnn", "lstm") or (
        config.cell == "gru" and config.variant == "reset_after" and config.gates == "both")
    if kernel and config.backend in ("auto", "torch"):
        return config.vocab_size
    return 0


def _check_sizes(batch_size: int, num_steps: int) -> None:
    for name, value in (("batch size", batch_size), ("number of steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"the {name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------
# What this process may still allocate.

MEMORY_LIMIT_ENV = "GRULM_MEMORY_LIMIT"
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def available_bytes(device: torch.device | str | None = None) -> int:
    """Bytes this process may still allocate, as far as the system says.

    On the CPU (``device`` None or a CPU): the smallest of ``MemAvailable`` in
    ``/proc/meminfo`` (``os.sysconf``'s available pages where there is no ``/proc``), the
    headroom below the memory limit of this process's cgroup and its ancestors (v2
    ``memory.max`` − ``memory.current``, v1 ``memory.limit_in_bytes`` −
    ``memory.usage_in_bytes``, reclaimable inactive file cache counted as free), and the
    headroom below ``RLIMIT_AS`` (``ulimit -v``) if one is set. On a CUDA device: the GPU's
    free memory. The environment variable ``GRULM_MEMORY_LIMIT`` (bytes, or a number with a
    K, M, G or T suffix, binary units) overrides all of these.

    Raises:
        ConfigError: ``GRULM_MEMORY_LIMIT`` is not a size.
    """
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override:
        return _parse_size(override)
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    limits = [_mem_available(), _cgroup_headroom(), _address_space_headroom()]
    return max(0, min(limit for limit in limits if limit is not None))


def check_fits(needed: int, what: str, hint: str, *, device: torch.device | str | None = None
               ) -> None:  # fmt: skip
    """Refuse ``needed`` bytes when they exceed :data:`SAFE_FRACTION` of
    :func:`available_bytes`.

    Args:
        needed: an estimate (:func:`training_bytes`, :func:`inference_bytes` …).
        what: the subject of the message, e.g. ``"a 1×100000 GRU with batch 32 × 35"``
            (:func:`describe`).
        hint: what to do instead, e.g. ``"use a smaller --hidden-size or --batch-size"``.
        device: where the memory is needed (None: the CPU).

    Raises:
        ConfigError: "<what> needs about 121.3 GiB of memory but only 21.0 GiB are available
            (grulm plans to use at most 80% of it); <hint>".
    """
    available = available_bytes(device)
    if needed > SAFE_FRACTION * available:
        kind = "GPU memory" if device is not None and torch.device(device).type == "cuda" \
            else "memory"
        raise ConfigError(
            f"{what} needs about {format_bytes(needed)} of {kind} but only "
            f"{format_bytes(available)} are available (grulm plans to use at most "
            f"{SAFE_FRACTION:.0%} of it); {hint}"
        )


def describe(config: GRUConfig, batch_size: int, num_steps: int) -> str:
    """``"a 1×100000 GRU with batch 32 × 35"``: layers × hidden size, the cell, the batch."""
    return (f"a {config.num_layers}×{config.hidden_size} {NAMES[config.cell]} with batch "
            f"{batch_size:,} × {num_steps:,}")


def format_bytes(n: int) -> str:
    """``"121.3 GiB"``, ``"512.0 MiB"``: binary units, one decimal."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"{MEMORY_LIMIT_ENV} must be a number of bytes, such as 8000000000 "
                          f"or 8G; got {text!r}")
    return int(float(match[1]) * _SUFFIXES[match[2].upper()])


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _read_keyed(path: Path, key: str) -> int | None:
    """The number after ``key`` in a ``key value`` file (``/proc/meminfo``, ``memory.stat``)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, _, value = line.partition(":" if ":" in line else " ")
        if name.strip() == key:
            digits = value.split()
            return int(digits[0]) if digits and digits[0].isdigit() else None
    return None


def _mem_available() -> int | None:
    kib = _read_keyed(PROC / "meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """The least headroom below a memory limit of this process's cgroups (v2 and v1)."""
    try:
        lines = (PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: "0::/path"
            for root in (CGROUP, CGROUP / "unified"):
                if (root / "cgroup.controllers").exists():
                    headrooms += _headrooms(root, path, "memory.max", "memory.current",
                                            "inactive_file")
        elif "memory" in controllers.split(","):
            headrooms += _headrooms(CGROUP / "memory", path, "memory.limit_in_bytes",
                                    "memory.usage_in_bytes", "total_inactive_file")
    return min(headrooms, default=None)


def _headrooms(root: Path, path: str, limit_file: str, usage_file: str, inactive: str
               ) -> list[int]:  # fmt: skip
    """limit − (usage − inactive file cache) for the cgroup at ``path`` and each ancestor
    that is visible under ``root`` and has a limit."""
    directory = root / path.strip("/")
    if not directory.is_dir():  # a path from outside this cgroup namespace
        directory = root
    found = []
    while True:
        limit = _read_int(directory / limit_file)
        usage = _read_int(directory / usage_file)
        if limit is not None and limit < _UNLIMITED and usage is not None:
            reclaimable = _read_keyed(directory / "memory.stat", inactive) or 0
            found.append(limit - max(0, usage - reclaimable))
        if directory == root or root not in directory.parents:
            return found
        directory = directory.parent


def _address_space_headroom() -> int | None:
    """RLIMIT_AS (``ulimit -v``) less this process's current virtual size, if a limit is set."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size_kib = _read_keyed(PROC / "self" / "status", "VmSize")
    return soft - (size_kib or 0) * 1024
