"""bf16 products: the reference's rounding (the oracle), the model's switch, the backends' rule.

The oracle must round exactly as the contract says (operands to the nearest bfloat16, float32
accumulation, the backward's products on rounded operands too), stay close to float32 on a
whole model, and leave the float32 path exactly as it was.
"""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from grulm import backends
from grulm.backends import reference
from grulm.backends.precision import check_precision, linear, project_inputs, round_bf16
from grulm.cells import layer_options
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ONE = 1.0
ULP = 2.0**-7  # bfloat16's spacing in [1, 2): 7 stored mantissa bits


def test_round_bf16_is_round_to_nearest_even():
    x = torch.tensor([ONE + ULP / 2, ONE + 3 * ULP / 2, ONE + ULP / 2 + 2.0**-20, -ONE - ULP / 4])
    assert round_bf16(x).tolist() == [ONE, ONE + 2 * ULP, ONE + ULP, -ONE]
    assert round_bf16(x).dtype == torch.float32


def test_a_bf16_product_rounds_its_operands_and_accumulates_in_float32():
    x = torch.tensor([[ONE + 3 * ULP / 8, 3.0]])  # 1 + 3/8 ULP rounds down to 1
    w = torch.tensor([[ONE, 2.0**-10]])  # bfloat16 values
    assert linear(x, w, "float32").item() == ONE + 6 * 2.0**-10
    assert linear(x, w, "bf16").item() == ONE + 3 * 2.0**-10
    # float32 accumulation: 1 + 3·2^-10 is not a bfloat16, yet the sum keeps it
    assert linear(torch.tensor([[ONE, 3.0]]), w, "bf16").item() == ONE + 3 * 2.0**-10


def test_the_backward_products_see_rounded_operands():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=generator, requires_grad=True)
    w = torch.randn(3, 7, generator=generator, requires_grad=True)
    grad = torch.randn(5, 3, generator=generator)
    linear(x, w, "bf16").backward(grad)
    rx, rw, rg = round_bf16(x.detach()), round_bf16(w.detach()), round_bf16(grad)
    torch.testing.assert_close(x.grad, rg @ rw, rtol=0, atol=1e-6)
    torch.testing.assert_close(w.grad, rg.T @ rx, rtol=0, atol=1e-6)
    unrounded = grad @ w.detach()
    assert (x.grad - unrounded).abs().max() > 1e-4  # the rounding is visible in the gradient


def test_one_hot_input_is_gathered_exactly_in_bf16():
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(6, 10, generator=generator), torch.randn(6, generator=generator)
    ids = torch.randint(0, 10, (2, 4), generator=generator)
    assert torch.equal(project_inputs(ids, weight, bias, "bf16"), weight.T[ids] + bias)
    features = torch.randn(2, 4, 10, generator=generator)
    assert torch.equal(project_inputs(features, weight, bias, "bf16"),
                       round_bf16(features) @ round_bf16(weight).T + bias)


@pytest.mark.parametrize("bad, hint", [("fp16", "float16 is not supported"),
                                       ("bfloat16", "write it bf16"), ("BF16", "write it bf16"),
                                       ("float", "write it float32"), ("int8", None),
                                       (16, None)])
def test_unknown_precisions_are_refused_with_the_names_to_use(bad, hint):
    with pytest.raises(ConfigError, match="precision must be one of float32, bf16") as error:
        check_precision(bad)
    assert hint is None or hint in str(error.value)
    with pytest.raises(ConfigError, match="precision must be one of"):
        GRUConfig(28, precision=bad)


def _textbook_gru_layer(x_ids, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """A reset-before GRU layer with today's float32 expressions, for the exactness check."""
    inputs = F.embedding(x_ids, weight_ih.T) + bias_ih
    W_hr, W_hz, W_hn = weight_hh.chunk(3)
    b_hr, b_hz, b_hn = bias_hh.chunk(3)
    H, outputs = h0, []
    for X in inputs.unbind(1):
        X_r, X_z, X_n = X.chunk(3, dim=-1)
        R = torch.sigmoid(X_r + H @ W_hr.T + b_hr)
        Z = torch.sigmoid(X_z + H @ W_hz.T + b_hz)
        H_tilde = torch.tanh(X_n + (R * H) @ W_hn.T + b_hn)
        H = Z * H + (1 - Z) * H_tilde
        outputs.append(H)
    return torch.stack(outputs, dim=1), H


def test_float32_is_exactly_the_plain_float32_arithmetic():
    generator = torch.Generator().manual_seed(2)
    H, V, B, T = 8, 11, 3, 5
    params = [torch.randn(shape, generator=generator) for shape in
              ((3 * H, V), (3 * H, H), (3 * H,), (3 * H,))]
    ids = torch.randint(0, V, (B, T), generator=generator)
    h0 = torch.randn(B, H, generator=generator)
    results = []
    for layer in (_textbook_gru_layer,
                  lambda *a: reference.gru_layer(*a, reset_after=False),
                  lambda *a: reference.gru_layer(*a, reset_after=False, precision="float32")):
        leaves = [p.clone().requires_grad_() for p in params]
        out, h_T = layer(ids, h0, *leaves)
        (out.square().sum() + h_T.sum()).backward()
        results.append([out, h_T, *(p.grad for p in leaves)])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_float32_layer_calls_pass_no_precision(monkeypatch):
    """Backends that know nothing of precisions keep working: float32 passes none."""
    assert "precision" not in layer_options("gru", "both", "reset_before")
    assert "precision" not in layer_options("lstm", "both", "reset_before", "float32")
    assert layer_options("gru", "both", "reset_after", "bf16") == {"reset_after": True,
                                                                   "precision": "bf16"}
    seen = []

    def spy(*args, **options):
        seen.append(options)
        return reference.gru_layer(*args, **options)

    monkeypatch.setitem(backends.BACKENDS, "reference",
                        dataclasses.replace(backends.BACKENDS["reference"], gru_layer=spy))
    ids = torch.randint(0, 28, (2, 3))
    for precision in ("float32", "bf16"):
        GRULM(GRUConfig(28, 8, backend="reference", precision=precision))(ids)
    assert seen == [{"reset_after": False}, {"reset_after": False, "precision": "bf16"}]


def _loss_and_grads(config: GRUConfig, inputs, targets):
    torch.manual_seed(0)
    model = GRULM(config)
    loss, _ = model.loss(inputs, targets)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_bf16_oracle_stays_close_to_float32_on_a_two_layer_model(variant, input_kind):
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, 28, (8, 20), generator=generator)
    targets = torch.randint(0, 28, (8, 20), generator=generator)
    settings = {"vocab_size": 28, "hidden_size": 64, "num_layers": 2, "variant": variant,
                "input_kind": input_kind, "init": "torch", "backend": "reference"}
    loss32, grads32 = _loss_and_grads(GRUConfig(**settings), inputs, targets)
    loss16, grads16 = _loss_and_grads(GRUConfig(**settings, precision="bf16"), inputs, targets)
    assert grads16.keys() == grads32.keys()
    assert not any(torch.equal(grads16[name], g) for name, g in grads32.items()
                   if name != "head.bias")  # it really rounds (the head's bias sees no product)
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    for name, g32 in grads32.items():
        cosine = F.cosine_similarity(grads16[name].flatten(), g32.flatten(), dim=0)
        assert cosine >= 0.999, (name, cosine.item())


@pytest.mark.parametrize("cell", ["rnn", "lstm", "mingru"])
def test_the_other_reference_cells_compute_in_bf16_too(cell):
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randint(0, 28, (4, 12), generator=generator)
    settings = {"vocab_size": 28, "hidden_size": 32, "num_layers": 2, "cell": cell,
                "input_kind": "embedding", "init": "torch", "backend": "reference"}
    loss32, grads32 = _loss_and_grads(GRUConfig(**settings), inputs, inputs)
    loss16, grads16 = _loss_and_grads(GRUConfig(**settings, precision="bf16"), inputs, inputs)
    assert not torch.equal(grads16[f"{cell}.weight_ih_l1"], grads32[f"{cell}.weight_ih_l1"])
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)


def test_backends_declare_their_precisions_and_resolve_refuses_the_others():
    assert backends.BACKENDS["reference"].precisions == ("float32", "bf16")
    assert backends.BACKENDS["torch"].precisions == ("float32",)
    with pytest.raises(ConfigError, match="backend 'torch' computes its products only in "
                       "float32; precision bf16 runs on: reference"):
        backends.resolve("torch", "reset_after", "cpu", precision="bf16")
    assert "bf16" in backends.resolve("auto", "reset_after", "cpu", precision="bf16").precisions
    with pytest.raises(ConfigError, match="rounds the products of float32 parameters; these "
                       "are float64"):
        backends.resolve("auto", "reset_before", "cpu", precision="bf16", dtype=torch.float64)
    with pytest.raises(ConfigError, match="backend 'torch' computes its products only in float32"):
        GRUConfig(28, backend="torch", variant="reset_after", precision="bf16")


def test_a_float64_model_in_bf16_is_refused_before_it_runs():
    model = GRULM(GRUConfig(28, 8, backend="reference", precision="bf16")).double()
    with pytest.raises(ConfigError, match="convert the model to float32"):
        model(torch.zeros(1, 2, dtype=torch.int64))


def test_config_round_trip_and_float32_configs_as_before_precisions_existed():
    config = GRUConfig(28, 16, precision="bf16")
    assert config.to_dict()["precision"] == "bf16"
    assert GRUConfig.from_dict(config.to_dict()) == config
    float32 = GRUConfig(28, 16).to_dict()
    assert "precision" not in float32  # written as before precisions existed
    assert GRUConfig.from_dict(float32).precision == "float32"


def test_set_precision_switches_the_arithmetic_not_the_weights():
    torch.manual_seed(0)
    model = GRULM(GRUConfig(28, 32, backend="reference", init="torch"))
    ids = torch.randint(0, 28, (2, 9))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits32, _ = model(ids)
    model.set_precision("bf16")
    logits16, _ = model(ids)
    assert model.config.precision == "bf16" and not torch.equal(logits16, logits32)
    torch.testing.assert_close(logits16, logits32, rtol=0, atol=5e-2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="precision must be one of"):
        model.set_precision("fp16")


def _cpu_bf16_reason() -> str | None:
    cpu = backends.BACKENDS["cpu"]
    if "bf16" not in cpu.precisions:
        return "the cpu backend has no bf16 path here"
    return cpu.unavailable()


@pytest.mark.skipif(_cpu_bf16_reason() is not None, reason=str(_cpu_bf16_reason()))
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_cpu_bf16_matches_the_oracle(variant):
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randint(0, 28, (6, 15), generator=generator)
    settings = {"vocab_size": 28, "hidden_size": 48, "num_layers": 2, "variant": variant,
                "init": "torch", "precision": "bf16"}
    loss_ref, grads_ref = _loss_and_grads(GRUConfig(**settings, backend="reference"), inputs,
                                          inputs)
    loss_cpu, grads_cpu = _loss_and_grads(GRUConfig(**settings, backend="cpu"), inputs, inputs)
    assert loss_cpu == pytest.approx(loss_ref, rel=1e-4)
    for name, g in grads_ref.items():
        cosine = F.cosine_similarity(grads_cpu[name].flatten(), g.flatten(), dim=0)
        assert cosine >= 0.9999, (name, cosine.item())
