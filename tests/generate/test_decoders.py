"""Single-step decoding (grulm.generate.decoders): the step decoder equals the model's forward
through every backend that decodes, and the one-pass warm-up gives the seed's per-character
state. (Without a compiler, generation falls back to the reference step: tested with the build,
in tests/backends/test_backends_build.py.)"""

import pytest
import torch

from grulm import backends, textbook
from grulm.generate import GRUStepDecoder, ModelStepDecoder, warm_up
from grulm.model import GRULM, GRUConfig

DECODERS = [name for name, backend in backends.BACKENDS.items() if backend.decode_step]


@pytest.mark.parametrize(
    "config",
    [
        {"variant": "reset_before"},
        {"variant": "reset_after"},
        {
            "variant": "reset_before",
            "input_kind": "embedding",
            "embedding_size": 5,
            "num_layers": 2,
        },
        {"variant": "reset_after", "input_kind": "embedding", "num_layers": 3},
    ],
)
@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_decoder_equals_the_model_forward(config, backend, dtype):
    if reason := backends.BACKENDS[backend].unsupported(config["variant"], "cpu"):
        pytest.skip(reason)
    torch.manual_seed(0)
    model = GRULM(GRUConfig(vocab_size=7, hidden_size=6, init="torch", **config)).to(dtype).eval()
    with torch.no_grad():  # random biases everywhere, so every folded bias is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = torch.randn(model.config.num_layers, 3, 6, dtype=dtype)
    fast = GRUStepDecoder(model, state, backend=backend)
    reference = ModelStepDecoder(model, state)
    assert fast.backend.name == backend
    tolerance = {"rtol": 0, "atol": 1e-12 if dtype == torch.float64 else 1e-5}

    def step_both(tokens):
        logits = torch.as_tensor(fast.step(fast.array(tokens)))
        torch.testing.assert_close(logits, reference.step(torch.tensor(tokens)), **tolerance)

    for tokens in torch.randint(0, 7, (5, 3)).tolist():
        step_both(tokens)
    fast.reorder(fast.array([2, 0, 2, 1]))
    reference.reorder(torch.tensor([2, 0, 2, 1]))
    step_both([1, 2, 3, 4])
    torch.testing.assert_close(fast.state, reference.state, **tolerance)
    chosen = fast.greedy(fast.array([0, 1, 2, 3]), 6)
    expected = reference.greedy(torch.tensor([0, 1, 2, 3]), 6)
    assert torch.as_tensor(chosen).tolist() == expected.tolist()


@pytest.mark.parametrize("fast", [True, False], ids=["kernel-or-forward", "forward"])
def test_one_pass_warm_up_gives_the_seeds_per_character_state(trained, fast):
    """Both one-pass warm-ups: one call of the backend's decoding step (the compiled one where it
    builds), ``model.forward``."""
    model, vocab = trained
    prefix = "time traveller said the time machine"
    ids = vocab[list(prefix)]
    decoder, logits = warm_up(model, ids, fast=fast)
    if fast and backends.BACKENDS["cpu"].unavailable() is None:
        assert decoder.backend.name == "cpu"

    net = textbook.gru_model(len(vocab), 64)
    net.params = textbook.from_grulm(model)
    state = (torch.zeros(1, 64, dtype=torch.float64),)
    with torch.no_grad():
        for i in ids:  # the seed: one call per character
            y, state = net(torch.tensor([[i]]), state)
    torch.testing.assert_close(decoder.state[0], state[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(logits), y, rtol=0, atol=1e-12)
