"""Text generation from a GRU language model: greedy, sampling and beam search.

Every function here is pure: no printing, no files, and randomness only through an explicit
``torch.Generator``. Generation runs in two phases:

1. **Warm-up.** The prefix is tokenised, mapped to ids (tokens outside the vocabulary become
   ``<unk>`` with one :class:`OutOfVocabularyWarning` naming them) and run through the model in
   ONE pass from the zero state: one ``forward`` call over the whole prefix, or one call into
   the C step kernel (:func:`warm_up`). The final state equals the seed's (d2l
   ``predict_ch8``) one-token-at-a-time warm-up, and the logits at the last position are the
   seed's first prediction.
2. **Decoding.** One token per step. For a :class:`~grulm.model.GRULM` a lean single-step
   decoder (:class:`GRUStepDecoder`) computes the step from the model's own parameters with the
   input projection precomputed as a (V, 3H) table and the biases folded in — on a CPU as one
   call into a small C kernel, or NumPy where no C compiler is available; any other module
   with the GRULM call signature ``model(inputs (B, T), state (L, B, H) | None) -> (logits
   (B, T, V), state)`` is stepped through its ``forward`` (:class:`ModelStepDecoder`).
   Sampling uses the Gumbel-max trick with noise drawn from the ``torch.Generator`` in blocks
   (:class:`GumbelSampler`); beam search keeps ``beam_width`` hypotheses in one batch.

Documented behaviours:

- The prefix must hold at least one token after cleaning (the seed needs one): an empty prefix
  is a :class:`~grulm.errors.ConfigError`.
- ``temperature == 0`` with ``strategy='sample'`` is greedy; a negative temperature is an error.
- ``top_k`` < 1 is an error; a ``top_k`` larger than the vocabulary is clamped to the vocabulary
  size with a :class:`GenerationWarning` (it then keeps every token).
- ``top_p`` must lie in (0, 1]; the kept set is the smallest set of most likely tokens whose
  probability reaches ``top_p`` (always at least the most likely one). With both, top-k is
  applied first, then top-p, then the distribution is renormalised.
- Temperature, top-k and top-p belong to ``strategy='sample'``; ``beam_width`` and
  ``length_penalty`` to ``strategy='beam'``. Setting one for another strategy is an error
  rather than silently ignored.
- ``max_new`` (the seed's ``num_preds``) must be ≥ 0; 0 returns the prefix.
- Stop strings are searched in the generated text only (not the prefix); a sequence ends right
  after the first stop string it produces, and the stop string is kept in its text.
- Generation runs the model as in eval mode: no dropout, no autograd.
"""

from __future__ import annotations

import ctypes
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from grulm import step_kernel
from grulm.data.text import check_text_options, text_to_tokens
from grulm.errors import ConfigError
from grulm.model import GRULM

STRATEGIES = ("greedy", "sample", "beam")
DEFAULT_BEAM_WIDTH = 4


class GenerationWarning(UserWarning):
    """Generation went ahead, but not exactly as asked (for example a clamped ``top_k``)."""


class OutOfVocabularyWarning(GenerationWarning):
    """Prefix tokens the vocabulary does not hold; they were read as ``<unk>``."""


@dataclass(frozen=True)
class TextFormat:
    """How prefix text becomes tokens and generated tokens become text, as in training.

    Attributes:
        token: ``char`` or ``word`` (see :mod:`grulm.data.text`). Word tokens of d2l-cleaned
            text join with ``' '``; everything else joins with ``''``.
        cleaning: ``raw`` leaves the prefix as it is (the seed's ``predict``); ``d2l`` cleans it
            as the seed's training text was, so that a model trained on letters-only lower-case
            text can be primed with ``"Time Traveller"``: every run of non-letters (newlines
            included) becomes one space and letters are lower-cased. Unlike a corpus line, a
            character prefix is not stripped, since a trailing space is part of the prompt.
    """

    token: str = "char"
    cleaning: str = "raw"

    def __post_init__(self) -> None:
        check_text_options(self.cleaning, self.token)

    @classmethod
    def from_meta(cls, meta: dict) -> TextFormat:
        """The format a checkpoint's metadata describes.

        Reads ``token`` and ``cleaning`` from ``meta["data"]`` (where ``grulm train`` writes
        them) or from ``meta`` itself; absent ones default to ``char`` and ``raw``.
        """
        data = meta.get("data") or {}
        return cls(
            token=data.get("token", meta.get("token", "char")),
            cleaning=data.get("cleaning", meta.get("cleaning", "raw")),
        )

    @property
    def joiner(self) -> str:
        return " " if self.token == "word" and self.cleaning == "d2l" else ""

    def tokenize(self, text: str) -> list[str]:
        """The prefix as tokens: its (cleaned) characters, or its words as training cut them."""
        if self.token == "char" and self.cleaning == "d2l":
            return list(re.sub("[^A-Za-z]+", " ", text).lower())
        return text_to_tokens(text, self.cleaning, self.token)


def encode_prefix(vocab, tokens: Sequence[str]) -> list[int]:
    """Token ids for ``tokens``; unknown tokens become ``<unk>`` (id ``vocab['<unk>']``).

    Warns once with :class:`OutOfVocabularyWarning`, naming every distinct unknown token.
    """
    ids = [vocab[token] for token in tokens]
    unk_token = vocab.idx_to_token[0]
    unknown = [t for t, i in zip(tokens, ids, strict=True) if i == 0 and t != unk_token]
    if unknown:
        names = ", ".join(repr(t) for t in dict.fromkeys(unknown))
        warnings.warn(
            f"prefix has {len(unknown)} token(s) not in the model's vocabulary, read as "
            f"{unk_token}: {names}",
            OutOfVocabularyWarning,
            stacklevel=3,
        )
    return ids


# ---------------------------------------------------------------------------------------------
# Decoders: one token per sequence per step.
#
# A decoder works in its own array type (``xp``: torch, or NumPy for the CPU fast path): token
# ids (N,) int64 in, logits (N, V) out; ``array`` makes one from a list or a CPU tensor.
# ``.argmax(-1)``, ``[index]`` and ``.tolist()`` read the same for both.


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
        return _greedy_steps(self, tokens, steps)

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
            return _greedy_steps(self, tokens, steps)
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


def _greedy_steps(decoder, tokens, steps: int):
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
    device = _model_device(model)
    inputs = torch.tensor([list(ids)], dtype=torch.int64, device=device)  # (1, T)
    with torch.no_grad():
        logits, state = model(inputs, None)  # (1, T, V), (L, 1, H)
    decoder = GRUStepDecoder(model, state) if fast else ModelStepDecoder(model, state)
    return decoder, decoder.array(logits[:, -1])


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Token selection.


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set the logits of tokens outside the top-k / nucleus sets to −inf.

    Args:
        logits: (N, V), already divided by the temperature.
        top_k: keep the k largest per row (ties at the boundary: the lower ids, as ``sort``).
        top_p: then keep the smallest set of most likely tokens whose probability reaches
            ``top_p``; the most likely token always stays.

    Returns:
        (N, V) a filtered copy.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        drop = torch.zeros_like(logits, dtype=torch.bool)
        drop.scatter_(-1, order[:, top_k:], True)
        logits = logits.masked_fill(drop, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (N, V) probability of the better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def _make_selector(
    strategy: str,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    max_new: int,
):
    """A function from logits (N, V) to the next tokens (N,) int64, torch or NumPy alike."""
    if strategy == "greedy" or temperature == 0:
        return lambda logits: logits.argmax(-1)
    return GumbelSampler(temperature, top_k, top_p, generator, max_new)


class GumbelSampler:
    """Draws tokens from ``softmax(logits / temperature)``, after top-k / top-p filtering.

    By the Gumbel-max trick: ``argmax(logits / T + G)`` with ``G = −log E``, ``E ~ Exp(1)``
    i.i.d., picks token i with probability ``softmax(logits / T)_i`` exactly, and never a
    token whose logit is −inf (filtered out). The noise comes from ``generator`` only, drawn
    in blocks of steps so that a step costs a few array operations rather than a
    ``torch.multinomial`` call; a block holds at most 65,536 numbers (fewer steps for a large
    vocabulary) and never more steps than are left. The draws are the same whichever decoder
    produced the logits.

    Args:
        temperature: > 0.
        top_k, top_p: see :func:`filter_logits` (None: no filter).
        generator: the source of randomness, on the logits' device.
        max_new: how many steps will be drawn at most.
    """

    BLOCK_NUMBERS = 1 << 16

    def __init__(self, temperature, top_k, top_p, generator, max_new: int) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.left = max_new
        self.noise, self.used = None, 0

    def __call__(self, logits):
        if self.noise is None or self.used == len(self.noise):
            self._draw(logits)
        noise = self.noise[self.used]  # (N, V)
        self.used += 1
        scaled = logits / self.temperature
        if self.top_k is not None or self.top_p is not None:
            filtered = filter_logits(torch.as_tensor(scaled), self.top_k, self.top_p)
            scaled = filtered.numpy() if isinstance(logits, np.ndarray) else filtered
        return (scaled + noise).argmax(-1)

    def _draw(self, logits) -> None:
        N, V = logits.shape
        steps = max(1, min(self.left, self.BLOCK_NUMBERS // (N * V)))
        self.left -= steps
        like = torch.as_tensor(logits)
        exponential = torch.empty(steps, N, V, dtype=like.dtype, device=like.device)
        exponential.exponential_(generator=self.generator)
        tiny = torch.finfo(like.dtype).tiny  # E = 0 would give G = +inf, even for −inf logits
        gumbel = exponential.clamp_(min=tiny).log_().neg_()  # (steps, N, V)
        self.noise = gumbel.numpy() if isinstance(logits, np.ndarray) else gumbel
        self.used = 0


# ---------------------------------------------------------------------------------------------
# Argument checks.


def check_options(
    vocab_size: int,
    *,
    strategy: str = "greedy",
    max_new: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int | None = None,
    length_penalty: float | None = None,
    num_samples: int = 1,
) -> int | None:
    """Check :func:`generate`'s options (same names) against the module docstring's rules.

    Returns:
        ``top_k``, clamped to ``vocab_size`` with a :class:`GenerationWarning` if larger.

    Raises:
        ConfigError: an option out of range, or one that does not belong to ``strategy``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        raise ConfigError(f"the number of tokens to generate must be ≥ 0, got {max_new!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    if temperature < 0:
        raise ConfigError(f"temperature must be ≥ 0 (0 means greedy), got {temperature!r}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        if top_k > vocab_size:
            warnings.warn(
                f"top_k={top_k} is larger than the vocabulary; using all {vocab_size} tokens",
                GenerationWarning,
                stacklevel=3,
            )
            top_k = vocab_size
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must lie in (0, 1], got {top_p!r}")
    if beam_width is not None and (
        isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1
    ):
        raise ConfigError(f"beam_width must be a positive integer, got {beam_width!r}")
    if length_penalty is not None and (
        not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty)
    ):
        raise ConfigError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if strategy != "sample":
        for name, value, default in (
            ("temperature", temperature, 1.0),
            ("top_k", top_k, None),
            ("top_p", top_p, None),
        ):
            if value != default:
                raise ConfigError(f"{name} applies only to strategy 'sample', not {strategy!r}")
    if strategy != "beam":
        for name, value in (("beam_width", beam_width), ("length_penalty", length_penalty)):
            if value is not None:
                raise ConfigError(f"{name} applies only to strategy 'beam', not {strategy!r}")
    elif num_samples > (beam_width or DEFAULT_BEAM_WIDTH):
        raise ConfigError(
            f"beam search returns at most beam_width={beam_width or DEFAULT_BEAM_WIDTH} "
            f"sequences; num_samples={num_samples} asks for more"
        )
    return top_k


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ConfigError(f"stop strings must be non-empty strings, got {stop!r}")
    return stops


def _prefix_ids(vocab, prefix: str, text_format: TextFormat) -> tuple[list[str], list[int]]:
    if not isinstance(prefix, str):
        raise ConfigError(f"the prefix must be a string, got {type(prefix).__name__}")
    tokens = text_format.tokenize(prefix)
    if not tokens:
        raise ConfigError(
            "the prefix is empty; give at least one "
            + ("character" if text_format.token == "char" else "word")
            + " to start from"
        )
    return tokens, encode_prefix(vocab, tokens)


class _StopWatch:
    """Finds the first stop string in a stream of text pieces, keeping only a bounded tail."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.tail = ""

    def feed(self, piece: str) -> int | None:
        """Where in ``piece`` the first stop string completed by it ends, or None."""
        window = self.tail + piece
        end = None
        for stop in self.stops:
            at = window.find(stop, max(0, len(self.tail) - len(stop) + 1))
            if at >= 0:
                stop_end = at + len(stop) - len(self.tail)
                end = stop_end if end is None else min(end, stop_end)
        self.tail = window[max(0, len(window) - self.keep) :] if self.keep else ""
        return end

    def copy(self) -> _StopWatch:
        twin = _StopWatch(self.stops)
        twin.tail = self.tail
        return twin


# ---------------------------------------------------------------------------------------------
# The public entry points.


def predict(
    model: nn.Module, vocab, prefix: str, num_preds: int, text_format: TextFormat = TextFormat()
) -> str:
    """Greedy generation after a warm-up: the seed's ``predict_ch8``.

    Returns the prefix followed by ``num_preds`` tokens, identical to the seed's output for a
    character prefix within the vocabulary (unknown prefix characters are warned about, read
    as ``<unk>``, and echoed as given rather than as ``'<unk>'``). By default the prefix is
    not cleaned, as in the seed; pass ``TextFormat.from_meta(...)`` (or the corpus's cleaning
    and token kind) for word-level or d2l-cleaned prompts.

    Args:
        model: a GRULM (or any module with its call signature), in eval mode.
        vocab: the vocabulary (``vocab[token]``, ``vocab.idx_to_token``).
        prefix: at least one token.
        num_preds: tokens to generate, ≥ 0.
        text_format: how to tokenise the prefix and join tokens (default: characters, raw).
    """
    return generate(model, vocab, prefix, max_new=num_preds, text_format=text_format)[0]


def generate(
    model: nn.Module,
    vocab,
    prefix: str,
    *,
    max_new: int = 50,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int | None = None,
    length_penalty: float | None = None,
    num_samples: int = 1,
    stop: str | Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    text_format: TextFormat = TextFormat(),
    fast: bool = True,
) -> list[str]:
    """Generate ``num_samples`` continuations of ``prefix``, as one batch.

    Args:
        model: a GRULM (or a module with its call signature), in eval mode.
        vocab: the model's vocabulary.
        prefix: the prompt; see :class:`TextFormat` for cleaning and tokenisation.
        max_new: tokens to generate after the prefix (the seed's ``num_preds``), ≥ 0.
        strategy: ``greedy`` (argmax, the seed), ``sample`` or ``beam``.
        temperature: ``sample`` only; logits are divided by it; 0 means greedy.
        top_k: ``sample`` only; sample among the k most likely tokens.
        top_p: ``sample`` only; sample within the nucleus of probability ``top_p``.
        beam_width: ``beam`` only; hypotheses kept per step (default 4).
        length_penalty: ``beam`` only; finished hypotheses are ranked by
            ``log p / length ** length_penalty`` (default 1.0, the mean log-probability per
            token). Without stop strings every hypothesis has ``max_new`` tokens, so it does not
            change the ranking. Beam search ends after ``max_new`` steps or once ``beam_width``
            hypotheses have finished.
        num_samples: sequences to return. Greedy ones are identical; beam search returns the
            ``num_samples`` best hypotheses, best first (at most ``beam_width``).
        stop: a string or strings; a sequence ends after the first one it generates.
        generator: the only source of randomness (``sample``); None draws a fresh seed from the
            operating system. Must live on the model's device.
        text_format: how the prefix is cleaned and tokenised and tokens are joined.
        fast: step a GRULM through :class:`GRUStepDecoder`; False steps it through ``forward``.

    Returns:
        ``num_samples`` strings, each the (cleaned) prefix followed by its continuation.

    Raises:
        ConfigError: an empty prefix or an option out of range (see the module docstring).
    """
    top_k = check_options(
        len(vocab),
        strategy=strategy,
        max_new=max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        beam_width=beam_width,
        length_penalty=length_penalty,
        num_samples=num_samples,
    )
    stops = _check_stop(stop)
    tokens, ids = _prefix_ids(vocab, prefix, text_format)
    text_prefix = text_format.joiner.join(tokens)
    if max_new == 0:
        return [text_prefix] * num_samples
    pieces = _pieces(vocab, text_format)
    decoder, logits = warm_up(model, ids, fast=fast)
    if strategy == "beam":
        continuations = _beam_search(
            decoder,
            logits,
            pieces,
            max_new=max_new,
            beam_width=beam_width or DEFAULT_BEAM_WIDTH,
            length_penalty=1.0 if length_penalty is None else length_penalty,
            num_return=num_samples,
            stops=stops,
        )
        return [text_prefix + text for text in continuations]
    generator = _check_generator(generator, _model_device(model), strategy, temperature)
    select = _make_selector(strategy, temperature, top_k, top_p, generator, max_new)
    index = decoder.array([0] * num_samples)
    decoder.reorder(index)  # one row of state per sample
    logits = logits[index]  # (N, V)
    if not stops and (strategy == "greedy" or temperature == 0):
        first = logits.argmax(-1)  # (N,)
        rows = [
            [i, *rest]
            for i, rest in zip(
                first.tolist(), decoder.greedy(first, max_new - 1).tolist(), strict=True
            )
        ]
        return [text_prefix + "".join(pieces[i] for i in row) for row in rows]
    if not stops:
        steps = []
        for t in range(max_new):
            token = select(logits)  # (N,)
            steps.append(token)
            if t + 1 < max_new:
                logits = decoder.step(token)
        rows = decoder.xp.stack(steps, 1).tolist()  # (N, max_new)
        return [text_prefix + "".join(pieces[i] for i in row) for row in rows]
    texts = [[] for _ in range(num_samples)]
    watches = [_StopWatch(stops) for _ in range(num_samples)]
    running = set(range(num_samples))
    for t in range(max_new):
        token = select(logits)
        for i, token_id in enumerate(token.tolist()):
            if i in running:
                piece = pieces[token_id]
                end = watches[i].feed(piece)
                if end is not None:
                    piece = piece[:end]
                    running.discard(i)
                texts[i].append(piece)
        if not running:
            break
        if t + 1 < max_new:
            logits = decoder.step(token)
    return [text_prefix + "".join(text) for text in texts]


def stream(
    model: nn.Module,
    vocab,
    prefix: str,
    *,
    max_new: int = 50,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    text_format: TextFormat = TextFormat(),
    fast: bool = True,
) -> Iterator[str]:
    """Generate one continuation of ``prefix``, yielding its text piece by piece.

    The options are those of :func:`generate` (greedy or sample; beam search cannot stream,
    since its best hypothesis is known only at the end). The options are checked and the
    prefix warmed up when this is called, before the first piece. Memory stays constant however
    large ``max_new`` is: nothing of the growing text is kept but the tail stop strings need.

    Yields:
        The continuation only (not the prefix), one token at a time: a character, or for word
        tokens ``' ' + word``, so that ``prefix + ''.join(pieces)`` is :func:`generate`'s text.
    """
    if strategy == "beam":
        raise ConfigError("beam search cannot stream; use strategy 'greedy' or 'sample'")
    top_k = check_options(
        len(vocab),
        strategy=strategy,
        max_new=max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    stops = _check_stop(stop)
    _, ids = _prefix_ids(vocab, prefix, text_format)
    if max_new == 0:
        return iter(())
    pieces = _pieces(vocab, text_format)
    decoder, logits = warm_up(model, ids, fast=fast)
    generator = _check_generator(generator, _model_device(model), strategy, temperature)
    select = _make_selector(strategy, temperature, top_k, top_p, generator, max_new)
    return _stream_pieces(decoder, logits, select, pieces, max_new, _StopWatch(stops))


def _stream_pieces(decoder, logits, select, pieces, max_new, watch) -> Iterator[str]:
    for t in range(max_new):
        token = select(logits)
        piece = pieces[token.tolist()[0]]
        end = watch.feed(piece) if watch.stops else None
        if end is not None:
            yield piece[:end]
            return
        yield piece
        if t + 1 < max_new:
            logits = decoder.step(token)


def _pieces(vocab, text_format: TextFormat) -> list[str]:
    """The text each token id adds to a continuation."""
    return [text_format.joiner + token for token in vocab.idx_to_token]


def _check_generator(
    generator: torch.Generator | None, device: torch.device, strategy: str, temperature: float
) -> torch.Generator | None:
    if strategy != "sample" or temperature == 0:
        return generator
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()
    elif torch.device(generator.device).type != device.type:
        raise ConfigError(
            f"the generator lives on {generator.device} but the model on {device}; "
            "create it with torch.Generator(device=...) on the model's device"
        )
    return generator


def _beam_search(
    decoder,
    logits: Tensor,
    pieces: list[str],
    *,
    max_new: int,
    beam_width: int,
    length_penalty: float,
    num_return: int,
    stops: tuple[str, ...],
) -> list[str]:
    """Beam search over continuations; returns the ``num_return`` best texts, best first.

    Args:
        decoder: holds the state after the prefix, batch 1.
        logits: (1, V) the next-token logits after the prefix.
    """
    vocab_size = logits.shape[-1]
    scores = torch.zeros(1, dtype=torch.float64)  # (n,) sum of log p
    beams: list[tuple[str, _StopWatch]] = [("", _StopWatch(stops))]
    finished: list[tuple[float, str]] = []  # (normalised score, text)
    for t in range(max_new):
        logp = torch.log_softmax(torch.as_tensor(logits).double().cpu(), dim=-1)  # (n, V)
        candidates = (scores[:, None] + logp).flatten()  # (n·V,)
        k = min(2 * beam_width, candidates.numel())
        top_scores, flat = candidates.topk(k)  # sorted, best first
        kept_rows, kept_scores, kept_beams, kept_tokens = [], [], [], []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), flat.tolist(), strict=True)):
            row, token = divmod(index, vocab_size)
            text, watch = beams[row]
            piece = pieces[token]
            end = None
            if stops:
                watch = watch.copy()
                end = watch.feed(piece)
            if end is not None:
                if rank < beam_width:  # a finished hypothesis must rank among the best
                    finished.append((score / (t + 1) ** length_penalty, text + piece[:end]))
                continue
            kept_rows.append(row)
            kept_scores.append(score)
            kept_beams.append((text + piece, watch))
            kept_tokens.append(token)
            if len(kept_rows) == beam_width:
                break
        beams = kept_beams
        if not beams or len(finished) >= beam_width or t + 1 == max_new:
            break
        scores = torch.tensor(kept_scores, dtype=torch.float64)
        decoder.reorder(decoder.array(kept_rows))
        logits = decoder.step(decoder.array(kept_tokens))
    length = t + 1
    hypotheses = finished + [
        (score / length**length_penalty, text)
        for score, (text, _) in zip(kept_scores, beams, strict=True)
    ]
    hypotheses.sort(key=lambda h: h[0], reverse=True)
    return [text for _, text in hypotheses[:num_return]]
