"""Generation runs forward only: no autograd graph, and the fused cpu layer, where a path
reaches it (``fast=False``: the model's ``forward``), is asked to save nothing for a
backward; the fast path never reaches it (single-step decoding kernels instead)."""

import pytest
import torch

from grulm.backends import cpu
from grulm.data.vocab import Vocab
from grulm.generate import ModelStepDecoder, generate, warm_up
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

TEXT = "the time traveller for so it will be convenient to speak of him"




@pytest.fixture
def model_and_vocab():
    vocab = Vocab.build(list(TEXT))
    torch.manual_seed(0)
    model = GRULM(GRUConfig(len(vocab), 24, num_layers=2, init="torch", backend="cpu"))
    return model, vocab


@pytest.mark.parametrize("options", [{}, {"strategy": "sample", "num_samples": 3},
                                     {"strategy": "beam", "beam_width": 3}])  # fmt: skip
def test_generation_through_forward_saves_nothing_and_equals_the_fast_path(
    layer_saves, model_and_vocab, options
):
    model, vocab = model_and_vocab
    slow = generate(model, vocab, "time trav", max_new=20, fast=False,
                    generator=torch.Generator().manual_seed(1), **options)
    assert layer_saves and not any(layer_saves)  # warm-up and every step: forward only
    layer_saves.clear()
    fast = generate(model, vocab, "time trav", max_new=20,
                    generator=torch.Generator().manual_seed(1), **options)
    assert layer_saves == []  # the decoding kernels, not the layer
    assert slow == fast


def test_warm_up_and_steps_through_forward_build_no_graph(layer_saves, model_and_vocab):
    model, vocab = model_and_vocab
    decoder, logits = warm_up(model, vocab[list("time traveller")], fast=False)
    assert isinstance(decoder, ModelStepDecoder)
    logits = decoder.step(logits.argmax(-1))
    assert layer_saves == [False] * 4  # two layers, warm-up and one step
    assert logits.grad_fn is None and decoder.state.grad_fn is None
    fast_decoder, fast_logits = warm_up(model, vocab[list("time traveller")])
    assert not fast_decoder.state.requires_grad and len(layer_saves) == 4
