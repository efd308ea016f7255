"""Step decoders: one token per sequence per step, from a GRULM's own parameters through a
backend's single-step decoding, or through any model's ``forward``; and the one-pass warm-up of
a prefix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from grulm import backends
from grulm.backends.decode import DecodeParams
from grulm.cells import State, map_state, state_tensors
from grulm.model import GRULM


class ModelStepDecoder:
    """Steps any module with the GRULM call signature through its ``forward``.

    Args:
        model: ``model(inputs (B, T) int64, state (L, B, H)) -> (logits (B, T, V), state)``.
        state: (L, N, H) the state after the warm-up, one row per sequence (an LSTM's: the
            pair (h, c)).
    """

    xp = torch

    def __init__(self, model: nn.Module, state: State) -> None:
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
        self.state = map_state(lambda s: s[:, index], self.state)


class GRUStepDecoder:
    """A :class:`GRULM` stepped one token per sequence by a backend's single-step decoding.

    The step is the backend's ``decode_step`` (see :mod:`grulm.backends`) over the model's own
    parameters; ``backend='auto'`` takes the fastest that can run the model here: on a CPU in
    float32/float64 the compiled one (``cpu``: a step, the whole prefix, or a whole greedy run
    is ONE call into C++, since single-stream decoding is bound by the cost of each call, not
    by arithmetic), else the readable PyTorch step (``reference``). Both give the model's
    ``forward`` up to float rounding (tested).

    The parameters are the model's own, detached (:class:`~grulm.backends.decode.DecodeParams`):
    read as they are when a step runs, with no autograd graph built and no grad mode switched
    (a generator that switched it would leak the mode into its caller between yields).
    Dropout is not applied (eval mode).

    On a CPU, in float32/float64, the decoder's arrays (``xp``) are NumPy views of the
    backend's tensors: what runs between two steps (a division by the temperature, the Gumbel
    noise, an argmax) costs a fraction of PyTorch's per-call overhead there.

    Args:
        model: the model.
        state: (L, N, H) the state to start from, one row per sequence (an LSTM's: the pair
            (h, c)).
        backend: ``auto`` or the name of a backend that provides ``decode_step``.

    Raises:
        ConfigError: ``backend`` cannot decode this model here (with the reason).
    """

    def __init__(self, model: GRULM, state: State, *, backend: str = "auto") -> None:
        self.params = DecodeParams.of(model)
        weight = model.head.weight
        self.backend = backends.resolve(
            backend,
            model.config.variant,
            weight.device,
            dtype=weight.dtype,
            capability="decode_step",
            cell=model.config.cell,
            gates=model.config.gates,
        )
        self.device = weight.device
        numpy_ok = weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
        self.xp = np if numpy_ok else torch
        self.h = map_state(Tensor.detach, state)  # (L, N, H)

    @property
    def state(self) -> State:
        """(L, N, H) (an LSTM's: the pair (h, c))."""
        return self.h

    def array(self, values):
        if self.xp is np:
            return np.asarray(values)
        return torch.as_tensor(values, device=self.device)

    def _tensor(self, tokens) -> Tensor:
        if isinstance(tokens, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        return torch.as_tensor(tokens, dtype=torch.int64, device=self.device)

    def _out(self, tensor: Tensor):
        return tensor.numpy() if self.xp is np else tensor

    def step(self, tokens):
        """Feed ``tokens`` (N,) int64; return the next-token logits (N, V), ``xp`` arrays."""
        logits, self.h = self.backend.decode_step(self.params, self._tensor(tokens), self.h)
        return self._out(logits)

    def prefill(self, ids: Sequence[int]):
        """Feed the prefix ``ids`` to every sequence, in order, in ONE call of the backend's
        ``decode_step``; return the next-token logits (N, V)."""
        rows = state_tensors(self.h)[0].shape[1]
        tokens = torch.tensor([list(ids)] * rows, dtype=torch.int64, device=self.device)
        logits, self.h = self.backend.decode_step(self.params, tokens, self.h)
        return self._out(logits)

    def greedy(self, tokens, steps: int):
        """Feed ``tokens`` (N,), then ``steps`` times feed back the argmax; return (N, steps).

        One call where the backend runs whole greedy runs (``decode_greedy``)."""
        if self.backend.decode_greedy is None or steps == 0:
            return greedy_steps(self, tokens, steps)
        chosen, self.h = self.backend.decode_greedy(
            self.params, self._tensor(tokens), self.h, steps
        )
        return self._out(chosen)

    def reorder(self, index) -> None:
        """Keep the sequences ``index`` (N',) names, in that order (beam search)."""
        index = self._tensor(index)
        self.h = map_state(lambda h: h[:, index], self.h)


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

    The pass is ONE call over the whole prefix, never one Python call per token: for a GRULM
    (``fast``) one call of the decoding backend's ``decode_step`` over the prefix (on a CPU, one
    call into C++, whose steps run back to back there: single-stream generation stays free of
    PyTorch's per-call costs and thread pool); otherwise the model's ``forward`` over (1, T)
    ids. Both end in the state of the seed's one-token-at-a-time warm-up (tested).

    Args:
        model: a GRULM or any module with its call signature.
        ids: the prefix token ids, at least one.
        fast: step a GRULM with :class:`GRUStepDecoder`; False uses its ``forward``.

    Returns:
        (decoder, logits) — a decoder holding the state after the prefix, batch 1, and the
        next-token logits (1, V) at the last prefix position.
    """
    if fast and isinstance(model, GRULM):
        decoder = GRUStepDecoder(model, model.begin_state(1))
        return decoder, decoder.prefill(ids)
    device = model_device(model)
    inputs = torch.tensor([list(ids)], dtype=torch.int64, device=device)  # (1, T)
    with torch.no_grad():
        logits, state = model(inputs, None)  # (1, T, V), (L, 1, H)
    decoder = ModelStepDecoder(model, state)
    return decoder, decoder.array(logits[:, -1])


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")

