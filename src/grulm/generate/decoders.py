"""Step decoders: one token per sequence per step, from a GRULM's own parameters (a small C
kernel or NumPy) or through any model's ``forward``; and the one-pass warm-up of a prefix."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from grulm import step_kernel
from grulm.errors import ConfigError
from grulm.model import GRULM


class ModelStepDecoder:
    """Steps any module with the GRULM call signature through its ``forward``.

    Args:
        model: ``model(inputs (B, T) int64, state (L, B, H)) -> (logits (B, T, V), state)``.
        state: (L, N, H) the state after the warm-up, one row per sequence.
    """

    xp = torch

    def __init__(self, model: nn.Module, state: Tensor) -> None:
        self.model = model
        self.state = state

    def array(self, values) -> Tensor:
        return torch.as_tensor(values, device=self.state.device)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens`` (N,) int64; return the next-token logits (N, V)."""
        with torch.no_grad():
            logits, self.state = self.model(tokens[:, None], self.state)
        return logits[:, -1]

    def greedy(self, tokens: Tensor, steps: int) -> Tensor:
        """Feed ``tokens`` (N,), then ``steps`` times feed back the argmax; return (N, steps)."""
        return greedy_steps(self, tokens, steps)

    def reorder(self, index: Tensor) -> None:
        """Keep the sequences ``index`` (N',) names, in that order (beam search)."""
        self.state = self.state[:, index]


class GRUStepDecoder:
    """A lean single-step path through a :class:`GRULM`'s own parameters (both variants).

    Each layer's new state ``h`` feeds ONE matrix product, ``h @ [W_hh^T | W_next^T]``, that
    gives both this layer's recurrent gate inputs for the next step and the input of whatever
    reads ``h`` now: the next layer's input projection, or the output head (the logits). So a
    step costs one product per layer for reset-after, two for reset-before (whose candidate
    needs ``(R ⊙ h) W_hn^T``), plus a row gather of a precomputed (V, 3H) input table for
    layer 0 and a few elementwise operations; biases are folded in wherever the formula
    allows, and the r and z columns are stored negated so that ``σ(a) = 1 / (1 + exp(−a))``
    takes three in-place calls.

    Single-stream decoding is bound by per-call overhead, not arithmetic, so ``impl`` picks
    where the step runs (``auto``: the first that applies):

    - ``c``: ONE call per step (and one per whole greedy run) into a small C library,
      :mod:`grulm.step_kernel`, with the same algebra; CPU, float32/float64, where it builds;
    - ``numpy``: the step below on NumPy arrays, whose small products and elementwise calls
      cost a fraction of PyTorch's on a CPU; float32/float64;
    - ``torch``: the step below on torch tensors on the model's device (GPUs, other dtypes).

    The weights are detached copies, so no autograd graph is built and no grad mode has to be
    switched (a generator that switched it would leak the mode into its caller between
    yields). Dropout is not applied (eval mode). Equal to ``model.forward`` up to float
    rounding (tested).

    Args:
        model: the model; its parameters are read once, at construction.
        state: (L, N, H) the state after the warm-up.
        impl: ``auto``, ``c``, ``numpy`` or ``torch``.

    Raises:
        ConfigError: ``impl`` names a path that cannot run this model here (with the reason).
    """

    IMPLS = ("auto", "c", "numpy", "torch")

    def __init__(self, model: GRULM, state: Tensor, *, impl: str = "auto") -> None:
        config = model.config
        H = self.hidden_size = config.hidden_size
        self.reset_after = config.variant == "reset_after"
        G = 3 * H if self.reset_after else 2 * H  # recurrent inputs computed from h ahead
        self.gates_width = G
        impl = self.resolve(impl, state)
        use_numpy = impl in ("c", "numpy")
        xp = self.xp = np if use_numpy else torch
        # The preparation runs in xp too: dozens of tiny torch calls would cost milliseconds.
        if use_numpy:

            def array(t: Tensor):  # a view of the tensor
                return t.detach().numpy()

            def own(a):  # a contiguous copy to write to
                return np.array(a, order="C")

            contiguous = np.ascontiguousarray
        else:

            def array(t: Tensor):
                return t.detach()

            def own(a):
                return a.clone(memory_format=torch.contiguous_format)

            def contiguous(a):
                return a.contiguous()

        def input_bias(b_ih, b_hh):  # (3H,) added to x W_ih^T
            if self.reset_after:
                return b_ih  # b_hh rides with h W_hh^T: the candidate needs R ⊙ (h W_hn + b_hn)
            return xp.concatenate([b_ih[: 2 * H], b_ih[2 * H :] + b_hh[2 * H :]])

        params = [[array(p) for p in model.gru.layer(k)] for k in range(len(state))]
        W_ih0, _, b_ih0, b_hh0 = params[0]
        if model.embedding is None:
            table = W_ih0.T + input_bias(b_ih0, b_hh0)  # (V, 3H): the one-hot product
        else:
            table = array(model.embedding.weight) @ W_ih0.T + input_bias(b_ih0, b_hh0)
        table[:, : 2 * H] *= -1  # −(x W_i + b) for r and z
        self.table = contiguous(table)
        self.layers = []
        for k, (_, W_hh, _, b_hh) in enumerate(params):
            if k + 1 < len(params):
                W_next, _, b_ih_next, b_hh_next = params[k + 1]
                b_next = input_bias(b_ih_next, b_hh_next)
            else:
                W_next, b_next = array(model.head.weight), array(model.head.bias)
            W_out = contiguous(xp.concatenate([W_hh[:G], W_next]).T)  # (H, G + 3H) or (H, G + V)
            b_out = xp.concatenate([b_hh[:G], b_next])  # reset-before: b_hn is in the input bias
            for columns in [slice(0, 2 * H)] + [slice(G, G + 2 * H)] * (k + 1 < len(params)):
                W_out[:, columns] *= -1  # r and z negated: this layer's, the next one's
                b_out[columns] *= -1
            W_hn = None if self.reset_after else contiguous(W_hh[2 * H :].T)  # (H, H)
            self.layers.append((W_out, b_out, W_hn))
        self.device = state.device
        if use_numpy:
            self.one = self.table.dtype.type(1)  # a NumPy scalar: no conversion per call
            self.gather = lambda tokens: self.table.take(tokens, 0)
        else:
            self.one = 1.0
            self.gather = lambda tokens: self.table.index_select(0, tokens)
        self.h = [own(array(h)) for h in state.unbind(0)]  # L × (N, H), updated in place
        self.recurrent = [
            (h @ W_out[:, :G]) + b_out[:G]
            for h, (W_out, b_out, _) in zip(self.h, self.layers, strict=True)
        ]  # L × (N, G): h W_hh^T (+ b_hh) for the gates of the coming step
        self.kernel = step_kernel.library() if impl == "c" else None
        if self.kernel is not None:
            suffix = "f32" if self.table.dtype == np.float32 else "f64"
            self.kernel_step = getattr(self.kernel, f"grulm_step_{suffix}")
            self.kernel_greedy = getattr(self.kernel, f"grulm_greedy_{suffix}")
            self.kernel_prefill = getattr(self.kernel, f"grulm_prefill_{suffix}")
            self._bind()

    @classmethod
    def resolve(cls, impl: str, like: Tensor) -> str:
        """The path ``impl`` means for tensors like ``like`` (a parameter or the state).

        Raises:
            ConfigError: an unknown ``impl``, or one that cannot run here (with the reason).
        """
        cpu_float = like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64)
        if impl not in cls.IMPLS:
            raise ConfigError(f"impl must be one of {', '.join(cls.IMPLS)}; got {impl!r}")
        if impl in ("c", "numpy") and not cpu_float:
            raise ConfigError(f"impl {impl!r} needs a float32/float64 model on the CPU")
        if impl == "c" and step_kernel.unavailable():
            raise ConfigError(step_kernel.unavailable())
        if impl == "auto":
            if not cpu_float:
                return "torch"
            return "numpy" if step_kernel.unavailable() else "c"
        return impl

    def _bind(self) -> None:
        """Point the C ``Stack`` at the current arrays (after construction and every reorder)."""
        H, V = self.hidden_size, self.table.shape[0]
        self.h = [np.ascontiguousarray(h) for h in self.h]
        self.recurrent = [np.ascontiguousarray(gh) for gh in self.recurrent]
        N = self.h[0].shape[0]
        dtype = self.table.dtype
        self.x = np.empty((N, 3 * H), dtype)
        self.work = np.empty(3 * H + self.gates_width + max(3 * H, V), dtype)
        self.logits = np.empty((N, V), dtype)
        self.c_arrays = [  # kept referenced: the Stack holds their raw addresses
            step_kernel.pointers([W_out for W_out, _, _ in self.layers]),
            step_kernel.pointers([b_out for _, b_out, _ in self.layers]),
            step_kernel.pointers([W_hn for _, _, W_hn in self.layers]),
            step_kernel.pointers(self.h),
            step_kernel.pointers(self.recurrent),
        ]
        self.stack = step_kernel.Stack(
            len(self.layers),
            N,
            H,
            V,
            self.reset_after,
            self.table.ctypes.data,
            *self.c_arrays,
            self.x.ctypes.data,
            self.work.ctypes.data,
        )
        self.stack_address = ctypes.addressof(self.stack)

    @property
    def state(self) -> Tensor:
        """(L, N, H) as a torch tensor."""
        return torch.stack([torch.as_tensor(h) for h in self.h])

    def array(self, values):
        if self.xp is np:
            return np.asarray(values)
        return torch.as_tensor(values, device=self.device)

    def step(self, tokens):
        """Feed ``tokens`` (N,) int64; return the next-token logits (N, V), both ``xp`` arrays."""
        if self.kernel is not None:
            tokens = np.ascontiguousarray(tokens, dtype=np.int64)
            self.kernel_step(self.stack_address, tokens.ctypes.data, self.logits.ctypes.data)
            return self.logits.copy()
        H, G, xp, one = self.hidden_size, self.gates_width, self.xp, self.one
        x = self.gather(tokens)  # (N, 3H) layer 0: x W_ih^T + b, r and z negated
        for k, (W_out, b_out, W_hn) in enumerate(self.layers):
            h, gh = self.h[k], self.recurrent[k]  # (N, H), (N, G)
            RZ = x[:, : 2 * H] + gh[:, : 2 * H]  # (N, 2H) −(pre-activations of R and Z)
            xp.exp(RZ, out=RZ)
            RZ += one
            xp.reciprocal(RZ, out=RZ)  # σ, in place
            R, Z = RZ[:, :H], RZ[:, H:]
            if self.reset_after:
                H_tilde = x[:, 2 * H :] + R * gh[:, 2 * H :]  # x W_in + b_in + R ⊙ (h W_hn + b_hn)
            else:
                H_tilde = x[:, 2 * H :] + (R * h) @ W_hn  # x W_in + b_in + (R ⊙ h) W_hn + b_hn
            xp.tanh(H_tilde, out=H_tilde)  # (N, H)
            h = h - H_tilde
            h *= Z
            h += H_tilde  # Z ⊙ h + (1 − Z) ⊙ H~
            out = h @ W_out  # (N, G + 3H) or (N, G + V)
            out += b_out
            self.h[k], self.recurrent[k], x = h, out[:, :G], out[:, G:]
        return x  # (N, V)

    def prefill(self, ids: Sequence[int]):
        """C path only: feed the prefix ``ids`` to the one sequence in ONE call into the kernel
        (its steps run in C, back to back); return the next-token logits (1, V)."""
        tokens = np.asarray(ids, dtype=np.int64)
        self.kernel_prefill(
            self.stack_address, tokens.ctypes.data, len(tokens), self.logits.ctypes.data
        )
        return self.logits.copy()

    def greedy(self, tokens, steps: int):
        """Feed ``tokens`` (N,), then ``steps`` times feed back the argmax; return (N, steps)."""
        if self.kernel is None:
            return greedy_steps(self, tokens, steps)
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        out = np.empty((len(tokens), steps), np.int64)
        next_tokens = np.empty(len(tokens), np.int64)
        self.kernel_greedy(
            self.stack_address,
            tokens.ctypes.data,
            steps,
            out.ctypes.data,
            next_tokens.ctypes.data,
            self.logits.ctypes.data,
        )
        return out

    @property
    def impl(self) -> str:
        """The path the step runs on: ``c``, ``numpy`` or ``torch``."""
        return "c" if self.kernel is not None else "numpy" if self.xp is np else "torch"

    def reorder(self, index) -> None:
        """Keep the sequences ``index`` (N',) names, in that order (beam search)."""
        self.h = [h[index] for h in self.h]
        self.recurrent = [gh[index] for gh in self.recurrent]
        if self.kernel is not None:
            self._bind()


def greedy_steps(decoder, tokens, steps: int):
    """Feed ``tokens`` (N,), then ``steps`` times feed back the argmax; return (N, steps)."""
    chosen = []
    for _ in range(steps):
        tokens = decoder.step(tokens).argmax(-1)
        chosen.append(tokens)
    if not chosen:
        return decoder.array([[] for _ in range(len(tokens))])
    return decoder.xp.stack(chosen, 1)


def warm_up(model: nn.Module, ids: Sequence[int], *, fast: bool = True):
    """Run the prefix through the model in one pass from the zero state.

    The pass is ONE call over the whole prefix, never one Python call per token: the model's
    ``forward`` over (1, T) ids, or, where the C step runs a GRULM (a CPU, float32/float64),
    one call into the kernel, whose steps run back to back in C; that keeps single-stream
    generation free of PyTorch's per-call costs and thread pool. Both end in the state of the
    seed's one-token-at-a-time warm-up (tested).

    Args:
        model: a GRULM or any module with its call signature.
        ids: the prefix token ids, at least one.
        fast: step a GRULM with :class:`GRUStepDecoder`; False uses its ``forward``.

    Returns:
        (decoder, logits) — a decoder holding the state after the prefix, batch 1, and the
        next-token logits (1, V) at the last prefix position, as a ``decoder.xp`` array.
    """
    fast = fast and isinstance(model, GRULM)
    if fast and GRUStepDecoder.resolve("auto", model.head.weight) == "c":
        decoder = GRUStepDecoder(model, model.begin_state(1), impl="c")
        return decoder, decoder.prefill(ids)
    device = model_device(model)
    inputs = torch.tensor([list(ids)], dtype=torch.int64, device=device)  # (1, T)
    with torch.no_grad():
        logits, state = model(inputs, None)  # (1, T, V), (L, 1, H)
    decoder = GRUStepDecoder(model, state) if fast else ModelStepDecoder(model, state)
    return decoder, decoder.array(logits[:, -1])


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")

