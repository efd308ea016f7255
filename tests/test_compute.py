"""A step's arithmetic, counted, and the refusal of a run whose one step outlasts --max-time."""

import pytest
import torch

from grulm import compute
from grulm.compute import check_step_fits_time, matmul_flops_per_second, step_flops
from grulm.errors import ConfigError
from grulm.model import GRUConfig


def test_step_flops_counts_gates_head_and_backward():
    H, V, E, B, T = 8, 5, 3, 2, 4
    onehot = GRUConfig(vocab_size=V, hidden_size=H, num_layers=2)
    # layer 0 gathers rows (one-hot), so only its hidden product counts; layer 1 has both
    assert step_flops(onehot, B, T) == 6 * B * T * (3 * H * H + 3 * H * 2 * H + V * H)
    embedded = GRUConfig(vocab_size=V, hidden_size=H, input_kind="embedding", embedding_size=E)
    assert step_flops(embedded, B, T) == 6 * B * T * (3 * H * (E + H) + V * H)


@pytest.mark.parametrize("cell, gates, per_layer", [
    ("lstm", "both", lambda n, H: 4 * H * (n + H)), ("rnn", "both", lambda n, H: H * (n + H)),
    ("gru", "update", lambda n, H: 2 * H * (n + H)), ("mingru", "both", lambda n, H: 2 * H * n)])
def test_step_flops_follow_the_cell(cell, gates, per_layer):
    H, V, E, B, T = 8, 5, 3, 2, 4
    config = GRUConfig(vocab_size=V, hidden_size=H, num_layers=2, input_kind="embedding",
                       embedding_size=E, cell=cell, gates=gates)
    assert step_flops(config, B, T) == 6 * B * T * (per_layer(E, H) + per_layer(H, H) + V * H)


def test_the_probe_measures_a_plausible_throughput_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    rate = matmul_flops_per_second(32, 64, torch.device("cpu"))
    assert 1e8 < rate < 1e14  # between a slow laptop core and a large accelerator
    assert torch.get_num_threads() == threads


def test_a_run_whose_one_step_cannot_finish_in_time_is_refused(monkeypatch):
    monkeypatch.setattr(compute, "matmul_flops_per_second", lambda *args: 1e11)
    deep = GRUConfig(vocab_size=28, hidden_size=256, num_layers=1000)  # 2.64 TFLOP a step
    with pytest.raises(ConfigError, match="takes at least 26 s here .* --max-time 8"):
        check_step_fits_time(deep, 32, 35, 8.0, torch.device("cpu"))
    check_step_fits_time(deep, 32, 35, 60.0, torch.device("cpu"))
    check_step_fits_time(deep, 32, 35, None, torch.device("cpu"))  # no budget, no check
