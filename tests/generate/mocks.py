"""Mock models with the GRULM call signature and known logits, and helpers that score or
decode them the slow, obvious way (the oracles the generation tests compare against)."""

import torch
from torch import nn
from torch.nn import functional as F

from grulm.data.vocab import Vocab
from grulm.generate.sampling import without_unk


class FixedLogits(nn.Module):
    """The same next-token logits (V,) after every input; a dummy (1, B, 1) state."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float64))

    def forward(self, inputs, state=None):
        B, T = inputs.shape
        state = torch.zeros(1, B, 1, dtype=torch.float64) if state is None else state
        return self.logits.expand(B, T, -1), state


class TrigramMock(nn.Module):
    """Logits ``table[prev, cur]`` from the last two tokens; the state is ``prev`` one-hot.

    The state matters, so beam search must reorder it correctly to score sequences right.
    """

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float64))  # (V, V, V)

    def forward(self, inputs, state=None):
        V = self.table.shape[0]
        prev = torch.zeros_like(inputs[:, 0]) if state is None else state[0].argmax(-1)
        logits = []
        for cur in inputs.unbind(1):
            logits.append(self.table[prev, cur])  # (B, V)
            prev = cur
        return torch.stack(logits, 1), F.one_hot(prev, V).double()[None]


class UnkLover(nn.Module):
    """Prefers <unk> after every token, then the token after the one it was fed."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, inputs, state=None):
        B, T = inputs.shape
        logits = torch.full((B, T, self.vocab_size), -5.0, dtype=torch.float64)
        logits[:, :, 0] = 5.0
        following = inputs % (self.vocab_size - 1) + 1  # 1 → 2 → … → V-1 → 1, never 0
        logits.scatter_(-1, following[..., None], 4.0)
        state = torch.zeros(1, B, 1, dtype=torch.float64) if state is None else state
        return logits, state


def abc_vocab(n=3):
    return Vocab(["<unk>", *"abcdefgh"[:n]])


def random_trigram(V, seed, spaced=False):
    g = torch.Generator().manual_seed(seed)
    if spaced:  # distinct logits one apart: argmax is unambiguous, even at temperature 1e-3
        return torch.stack([torch.randperm(V, generator=g) for _ in range(V * V)]).reshape(V, V, V)
    return torch.randn(V, V, V, generator=g, dtype=torch.float64) * 2


def continuation_logprob(model, vocab, prefix, continuation, allow_unk=True):
    """log p(continuation | prefix) by one forward pass (for brute-force checks).

    ``continuation`` is a sequence of tokens (``<unk>`` is one token, not five characters).
    With ``allow_unk=False`` every step's distribution is the model's given "not ``<unk>``".
    """
    prefix_ids, ids = vocab[list(prefix)], vocab[list(continuation)]
    inputs = torch.tensor([prefix_ids + ids[:-1]])
    logits, _ = model(inputs, None)
    logits = logits[0, len(prefix_ids) - 1 :]  # (L, V)
    logp = (logits if allow_unk else without_unk(logits)).log_softmax(-1)
    return logp.gather(1, torch.tensor(ids)[:, None]).sum().item()


def manual_greedy(model, vocab, prefix, n):
    """The seed's loop: one token per forward call, argmax."""
    state, ids = None, vocab[list(prefix)]
    for i in ids[:-1]:
        _, state = model(torch.tensor([[i]]), state)
    out, token = [], ids[-1]
    for _ in range(n):
        logits, state = model(torch.tensor([[token]]), state)
        token = int(logits[0, -1].argmax())
        out.append(token)
    return prefix + "".join(vocab.idx_to_token[i] for i in out)
