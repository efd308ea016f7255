"""The textbook GRU and GRULM compute the same function, in float64, to rounding error."""

import pytest
import torch
from torch.nn import functional as F

from grulm import textbook
from grulm.model import GRULM, GRUConfig

V, H, B, T = 11, 16, 3, 7


@pytest.fixture
def textbook_net():
    torch.manual_seed(0)
    net = textbook.gru_model(V, H, "cpu")
    # Random biases too, so the b_h = b_in + b_hn bookkeeping is exercised.
    net.params = [
        (p.detach().double() + 0.1 * torch.randn_like(p.detach().double())).requires_grad_(True)
        for p in net.params
    ]
    return net


def _textbook_loss(net, X, Y, H0):
    logits, (H_T,) = net(X, (H0,))  # (T·B, V), time-major
    loss = F.cross_entropy(logits, Y.T.reshape(-1))
    return logits.reshape(T, B, V).transpose(0, 1), H_T, loss


def test_textbook_and_grulm_agree_on_logits_state_and_gradients(textbook_net):
    X = torch.randint(0, V, (B, T))
    Y = torch.randint(0, V, (B, T))
    H0 = torch.randn(B, H, dtype=torch.float64)

    model = textbook.to_grulm(textbook_net.params, backend="reference")
    H0_model = H0.clone().unsqueeze(0).requires_grad_(True)
    H0_book = H0.clone().requires_grad_(True)

    logits_book, H_book, loss_book = _textbook_loss(textbook_net, X, Y, H0_book)
    logits, H_model = model(X, H0_model)
    loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
    torch.testing.assert_close(logits, logits_book, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H_model[0], H_book, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, loss_book, rtol=1e-12, atol=1e-12)

    loss_book.backward()
    loss.backward()
    # Map the model's gradients back to textbook names with the same converter.
    assert not any("bias_hh" in name for name, _ in model.named_parameters())  # one bias a gate
    grad_model = GRULM(model.config).double()
    grad_model.load_state_dict({n: p.grad for n, p in model.named_parameters()}, strict=False)
    converted = textbook.from_grulm(grad_model)
    names = "W_xz W_hz b_z W_xr W_hr b_r W_xh W_hh b_h W_hq b_q".split()
    for name, p_book, g_model in zip(names, textbook_net.params, converted, strict=True):
        torch.testing.assert_close(g_model, p_book.grad, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(H0_model.grad[0], H0_book.grad, rtol=1e-10, atol=1e-12)


def test_converters_round_trip_exactly(textbook_net):
    back = textbook.from_grulm(textbook.to_grulm(textbook_net.params))
    for original, returned in zip(textbook_net.params, back, strict=True):
        assert torch.equal(original.detach(), returned.detach())


def test_from_grulm_refuses_models_the_textbook_cannot_express():
    with pytest.raises(ValueError, match="reset_before"):
        textbook.from_grulm(GRULM(GRUConfig(V, H, variant="reset_after")))
    with pytest.raises(ValueError, match="one layer"):
        textbook.from_grulm(GRULM(GRUConfig(V, H, num_layers=2)))


def test_concise_model_matches_grulm_torch_backend():
    """The seed's nn.GRU model is the reset-after GRULM with the same weights."""
    torch.manual_seed(1)
    concise = textbook.RNNModel(torch.nn.GRU(V, H), V)
    model = GRULM(GRUConfig(V, H, variant="reset_after", backend="torch"))
    with torch.no_grad():
        for name, p in concise.rnn.named_parameters():
            getattr(model.gru, name).copy_(p)
        model.head.weight.copy_(concise.linear.weight)
        model.head.bias.copy_(concise.linear.bias)
    X = torch.randint(0, V, (B, T))
    logits_concise, state_concise = concise(X, concise.begin_state("cpu", B))
    logits, state = model(X)
    torch.testing.assert_close(logits.transpose(0, 1).reshape(-1, V), logits_concise)
    torch.testing.assert_close(state, state_concise)
