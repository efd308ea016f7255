"""``parameter_shapes`` names and shapes exactly what ``GRULM(config).state_dict()`` holds."""

import pytest

from grulm.model import GRULM, GRUConfig, parameter_shapes


@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize(
    "input_kind, embedding_size", [("onehot", None), ("embedding", None), ("embedding", 5)]
)
def test_parameter_shapes_match_the_built_model(variant, num_layers, input_kind, embedding_size):
    config = GRUConfig(11, 7, num_layers=num_layers, variant=variant, input_kind=input_kind,
                       embedding_size=embedding_size)
    built = {name: tuple(t.shape) for name, t in GRULM(config).state_dict().items()}
    assert parameter_shapes(config) == built


def test_parameter_shapes_of_a_huge_config_allocate_nothing():
    shapes = parameter_shapes(GRUConfig(50, 100_000, num_layers=2))
    assert shapes["gru.weight_hh_l1"] == (300_000, 100_000)
