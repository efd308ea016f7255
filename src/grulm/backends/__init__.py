"""Recurrence backends: one function signature per cell, one parameter layout, one switch.

A backend provides layer functions for the cells it implements (:mod:`grulm.cells`): a GRU's
``gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, *, reset_after) -> (outputs,
h_T)`` (plus ``gates=`` where it implements the ablations), ``rnn_layer`` with the same
arguments, ``lstm_layer`` with the pair ``(h0, c0)`` in and ``(h_T, c_T)`` out, and
``mingru_layer(x, h0, weight_ih, bias_ih)``, with the shapes of :mod:`grulm.backends.reference`
and the layout of :mod:`grulm.cells` (``torch.nn.GRU``/``RNN``/``LSTM``'s). A backend may also
provide single-step decoding for generation, ``decode_step(params, x_ids, h) -> (logits, h)``
over a model's own parameters (:class:`~grulm.backends.decode.DecodeParams`), whose readable
reference is :func:`grulm.backends.reference.decode_step`. :func:`resolve` turns a backend
name (or ``"auto"``) into a :class:`Backend`, checking that it supports the cell, gates,
variant, device, dtype, precision (:mod:`grulm.backends.precision`) and capability asked for.
A layer function gets ``precision="bf16"`` only when bf16 is asked for; float32 calls pass
no precision at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from grulm.backends import cpu, mingru, reference, torch_gru, torch_rnn
from grulm.backends.decode import DecodeParams
from grulm.backends.precision import PRECISIONS, check_precision
from grulm.cells import CELLS, GATES, NAMES
from grulm.errors import ConfigError

LayerFn = Callable[..., tuple[Tensor, Tensor]]
DecodeFn = Callable[[DecodeParams, Tensor, Tensor], tuple[Tensor, Tensor]]
GreedyFn = Callable[[DecodeParams, Tensor, Tensor, int], tuple[Tensor, Tensor]]
CAPABILITIES = ("layer", "decode_step")


@dataclass(frozen=True)
class Backend:
    """A registered backend and what it supports.

    Attributes:
        name: the name users pass as ``backend=``.
        gru_layer, rnn_layer, lstm_layer, mingru_layer: the layer function of each cell (see
            the module docstring), or None where it does not implement the cell.
        variants: the GRU variants it implements.
        gates: the GRU gate sets it implements (:data:`grulm.cells.GATES`; ``both``: no
            ablation).
        decode_cells: the cells its ``decode_step`` decodes.
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
        precisions: the precisions of its layers' products (:data:`~grulm.backends.precision.
            PRECISIONS`); its layer functions take ``precision=`` when it has more than
            ``float32``.
    """

    name: str
    gru_layer: LayerFn | None
    variants: tuple[str, ...]
    device_types: tuple[str, ...]
    description: str
    rnn_layer: LayerFn | None = None
    lstm_layer: LayerFn | None = None
    mingru_layer: LayerFn | None = None
    gates: tuple[str, ...] = ("both",)
    decode_cells: tuple[str, ...] = ("gru",)
    unavailable: Callable[[], str | None] = field(default=lambda: None)
    gathers_token_rows: bool = False
    head_loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None
    clip_sgd: Callable[[list[Tensor], list[Tensor], list[float], float], Tensor] | None = None
    decode_step: DecodeFn | None = None
    decode_greedy: GreedyFn | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    precisions: tuple[str, ...] = ("float32",)

    def layer(self, cell: str) -> LayerFn | None:
        """The layer function of ``cell``, or None."""
        return getattr(self, f"{cell}_layer")

    def cells(self, capability: str = "layer") -> tuple[str, ...]:
        """The cells it runs layers of (``layer``) or decodes (``decode_step``)."""
        if capability == "decode_step":
            return self.decode_cells if self.decode_step is not None else ()
        return tuple(cell for cell in CELLS if self.layer(cell) is not None)

    def unsupported(
        self,
        variant: str,
        device_type: str,
        dtype: torch.dtype | None = None,
        capability: str = "layer",
        *,
        cell: str = "gru",
        gates: str = "both",
        precision: str = "float32",
    ) -> str | None:
        """Why this backend cannot run ``variant`` on ``device_type`` (in ``dtype``, providing
        ``capability`` for ``cell`` with ``gates``, its products in ``precision``), or None if
        it can."""
        return (self.refuses(variant, device_type, dtype, capability, cell=cell, gates=gates,
                             precision=precision)
                or self.unavailable())

    def refuses(
        self,
        variant: str,
        device_type: str,
        dtype: torch.dtype | None = None,
        capability: str = "layer",
        *,
        cell: str = "gru",
        gates: str = "both",
        precision: str = "float32",
    ) -> str | None:
        """Like :meth:`unsupported`, but from what the backend implements alone: never builds
        or loads anything to find out whether this machine can run it."""
        reason = self.refuses_cell(cell, gates, capability)
        if reason is not None:
            return reason
        if cell == "gru" and variant not in self.variants:
            return f"backend {self.name!r} implements only variant {' / '.join(self.variants)}"
        if device_type not in self.device_types:
            return f"backend {self.name!r} runs only on {' / '.join(self.device_types)}"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            names = " / ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"backend {self.name!r} computes only in {names}"
        if capability == "layer":
            return self.refuses_precision(precision)
        return None

    def refuses_precision(self, precision: str) -> str | None:
        """Why this backend's layers cannot compute their products in ``precision``, naming
        the backends that can; None if they can."""
        if precision in self.precisions:
            return None
        return (f"backend {self.name!r} computes its products only in "
                f"{' / '.join(self.precisions)}; precision {precision} runs on: "
                f"{supporting_precision(precision)}")

    def refuses_cell(self, cell: str, gates: str = "both",
                     capability: str = "layer") -> str | None:  # fmt: skip
        """Why this backend cannot run (or decode) ``cell`` with ``gates``, naming the
        backends that can; None if it can."""
        if capability == "decode_step" and self.decode_step is None:
            return f"backend {self.name!r} provides no decode_step"
        if cell not in self.cells(capability):
            what = "decodes" if capability == "decode_step" else "implements"
            own = " / ".join(NAMES[c] for c in self.cells(capability))
            return (f"backend {self.name!r} {what} only the {own} cell; the {NAMES[cell]} cell "
                    f"runs on: {supporting(cell, gates, capability)}")
        if gates not in self.gates:
            return (f"backend {self.name!r} implements no GRU gate ablations (gates {gates!r}); "
                    f"they run on: {supporting(cell, gates)}")
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
        description="readable Python time loops under autograd, every cell (the oracle)",
        rnn_layer=reference.rnn_layer,
        lstm_layer=reference.lstm_layer,
        mingru_layer=mingru.mingru_sequential,
        gates=GATES,
        decode_step=reference.decode_step,
        decode_cells=CELLS,
        precisions=PRECISIONS,
    ),
    auto_rank=0,
)
register(
    Backend(
        name="torch",
        gru_layer=torch_gru.gru_layer,
        variants=("reset_after",),
        device_types=("cpu", "cuda", "mps"),
        description="PyTorch's nn.GRU (reset_after only), nn.RNN and nn.LSTM kernels (cuDNN "
        "on a GPU); minGRU's parallel scan",
        rnn_layer=torch_rnn.rnn_layer,
        lstm_layer=torch_rnn.lstm_layer,
        mingru_layer=mingru.mingru_scan,
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
        precisions=PRECISIONS,
    ),
    auto_rank=0,
)


def backend_names() -> list[str]:
    """Every name ``backend=`` accepts."""
    return ["auto", *BACKENDS]


def supporting(cell: str, gates: str = "both", capability: str = "layer") -> str:
    """The backends that run (or decode) ``cell`` with ``gates``, as a list for messages."""
    names = [name for name, backend in BACKENDS.items()
             if cell in backend.cells(capability) and gates in backend.gates]
    return ", ".join([*names, "auto"])


def supporting_precision(precision: str) -> str:
    """The backends whose layers compute in ``precision``, as a list for messages."""
    return ", ".join([*(name for name, backend in BACKENDS.items()
                        if precision in backend.precisions), "auto"])


def resolve(
    name: str,
    variant: str,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    capability: str = "layer",
    cell: str = "gru",
    gates: str = "both",
    precision: str = "float32",
) -> Backend:
    """Pick the backend for a model, or for decoding with it (``capability='decode_step'``).

    ``auto`` takes the first backend in :data:`AUTO_ORDER` that provides ``capability`` for
    the cell, gates, variant, device, dtype and (for layers) precision; if a faster one is
    unavailable on this machine (say its extension could not be built), it warns once,
    saying why and what to install, and falls back to the next.

    Raises:
        ConfigError: an unknown name or precision, bf16 with parameters that are not float32,
            or a named backend that cannot do what is asked.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"capability must be one of {CAPABILITIES}, got {capability!r}")
    check_precision(precision)
    if precision != "float32" and dtype not in (None, torch.float32):
        raise ConfigError(f"precision {precision} rounds the products of float32 parameters; "
                          f"these are {str(dtype).removeprefix('torch.')}: convert the model "
                          "to float32, or use precision float32")
    device_type = torch.device(device).type
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = BACKENDS[candidate]
            if backend.refuses(variant, device_type, dtype, capability, cell=cell,
                               gates=gates, precision=precision) is not None:
                continue
            reason = backend.unavailable()
            if reason is None:
                return backend
            _warn_once(f"grulm: backend {candidate!r} is unavailable ({reason}); falling back")
        products = "" if precision == "float32" else f", precision {precision}"
        raise ConfigError(f"no backend supports the {NAMES[cell]} cell (variant {variant!r}, "
                          f"gates {gates!r}{products}) on device {device_type!r}")
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}"
        )
    reason = BACKENDS[name].unsupported(variant, device_type, dtype, capability, cell=cell,
                                        gates=gates, precision=precision)
    if reason is not None:
        raise ConfigError(f"{reason}; use backend='auto' to pick one that can")
    return BACKENDS[name]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
