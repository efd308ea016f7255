"""The seed: d2l §9.1's GRU language model from scratch, as the book writes it.

This module is the readable reference and the oracle for everything else in grulm. It keeps
the book's names (``W_xz … b_q``), its time-major one-hot inputs, its ``randn * 0.01``
initialisation, its training epoch (``train_epoch`` = ``train_epoch_ch8``), its gradient
clipping and SGD, and its greedy prediction with warm-up (``predict`` = ``predict_ch8``).
The concise model of the book's §9.1.2 (``nn.GRU`` behind one-hot inputs) is here too, as the
baseline the benchmarks compare against.

The GRU here is the **reset-before** variant (Cho et al. 2014, v3)::

    Z = σ(X W_xz + H W_hz + b_z)            update gate
    R = σ(X W_xr + H W_hr + b_r)            reset gate
    H~ = tanh(X W_xh + (R ⊙ H) W_hh + b_h)  candidate state
    H = Z ⊙ H + (1 − Z) ⊙ H~                new state
    Y = H W_hq + b_q                        output

``to_grulm`` and ``from_grulm`` convert exactly between these parameters and a one-layer
:class:`grulm.model.GRULM` (``torch.nn.GRU``'s layout, gates r, z, n): the one-hot input
product ``X W_x·`` is row ``x`` of ``W_x·``, and for reset-before ``b_h = b_in + b_hn``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from grulm.model import GRULM, GRUConfig


def get_params(vocab_size, num_hiddens, device):
    """The eleven parameters, weights ``randn * 0.01`` and biases zero, in the book's order."""
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    def three():
        return (
            normal((num_inputs, num_hiddens)),
            normal((num_hiddens, num_hiddens)),
            torch.zeros(num_hiddens, device=device),
        )

    W_xz, W_hz, b_z = three()  # update gate
    W_xr, W_hr, b_r = three()  # reset gate
    W_xh, W_hh, b_h = three()  # candidate hidden state
    W_hq = normal((num_hiddens, num_outputs))  # output layer
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_gru_state(batch_size, num_hiddens, device):
    """The state is a one-element tuple: ``(H,)`` with H zeros of shape (B, H)."""
    return (torch.zeros((batch_size, num_hiddens), device=device),)


def gru(inputs, state, params):
    """Run the GRU over time-major one-hot ``inputs`` (T, B, V); return ((T·B, V) logits, (H,))."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = state
    outputs = []
    for X in inputs:
        Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)  # (B, H)
        R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)  # (B, H)
        H_tilde = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)  # (B, H)
        H = Z * H + (1 - Z) * H_tilde  # (B, H)
        Y = H @ W_hq + b_q  # (B, V)
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


class RNNModelScratch:
    """The book's from-scratch model: token ids (B, T) → one-hot (T, B, V) → ``gru``."""

    def __init__(self, vocab_size, num_hiddens, device, get_params, init_state, forward_fn):
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X, state):
        # The book casts to float32; the parameters' dtype keeps float64 parity tests exact.
        X = F.one_hot(X.T, self.vocab_size).type(self.params[0].dtype)
        return self.forward_fn(X, state, self.params)

    def begin_state(self, batch_size, device):
        return self.init_state(batch_size, self.num_hiddens, device)


def gru_model(vocab_size, num_hiddens=256, device="cpu"):
    """The seed's model: ``RNNModelScratch`` with the GRU's params, state and step."""
    return RNNModelScratch(vocab_size, num_hiddens, device, get_params, init_gru_state, gru)


class RNNModel(nn.Module):
    """The book's concise model (§9.1.2): ``nn.GRU`` over float one-hot inputs, a linear head."""

    def __init__(self, rnn_layer, vocab_size):
        super().__init__()
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        self.linear = nn.Linear(self.num_hiddens, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        return torch.zeros((self.rnn.num_layers, batch_size, self.num_hiddens), device=device)


def grad_clipping(net, theta):
    """Rescale all gradients together when their global L2 norm exceeds ``theta``."""
    if isinstance(net, nn.Module):
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = net.params
    norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def sgd(params, lr, batch_size):
    """Minibatch SGD, zeroing the gradients afterwards."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def train_epoch(net, train_iter, loss, updater, device, use_random_iter):
    """One epoch of the book's ``train_epoch_ch8``; returns (perplexity, tokens/s).

    ``train_iter`` yields (X, Y) of shape (B, T); the state starts at the first batch (every
    batch with random partitioning) and is otherwise detached; the loss is the mean
    cross-entropy over all B·T tokens; gradients are clipped to norm 1.
    """
    state, start = None, time.perf_counter()
    loss_sum, num_tokens = 0.0, 0
    for X, Y in train_iter:
        if state is None or use_random_iter:
            state = net.begin_state(batch_size=X.shape[0], device=device)
        elif isinstance(net, nn.Module) and not isinstance(state, tuple):
            state.detach_()
        else:
            for s in state:
                s.detach_()
        y = Y.T.reshape(-1)
        X, y = X.to(device), y.to(device)
        y_hat, state = net(X, state)
        l = loss(y_hat, y.long()).mean()  # noqa: E741 (the book's name)
        if isinstance(updater, torch.optim.Optimizer):
            updater.zero_grad()
            l.backward()
            grad_clipping(net, 1)
            updater.step()
        else:
            l.backward()
            grad_clipping(net, 1)
            updater(batch_size=1)
        loss_sum += l.item() * y.numel()
        num_tokens += y.numel()
    return math.exp(loss_sum / num_tokens), num_tokens / (time.perf_counter() - start)


def make_updater(net, lr):
    """The book's choice of updater: ``torch.optim.SGD`` for modules, ``sgd`` for scratch."""
    if isinstance(net, nn.Module):
        return torch.optim.SGD(net.parameters(), lr)
    return lambda batch_size: sgd(net.params, lr, batch_size)


def predict(prefix, num_preds, net, vocab, device):
    """Greedy generation after a warm-up: the book's ``predict_ch8``; returns prefix + text."""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]

    def get_input():
        return torch.tensor([outputs[-1]], device=device).reshape((1, 1))

    for y in prefix[1:]:  # warm-up: feed the prefix, keep the state
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):  # predict num_preds steps
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return "".join([vocab.idx_to_token[i] for i in outputs])


def to_grulm(params, backend: str = "auto") -> GRULM:
    """A one-layer reset-before one-hot :class:`GRULM` computing exactly what ``params`` do."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = (p.detach() for p in params)
    vocab_size, hidden_size = W_xz.shape
    config = GRUConfig(vocab_size=vocab_size, hidden_size=hidden_size, backend=backend)
    model = GRULM(config).to(dtype=W_xz.dtype, device=W_xz.device)
    state_dict = {
        "gru.weight_ih_l0": torch.cat([W_xr.T, W_xz.T, W_xh.T]),  # (3H, V), gates r, z, n
        "gru.weight_hh_l0": torch.cat([W_hr.T, W_hz.T, W_hh.T]),  # (3H, H)
        "gru.bias_ih_l0": torch.cat([b_r, b_z, b_h]),  # (3H,)
        "gru.bias_hh_l0": torch.zeros_like(torch.cat([b_r, b_z, b_h])),  # (3H,)
        "head.weight": W_hq.T,  # (V, H)
        "head.bias": b_q,  # (V,)
    }
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()})
    return model


def from_grulm(model: GRULM) -> list[torch.Tensor]:
    """The textbook's eleven parameters (``requires_grad``) computing exactly what ``model`` does.

    Raises:
        ValueError: the model is not one layer, one-hot input, reset-before.
    """
    config = model.config
    if (config.num_layers, config.input_kind, config.variant) != (1, "onehot", "reset_before"):
        raise ValueError(
            "the textbook GRU is one layer, one-hot input, reset_before; got "
            f"{config.num_layers} layer(s), {config.input_kind} input, {config.variant}"
        )
    weight_ih, weight_hh, bias_ih, bias_hh = (p.detach() for p in model.gru.layer(0))
    W_xr, W_xz, W_xh = (w.T for w in weight_ih.chunk(3))
    W_hr, W_hz, W_hh = (w.T for w in weight_hh.chunk(3))
    b_r, b_z, b_h = (bias_ih + bias_hh).chunk(3)
    W_hq, b_q = model.head.weight.detach().T, model.head.bias.detach()
    params = [W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q]
    return [p.contiguous().clone().requires_grad_(True) for p in params]
