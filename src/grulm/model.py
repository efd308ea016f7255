"""The GRU language model: token ids in, next-token logits out.

``GRULM`` stacks GRU layers (either variant, see :mod:`grulm.backends.reference`) between a
one-hot or embedding input and a linear output head. Its recurrent parameters use
``torch.nn.GRU``'s names and layout (``gru.weight_ih_l{k}`` (3H×I), ``gru.weight_hh_l{k}``
(3H×H), ``gru.bias_ih_l{k}``, ``gru.bias_hh_l{k}``; gates r, z, n), shared by every backend;
:mod:`grulm.textbook` converts to and from the textbook's ``W_xz … b_q``.

Public tensors are batch-first: inputs (B, T) int64, logits (B, T, V), state (L, B, H).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulm import backends
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
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def input_size(self) -> int:
        """The width of layer 0's input: the vocabulary (one-hot) or the embedding."""
        if self.input_kind == "onehot":
            return self.vocab_size
        return self.embedding_size or self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GRUConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class GRUStack(nn.Module):
    """The recurrent parameters, named and shaped exactly as ``torch.nn.GRU``'s.

    In the reset-before GRU every hidden bias sits outside the reset gate (``b_hn`` too), so
    ``bias_hh`` only adds to ``bias_ih``: it is kept as a zero buffer, not a parameter, giving one
    trainable bias per gate as in the textbook (two would double the biases' learning rate).
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, *, reset_after: bool
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        for k in range(num_layers):
            layer_input = input_size if k == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{k}", nn.Parameter(torch.empty(3 * hidden_size, layer_input))
            )
            self.register_parameter(
                f"weight_hh_l{k}", nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
            )
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(3 * hidden_size)))
            if reset_after:
                self.register_parameter(
                    f"bias_hh_l{k}", nn.Parameter(torch.empty(3 * hidden_size))
                )
            else:
                self.register_buffer(f"bias_hh_l{k}", torch.zeros(3 * hidden_size))

    def layer(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Layer k's ``(weight_ih, weight_hh, bias_ih, bias_hh)``."""
        return (
            getattr(self, f"weight_ih_l{k}"),
            getattr(self, f"weight_hh_l{k}"),
            getattr(self, f"bias_ih_l{k}"),
            getattr(self, f"bias_hh_l{k}"),
        )


class GRULM(nn.Module):
    """A character- (or word-) level GRU language model.

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
        self.gru = GRUStack(
            config.input_size,
            config.hidden_size,
            config.num_layers,
            reset_after=config.variant == "reset_after",
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise as ``config.init`` says; embeddings always get N(0, 1) like nn.Embedding."""
        if self.embedding is not None:
            self.embedding.weight.normal_(generator=generator)
        for name, p in [*self.gru.named_parameters(), *self.head.named_parameters()]:
            if self.config.init == "d2l":
                if name.startswith("weight"):
                    p.normal_(generator=generator).mul_(0.01)
                else:
                    p.zero_()
            else:
                bound = 1.0 / math.sqrt(self.config.hidden_size)
                p.uniform_(-bound, bound, generator=generator)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The zero state, (L, B, H), in the parameters' dtype."""
        weight = self.head.weight
        return torch.zeros(
            self.config.num_layers,
            batch_size,
            self.config.hidden_size,
            dtype=weight.dtype,
            device=weight.device if device is None else device,
        )

    def backend(self, device: torch.device | str | None = None) -> backends.Backend:
        """The backend that runs this model's recurrence on ``device`` (default: its own)."""
        device = self.head.weight.device if device is None else device
        return backends.resolve(self.config.backend, self.config.variant, device)

    def forward(self, inputs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits for the next token at every position.

        Args:
            inputs: (B, T) int64 token ids.
            state: (L, B, H), or None for the zero state.

        Returns:
            logits (B, T, V) and the final state (L, B, H).
        """
        x, state = self._recur(inputs, state, self.backend(inputs.device))
        return self.head(x), state

    def loss(
        self, inputs: Tensor, targets: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The mean next-token cross-entropy over all B·T positions, and the final state.

        The same as ``F.cross_entropy`` of :meth:`forward`'s logits against ``targets``; a
        backend with a fused head (``cpu``) computes it without materialising the logits.

        Args:
            inputs, targets: (B, T) int64 token ids, ``targets`` the tokens that follow.
            state: (L, B, H), or None for the zero state.

        Returns:
            The loss (0-dim) and the final state (L, B, H).
        """
        backend = self.backend(inputs.device)
        x, state = self._recur(inputs, state, backend)
        if backend.head_loss is not None:
            return backend.head_loss(x, self.head.weight, self.head.bias, targets), state
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), state

    def _recur(
        self, inputs: Tensor, state: Tensor | None, backend: backends.Backend
    ) -> tuple[Tensor, Tensor]:
        """The last layer's outputs (B, T, H) and the final state (L, B, H)."""
        if state is None:
            state = self.begin_state(inputs.shape[0], inputs.device)
        reset_after = self.config.variant == "reset_after"
        layers = [list(self.gru.layer(k)) for k in range(self.config.num_layers)]
        if self.embedding is None:
            x = inputs  # (B, T) ids: one-hot input
        elif backend.gathers_token_rows and self.config.vocab_size <= inputs.numel():
            # E[ids] W_ih^T = (E W_ih^T)[ids]: with fewer embeddings than tokens, fold the
            # table into layer 0's input weights, (3H, V), and feed the ids as one-hot input.
            # The backend gathers rows of it: V·I·3H multiply-adds instead of B·T·I·3H.
            x = inputs
            layers[0][0] = F.linear(self.embedding.weight, layers[0][0]).T
        else:
            x = self.embedding(inputs)  # (B, T, E)
        final_states = []
        for k, weights in enumerate(layers):
            if k > 0 and self.config.dropout > 0:
                x = F.dropout(x, self.config.dropout, self.training)
            x, h = backend.gru_layer(x, state[k], *weights, reset_after=reset_after)
            final_states.append(h)  # x: (B, T, H), h: (B, H)
        return x, torch.stack(final_states)


def parameter_shapes(config: GRUConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``GRULM(config).state_dict()``, buffers included, unbuilt.

    Lets a checkpoint be checked against its weights file before any memory is allocated: a
    config edited to ``hidden_size: 100000`` fails on shapes instead of building a 120 GB model.

    Returns:
        ``{name: shape}``: ``embedding.weight`` (V, E) for embedding input; per layer k
        ``gru.weight_ih_l{k}`` (3H, E for k = 0 else H), ``gru.weight_hh_l{k}`` (3H, H),
        ``gru.bias_ih_l{k}`` (3H,), ``gru.bias_hh_l{k}`` (3H,) (a zero buffer in reset-before);
        ``head.weight`` (V, H), ``head.bias`` (V,); E is ``config.input_size`` (V for one-hot).
    """
    V, H, E = config.vocab_size, config.hidden_size, config.input_size
    shapes: dict[str, tuple[int, ...]] = {}
    if config.input_kind == "embedding":
        shapes["embedding.weight"] = (V, E)
    for k in range(config.num_layers):
        shapes[f"gru.weight_ih_l{k}"] = (3 * H, E if k == 0 else H)
        shapes[f"gru.weight_hh_l{k}"] = (3 * H, H)
        shapes[f"gru.bias_ih_l{k}"] = (3 * H,)
        shapes[f"gru.bias_hh_l{k}"] = (3 * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes
