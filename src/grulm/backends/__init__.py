"""GRU recurrence backends: one function signature, one parameter layout, one switch.

Every backend provides ``gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, *,
reset_after) -> (outputs, h_T)`` with the shapes of :func:`grulm.backends.reference.gru_layer`
and ``torch.nn.GRU``'s parameter layout (gates r, z, n). A backend may also provide
single-step decoding for generation, ``decode_step(params, x_ids, h) -> (logits, h)`` over a
model's own parameters (:class:`~grulm.backends.decode.DecodeParams`), whose readable
reference is :func:`grulm.backends.reference.decode_step`. :func:`resolve` turns a backend
name (or ``"auto"``) into a :class:`Backend`, checking that it supports the variant, device,
dtype and capability asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from grulm.backends import cpu, reference, torch_gru
from grulm.backends.decode import DecodeParams
from grulm.errors import ConfigError

LayerFn = Callable[..., tuple[Tensor, Tensor]]
DecodeFn = Callable[[DecodeParams, Tensor, Tensor], tuple[Tensor, Tensor]]
GreedyFn = Callable[[DecodeParams, Tensor, Tensor, int], tuple[Tensor, Tensor]]
CAPABILITIES = ("gru_layer", "decode_step")


@dataclass(frozen=True)
class Backend:
    """A registered backend and what it supports.

    Attributes:
        name: the name users pass as ``backend=``.
        gru_layer: the layer function (see the module docstring).
        variants: the GRU variants it implements.
        device_types: the ``torch.device.type`` values it runs on.
        description: one line for ``--help`` and ``grulm info``.
        unavailable: returns why the backend cannot run on this machine, or None if it can.
        gathers_token_rows: its one-hot input path reads the row of ``W_ih^T`` each token
            selects instead of multiplying by one-hot vectors. An embedding model then runs
            layer 0 faster as one-hot input through ``W_ih E^T`` (see
            :meth:`grulm.model.GRULM.forward`).
        head_loss: a fused ``(hidden, head_weight, head_bias, targets) -> mean loss`` that
            :meth:`grulm.model.GRULM.loss` uses instead of the head and ``F.cross_entropy``,
            or None.
        clip_sgd: a fused ``(params, grads, lrs, max_norm) -> norm`` (gradient clipping then
            a plain SGD step, see :func:`grulm.backends.cpu.clip_sgd_`) that
            :func:`grulm.train.build_step` picks once for this backend's models, or None.
        decode_step: single-step decoding, ``(params, x_ids (N,) or (N, T), h (L, N, H)) ->
            (logits (N, V), h)`` (see :func:`grulm.backends.reference.decode_step`), or None.
        decode_greedy: a whole greedy run, ``(params, x_ids (N,), h, steps) -> (tokens
            (N, steps), h)`` (see :func:`grulm.backends.cpu.decode_greedy`), or None: then a
            decoder loops ``decode_step`` and the argmax.
        dtypes: the parameter dtypes it computes in, or None for any.
    """

    name: str
    gru_layer: LayerFn
    variants: tuple[str, ...]
    device_types: tuple[str, ...]
    description: str
    unavailable: Callable[[], str | None] = field(default=lambda: None)
    gathers_token_rows: bool = False
    head_loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None
    clip_sgd: Callable[[list[Tensor], list[Tensor], list[float], float], Tensor] | None = None
    decode_step: DecodeFn | None = None
    decode_greedy: GreedyFn | None = None
    dtypes: tuple[torch.dtype, ...] | None = None

    def unsupported(
        self,
        variant: str,
        device_type: str,
        dtype: torch.dtype | None = None,
        capability: str = "gru_layer",
    ) -> str | None:
        """Why this backend cannot run ``variant`` on ``device_type`` (in ``dtype``, providing
        ``capability``), or None if it can."""
        return self.refuses(variant, device_type, dtype, capability) or self.unavailable()

    def refuses(
        self,
        variant: str,
        device_type: str,
        dtype: torch.dtype | None = None,
        capability: str = "gru_layer",
    ) -> str | None:
        """Like :meth:`unsupported`, but from what the backend implements alone: never builds
        or loads anything to find out whether this machine can run it."""
        if getattr(self, capability) is None:
            return f"backend {self.name!r} provides no {capability}"
        if variant not in self.variants:
            return f"backend {self.name!r} implements only variant {' / '.join(self.variants)}"
        if device_type not in self.device_types:
            return f"backend {self.name!r} runs only on {' / '.join(self.device_types)}"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            names = " / ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"backend {self.name!r} computes only in {names}"
        return None


BACKENDS: dict[str, Backend] = {}

# Preference order for backend="auto": the fastest first.
AUTO_ORDER: list[str] = []


def register(backend: Backend, *, auto_rank: int | None = None) -> None:
    """Add a backend; ``auto_rank`` places it in the ``auto`` preference order (0 = first)."""
    BACKENDS[backend.name] = backend
    if auto_rank is not None:
        AUTO_ORDER.insert(auto_rank, backend.name)


register(
    Backend(
        name="reference",
        gru_layer=reference.gru_layer,
        variants=("reset_before", "reset_after"),
        device_types=("cpu", "cuda", "mps"),
        description="readable Python time loop under autograd (the oracle)",
        decode_step=reference.decode_step,
    ),
    auto_rank=0,
)
register(
    Backend(
        name="torch",
        gru_layer=torch_gru.gru_layer,
        variants=("reset_after",),
        device_types=("cpu", "cuda", "mps"),
        description="PyTorch's nn.GRU kernel (cuDNN on a GPU), reset_after only",
    ),
    auto_rank=0,
)


register(
    Backend(
        name="cpu",
        gru_layer=cpu.gru_layer,
        variants=("reset_before", "reset_after"),
        device_types=("cpu",),
        description="fused C++ time loop with a hand-written backward (built on first use)",
        unavailable=cpu.unavailable,
        gathers_token_rows=True,
        head_loss=cpu.head_loss,
        clip_sgd=cpu.clip_sgd_,
        decode_step=cpu.decode_step,
        decode_greedy=cpu.decode_greedy,
        dtypes=(torch.float32, torch.float64),
    ),
    auto_rank=0,
)


def backend_names() -> list[str]:
    """Every name ``backend=`` accepts."""
    return ["auto", *BACKENDS]


def resolve(
    name: str,
    variant: str,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    capability: str = "gru_layer",
) -> Backend:
    """Pick the backend for a model, or for decoding with it (``capability='decode_step'``).

    ``auto`` takes the first backend in :data:`AUTO_ORDER` that provides ``capability`` for
    the variant, device and dtype; if a faster one is unavailable on this machine (say its
    extension could not be built), it warns once, saying why and what to install, and falls
    back to the next.

    Raises:
        ConfigError: an unknown name, or a named backend that cannot do what is asked.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"capability must be one of {CAPABILITIES}, got {capability!r}")
    device_type = torch.device(device).type
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = BACKENDS[candidate]
            if backend.refuses(variant, device_type, dtype, capability) is not None:
                continue
            reason = backend.unavailable()
            if reason is None:
                return backend
            _warn_once(f"grulm: backend {candidate!r} is unavailable ({reason}); falling back")
        raise ConfigError(f"no backend supports variant {variant!r} on device {device_type!r}")
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}"
        )
    reason = BACKENDS[name].unsupported(variant, device_type, dtype, capability)
    if reason is not None:
        raise ConfigError(f"{reason}; use backend='auto' to pick one that can")
    return BACKENDS[name]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
