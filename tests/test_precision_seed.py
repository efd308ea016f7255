"""The seed experiment in bf16 learns as it does in float32: 30 epochs of d2l §9.1's settings
(The Time Machine's first 10,000 characters, a 1×256 reset-before GRU, one-hot input, SGD lr 1,
clipping at 1, batches of 32×35, sequential partition) end within 5 % of float32's training
perplexity."""

import pytest
import torch

from grulm import backends
from grulm.data.batches import epoch_batches
from grulm.data.prepare import load_prepared
from grulm.data.sources import resolve_source
from grulm.model import GRULM
from grulm.run import RunSpec
from grulm.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _bf16_backend() -> str:
    """The fused cpu backend where it computes in bf16 here, else the reference."""
    cpu = backends.BACKENDS["cpu"]
    return "cpu" if "bf16" in cpu.precisions and cpu.unavailable() is None else "reference"


@pytest.mark.slow
def test_thirty_seed_epochs_in_bf16_reach_float32s_perplexity(shared_data):
    corpus = load_prepared(resolve_source("timemachine").path, cleaning="d2l", token="char")
    ids = corpus.ids[:10_000]
    config = RunSpec.from_preset("d2l", epochs=30, seed=0).train

    def make_batches(rng):
        return epoch_batches(ids, config.batch_size, config.num_steps, rng, config.partition)

    perplexities = {}
    for precision in ("float32", "bf16"):
        spec = RunSpec.from_preset("d2l", epochs=30, seed=0, backend=_bf16_backend(),
                                   precision=precision)
        torch.manual_seed(config.seed)
        history = fit(GRULM(spec.model.config(len(corpus.vocab))), make_batches, config)
        assert len(history) == 30
        perplexities[precision] = history[-1].perplexity
    assert perplexities["float32"] < 15  # it learned (≈ 28 at the start)
    assert perplexities["bf16"] == pytest.approx(perplexities["float32"], rel=0.05)
