"""The backend registry: choosing a backend by name or ``auto``, for a model's layers and for
decoding; what each backend refuses, and the model configurations refused before any backend."""

import pytest
import torch

from grulm import backends
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig

V, H = 9, 6


def test_torch_backend_refuses_reset_before():
    model = GRULM(GRUConfig(V, H, backend="torch"))
    with pytest.raises(ConfigError, match="reset_after"):
        model(torch.zeros(1, 2, dtype=torch.long))


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of|must be one of"):
        GRUConfig(V, backend="nope")
    with pytest.raises(ConfigError, match="unknown backend"):
        backends.resolve("nope", "reset_before", "cpu")


def test_auto_picks_a_backend_that_supports_the_variant():
    assert "reset_before" in backends.resolve("auto", "reset_before", "cpu").variants
    assert "reset_after" in backends.resolve("auto", "reset_after", "cpu").variants


@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_auto_decoding_takes_a_backend_with_a_decode_step(variant):
    """Any dtype and device decodes: ``reference`` where nothing faster applies (``torch``
    provides no decode_step, ``cpu`` computes in float32/float64 only)."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        backend = backends.resolve("auto", variant, "cpu", dtype=dtype, capability="decode_step")
        assert backend.decode_step is not None
        assert backend.unsupported(variant, "cpu", dtype, "decode_step") is None
    bfloat16 = backends.resolve("auto", variant, "cpu", dtype=torch.bfloat16,
                                capability="decode_step")
    assert bfloat16.name == "reference"


def test_a_named_backend_that_cannot_decode_is_a_config_error():
    with pytest.raises(ConfigError, match="backend 'torch' provides no decode_step"):
        backends.resolve("torch", "reset_after", "cpu", capability="decode_step")
    with pytest.raises(ConfigError, match="computes only in float32 / float64"):
        backends.resolve("cpu", "reset_after", "cpu", dtype=torch.bfloat16,
                         capability="decode_step")
    with pytest.raises(ValueError, match="capability"):
        backends.resolve("auto", "reset_after", "cpu", capability="fly")


def test_refuses_judges_without_building():
    """A backend that cannot run a request is passed over without building anything."""
    cpu = backends.BACKENDS["cpu"]
    assert "runs only on cpu" in cpu.refuses("reset_before", "cuda")
    assert backends.BACKENDS["torch"].refuses("reset_before", "cpu").endswith("reset_after")
    assert backends.BACKENDS["reference"].refuses("reset_before", "meta") is not None


@pytest.mark.parametrize(
    "field, value",
    [("vocab_size", 0), ("hidden_size", -1), ("num_layers", 0), ("dropout", 1.0),
     ("dropout", -0.1), ("embedding_size", 0), ("variant", "lstm"), ("input_kind", "bytes")],
)
def test_bad_model_config_is_refused(field, value):
    kwargs = {"vocab_size": V, field: value}
    with pytest.raises(ConfigError, match=field):
        GRUConfig(**kwargs)
