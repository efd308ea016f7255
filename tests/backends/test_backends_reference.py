"""The reference backend, the oracle: its variant switch, and its cell as one step of its layer
(its gradcheck is in the parity harness, with every backend's)."""

import torch

from grulm.backends import reference
from grulm.model import GRULM, GRUConfig

V, H, B, T = 9, 6, 3, 5


def test_reset_after_and_reset_before_differ():
    """The variant switch reaches the recurrence (a check that could fail if it were ignored)."""
    torch.manual_seed(0)
    before = GRULM(GRUConfig(V, H, init="torch", backend="reference"))
    after = GRULM(GRUConfig(V, H, init="torch", variant="reset_after", backend="reference"))
    after.load_state_dict(before.state_dict())
    X = torch.randint(0, V, (B, T))
    assert not torch.allclose(before(X)[0], after(X)[0])


def test_the_cell_is_one_step_of_the_layer():
    torch.manual_seed(0)
    x, h0 = torch.randn(B, 1, 4, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    W_ih, W_hh, b_ih, b_hh = (
        torch.randn(shape, dtype=torch.float64) for shape in [(3 * H, 4), (3 * H, H), 3 * H, 3 * H]
    )
    for reset_after in (False, True):
        _, h1 = reference.gru_layer(x, h0, W_ih, W_hh, b_ih, b_hh, reset_after=reset_after)
        X = x[:, 0] @ W_ih.T + b_ih
        cell = reference.gru_cell(X, h0, W_hh.chunk(3), b_hh.chunk(3), reset_after=reset_after)
        torch.testing.assert_close(cell, h1, rtol=0, atol=0)
