"""The recurrent language model: token ids in, next-token logits out.

``GRULM`` stacks recurrent layers of one cell — the GRU by default (either variant, its gates
ablated or not), or a plain RNN, an LSTM or a minGRU (see :mod:`grulm.cells` and
:mod:`grulm.backends.reference`) — between a one-hot or embedding input and a linear output
head. Its recurrent parameters use PyTorch's names and layout under the cell's name
(``gru.weight_ih_l{k}`` (3H×I), ``gru.weight_hh_l{k}`` (3H×H), ``gru.bias_ih_l{k}``,
``gru.bias_hh_l{k}``, gates r, z, n; ``lstm.weight_ih_l{k}`` (4H×I), …), shared by every
backend; :mod:`grulm.textbook` converts a GRU to and from the textbook's ``W_xz … b_q``, and
:mod:`grulm.convert` any stack to and from ``torch.nn.GRU``/``RNN``/``LSTM``.

Public tensors are batch-first: inputs (B, T) int64, logits (B, T, V), state (L, B, H) (an
LSTM's: the pair (h, c), each (L, B, H)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulm import backends
from grulm.backends.precision import check_precision
from grulm.backends.stack import run_layers
from grulm.cells import CellLayout, State, cell_label, cell_layout, layer_options
from grulm.errors import ConfigError

VARIANTS = ("reset_before", "reset_after")
INPUT_KINDS = ("onehot", "embedding")
INITS = ("d2l", "torch")


@dataclass(frozen=True)
class GRUConfig:
    """Everything that fixes a model's architecture (saved in every checkpoint).

    Attributes:
        vocab_size: number of tokens, ``<unk>`` included.
        hidden_size: H, the state size of every layer.
        num_layers: stacked GRU layers.
        variant: ``reset_before`` (d2l, the default) or ``reset_after`` (cuDNN, nn.GRU).
        input_kind: ``onehot`` (the seed) or ``embedding`` (a learned table of ``embedding_size``).
        embedding_size: width of the embedding table; defaults to ``hidden_size``.
        dropout: dropout on the outputs of every layer but the last (training only).
        init: ``d2l`` (weights ``randn * 0.01``, biases 0, the seed) or ``torch``
            (nn.GRU's uniform ±1/√H).
        backend: ``auto`` or a name from :func:`grulm.backends.backend_names`.
        cell: ``gru`` (the default), ``rnn``, ``lstm`` or ``mingru`` (:mod:`grulm.cells`);
            ``variant`` only matters for ``gru``.
        gates: a GRU's gates: ``both``; ablated, ``update`` (R ≡ 1), ``reset`` (Z ≡ 0) or
            ``none`` (a plain RNN through the GRU's code). Other cells: ``both``.
        precision: of the recurrent layers' matrix products: ``float32`` (the default) or
            ``bf16`` (bfloat16-rounded operands, float32 accumulation; weights, gradients,
            gates, head and loss stay float32: :mod:`grulm.backends.precision`). Part of how
            a model was trained; a trained model may be evaluated in either.
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 1
    variant: str = "reset_before"
    input_kind: str = "onehot"
    embedding_size: int | None = None
    dropout: float = 0.0
    init: str = "d2l"
    backend: str = "auto"
    cell: str = "gru"
    gates: str = "both"
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.embedding_size is not None and (
            not isinstance(self.embedding_size, int) or self.embedding_size < 1
        ):
            raise ConfigError(
                f"embedding_size must be a positive integer, got {self.embedding_size!r}"
            )
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("input_kind", self.input_kind, INPUT_KINDS)
        _check_choice("init", self.init, INITS)
        _check_choice("backend", self.backend, backends.backend_names())
        self.layout()  # a known cell, and gates only on a GRU
        check_precision(self.precision)
        if self.backend != "auto":
            backend = backends.BACKENDS[self.backend]
            reason = (backend.refuses_cell(self.cell, self.gates)
                      or backend.refuses_precision(self.precision))
            if reason is not None:
                raise ConfigError(reason)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def input_size(self) -> int:
        """The width of layer 0's input: the vocabulary (one-hot) or the embedding."""
        if self.input_kind == "onehot":
            return self.vocab_size
        return self.embedding_size or self.hidden_size

    def layout(self) -> CellLayout:
        """One layer's parameter layout (:func:`grulm.cells.cell_layout`)."""
        return cell_layout(self.cell, self.gates, self.variant)

    @property
    def cell_label(self) -> str:
        """How messages name the cell: ``reset_before GRU``, ``LSTM`` …"""
        return cell_label(self.cell, self.gates, self.variant)

    def to_dict(self) -> dict:
        """The fields as JSON, ``precision`` only when it is not float32: a float32 config is
        written as before precisions existed, and reads so in any grulm."""
        data = asdict(self)
        if self.precision == "float32":
            del data["precision"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GRUConfig:
        """The inverse of :meth:`to_dict`; a field it lacks takes its default (a config saved
        before ``precision`` existed is float32, as it was trained)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class RecurrentStack(nn.Module):
    """The recurrent parameters of L layers of one cell, named and shaped as PyTorch's
    ``nn.GRU``/``nn.RNN``/``nn.LSTM`` (:mod:`grulm.cells`): per layer k ``weight_ih_l{k}``
    (G·H × I), ``weight_hh_l{k}`` (G·H × H), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (G·H,);
    a minGRU has no ``weight_hh``/``bias_hh``.

    ``bias_hh`` is a zero buffer, not a parameter, except in the reset-after GRU: in the
    other cells every hidden bias only adds to ``bias_ih``, and one trainable bias per gate
    is the textbook's (two would double the biases' learning rate).
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, layout: CellLayout
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        rows = layout.rows * hidden_size
        for k in range(num_layers):
            layer_input = input_size if k == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, layer_input))
            )
            if layout.recurrent:
                self.register_parameter(
                    f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size))
                )
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows)))
            if layout.hidden_bias:
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows)))
            elif layout.recurrent:
                self.register_buffer(f"bias_hh_l{k}", torch.zeros(rows))
        self.names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if layout.recurrent \
            else ("weight_ih", "bias_ih")

    def layer(self, k: int) -> tuple[Tensor, ...]:
        """Layer k's ``(weight_ih, weight_hh, bias_ih, bias_hh)`` (a minGRU's ``(weight_ih,
        bias_ih)``)."""
        return tuple(getattr(self, f"{name}_l{k}") for name in self.names)


class GRULM(nn.Module):
    """A character- (or word-) level recurrent language model (a GRU unless ``config.cell``
    says otherwise).

    Args:
        config: the architecture, see :class:`GRUConfig`.
        generator: optional ``torch.Generator`` for the initial weights.
    """

    def __init__(self, config: GRUConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = (
            nn.Embedding(config.vocab_size, config.input_size)
            if config.input_kind == "embedding"
            else None
        )
        # Registered under the cell's name: a GRU's parameters are ``gru.*`` (as ever), an
        # LSTM's ``lstm.*`` …
        self.add_module(
            config.cell,
            RecurrentStack(config.input_size, config.hidden_size, config.num_layers,
                           config.layout()),
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise as ``config.init`` says; embeddings always get N(0, 1) like nn.Embedding."""
        if self.embedding is not None:
            self.embedding.weight.normal_(generator=generator)
        for name, p in [*self.recurrent.named_parameters(), *self.head.named_parameters()]:
            if self.config.init == "d2l":
                if name.startswith("weight"):
                    p.normal_(generator=generator).mul_(0.01)
                else:
                    p.zero_()
            else:
                bound = 1.0 / math.sqrt(self.config.hidden_size)
                p.uniform_(-bound, bound, generator=generator)

    @property
    def recurrent(self) -> RecurrentStack:
        """The recurrent layers (``self.gru``, ``self.lstm`` … by the cell's name)."""
        return getattr(self, self.config.cell)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The zero state, (L, B, H) (an LSTM's: the pair (h, c)), in the parameters' dtype."""
        weight = self.head.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = weight.device if device is None else device
        if self.config.layout().paired_state:
            return tuple(torch.zeros(shape, dtype=weight.dtype, device=device) for _ in "hc")
        return torch.zeros(shape, dtype=weight.dtype, device=device)

    def backend(self, device: torch.device | str | None = None) -> backends.Backend:
        """The backend that runs this model's recurrence on ``device`` (default: its own), in
        the config's precision."""
        device = self.head.weight.device if device is None else device
        config = self.config
        if config.precision != "float32":  # bf16 needs float32 parameters
            return backends.resolve(config.backend, config.variant, device, cell=config.cell,
                                    gates=config.gates, precision=config.precision,
                                    dtype=self.head.weight.dtype)
        return backends.resolve(config.backend, config.variant, device, cell=config.cell,
                                gates=config.gates)

    def set_precision(self, precision: str) -> None:
        """Compute the recurrent products in ``precision`` from now on (the weights are
        float32 either way): e.g. evaluate a bf16-trained model in float32.

        Raises:
            ConfigError: an unknown precision, or one the config's named backend lacks.
        """
        self.config = replace(self.config, precision=precision)

    def forward(self, inputs: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits for the next token at every position.

        Args:
            inputs: (B, T) int64 token ids.
            state: (L, B, H) (an LSTM's: the pair (h, c)), or None for the zero state.

        Returns:
            logits (B, T, V) and the final state, shaped as ``state``.
        """
        x, state = self._recur(inputs, state, self.backend(inputs.device))
        return self.head(x), state

    def loss(
        self, inputs: Tensor, targets: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """The mean next-token cross-entropy over all B·T positions, and the final state.

        The same as ``F.cross_entropy`` of :meth:`forward`'s logits against ``targets``; a
        backend with a fused head (``cpu``) computes it without materialising the logits.

        Args:
            inputs, targets: (B, T) int64 token ids, ``targets`` the tokens that follow.
            state: (L, B, H) (an LSTM's: the pair (h, c)), or None for the zero state.

        Returns:
            The loss (0-dim) and the final state, shaped as ``state``.
        """
        backend = self.backend(inputs.device)
        x, state = self._recur(inputs, state, backend)
        if backend.head_loss is not None:
            return backend.head_loss(x, self.head.weight, self.head.bias, targets), state
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), state

    def _recur(
        self, inputs: Tensor, state: State | None, backend: backends.Backend
    ) -> tuple[Tensor, State]:
        """The last layer's outputs (B, T, H) and the final state."""
        if state is None:
            state = self.begin_state(inputs.shape[0], inputs.device)
        config = self.config
        layers = [list(self.recurrent.layer(k)) for k in range(config.num_layers)]
        if self.embedding is None:
            x = inputs  # (B, T) ids: one-hot input
        elif backend.gathers_token_rows and self.config.vocab_size <= inputs.numel():
            # E[ids] W_ih^T = (E W_ih^T)[ids]: with fewer embeddings than tokens, fold the
            # table into layer 0's input weights, (G·H, V), and feed the ids as one-hot input.
            # The backend gathers rows of it: V·I·G·H multiply-adds instead of B·T·I·G·H.
            # The fold is float32 in every precision: in bf16, layer 0's input projection
            # is then float32 here where the unfolded path rounds E and W_ih.
            x = inputs
            layers[0][0] = F.linear(self.embedding.weight, layers[0][0]).T
        else:
            x = self.embedding(inputs)  # (B, T, E)
        options = layer_options(config.cell, config.gates, config.variant, config.precision)
        return run_layers(backend.layer(config.cell), x, state, layers, options,
                          dropout=config.dropout, training=self.training)


def parameter_shapes(config: GRUConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``GRULM(config).state_dict()``, buffers included, unbuilt.

    Lets a checkpoint be checked against its weights file before any memory is allocated: a
    config edited to ``hidden_size: 100000`` fails on shapes instead of building a 120 GB model.

    Returns:
        ``{name: shape}``: ``embedding.weight`` (V, E) for embedding input; per layer k, under
        the cell's name c, ``c.weight_ih_l{k}`` (G·H, E for k = 0 else H),
        ``c.weight_hh_l{k}`` (G·H, H), ``c.bias_ih_l{k}`` (G·H,), ``c.bias_hh_l{k}`` (G·H,)
        (a zero buffer but in the reset-after GRU; a minGRU has neither ``_hh``); G the
        cell's blocks (:mod:`grulm.cells`); ``head.weight`` (V, H), ``head.bias`` (V,); E is
        ``config.input_size`` (V for one-hot).
    """
    V, H, E = config.vocab_size, config.hidden_size, config.input_size
    layout, cell = config.layout(), config.cell
    G = layout.rows
    shapes: dict[str, tuple[int, ...]] = {}
    if config.input_kind == "embedding":
        shapes["embedding.weight"] = (V, E)
    for k in range(config.num_layers):
        shapes[f"{cell}.weight_ih_l{k}"] = (G * H, E if k == 0 else H)
        if layout.recurrent:
            shapes[f"{cell}.weight_hh_l{k}"] = (G * H, H)
        shapes[f"{cell}.bias_ih_l{k}"] = (G * H,)
        if layout.recurrent:
            shapes[f"{cell}.bias_hh_l{k}"] = (G * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes
