"""Small float64 models of every cell with random weights and biases (so a zero bias hides
no bookkeeping), a text for them, and an independent GRU oracle.

No ``__init__.py`` here: a test package named ``inspect`` would shadow the standard library's.
"""

import pytest
import torch

from grulm.model import GRULM, GRUConfig

V, T = 9, 12


@pytest.fixture
def make_model():
    """``make_model(cell=, gates=, variant=, input_kind=, num_layers=)`` → an eval-mode
    float64 GRULM of hidden size 6 on a vocabulary of 9."""

    def make(cell="gru", gates="both", variant="reset_before", input_kind="onehot",
             num_layers=2):
        torch.manual_seed(0)
        config = GRUConfig(vocab_size=V, hidden_size=6, num_layers=num_layers, cell=cell,
                           gates=gates, variant=variant, input_kind=input_kind,
                           embedding_size=5, init="torch")
        model = GRULM(config).double().eval()
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.copy_(torch.randn_like(tensor))
        return model

    return make


@pytest.fixture
def ids():
    return torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))


# The oracle: a GRU language model written from a GRULM's weights and the textbook's equations
# (d2l §9.1 for reset-before, cuDNN's for reset-after), unbatched; no grulm code runs in it.
BLOCKS = {"both": "rzn", "update": "zn", "reset": "rn", "none": "n"}


def gru_oracle(model, e):
    """Every layer's Z, R, H_tilde, H, each (T, L, H), and the logits (T, V), for layer-0
    inputs ``e`` (T, I): one-hot rows or embeddings, differentiable."""
    config, stack, n = model.config, model.recurrent, model.config.hidden_size
    blocks = BLOCKS[config.gates]

    def block(tensor, gate):
        i = blocks.index(gate)
        return tensor[i * n:(i + 1) * n]

    x, layers = e, []
    for k in range(config.num_layers):
        W_i, W_h = getattr(stack, f"weight_ih_l{k}"), getattr(stack, f"weight_hh_l{k}")
        b_i, b_h = getattr(stack, f"bias_ih_l{k}"), getattr(stack, f"bias_hh_l{k}")

        def gate(g, x_t, h, W_i=W_i, W_h=W_h, b_i=b_i, b_h=b_h):
            return (x_t @ block(W_i, g).T + block(b_i, g)) + (h @ block(W_h, g).T + block(b_h, g))

        h = torch.zeros(n, dtype=e.dtype)
        steps = {"Z": [], "R": [], "H_tilde": [], "H": []}
        for x_t in x:
            R = torch.sigmoid(gate("r", x_t, h)) if "r" in blocks else torch.ones(n).double()
            Z = torch.sigmoid(gate("z", x_t, h)) if "z" in blocks else torch.zeros(n).double()
            x_n = x_t @ block(W_i, "n").T + block(b_i, "n")
            if config.variant == "reset_after":
                H_tilde = torch.tanh(x_n + R * (h @ block(W_h, "n").T + block(b_h, "n")))
            else:
                H_tilde = torch.tanh(x_n + (R * h) @ block(W_h, "n").T + block(b_h, "n"))
            h = Z * h + (1 - Z) * H_tilde
            for name, value in zip(steps, (Z, R, H_tilde, h), strict=True):
                steps[name].append(value)
        layers.append({name: torch.stack(values) for name, values in steps.items()})
        x = layers[-1]["H"]
    traces = {name: torch.stack([layer[name] for layer in layers], dim=1) for name in steps}
    return traces, x @ model.head.weight.T + model.head.bias


@pytest.fixture
def oracle():
    """:func:`gru_oracle`, for the tests."""
    return gru_oracle
