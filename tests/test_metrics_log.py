"""The metrics log: JSON lines, truncation on resume, TensorBoard only when installed."""

import sys

import pytest

from grulm.metrics_log import MetricsLog, read_log


def test_records_are_json_lines_and_non_finite_numbers_become_null(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "step", "step": 1, "epoch": 1, "loss": 2.5, "grad_norm": float("nan")})
    log.close()
    assert read_log(tmp_path / "metrics.jsonl") == [
        {"kind": "step", "step": 1, "epoch": 1, "loss": 2.5, "grad_norm": None}]


def test_a_new_run_starts_a_new_log_and_a_resumed_one_drops_lines_past_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 6):
        log.write({"kind": "step", "step": step, "epoch": 1})
    log.close()
    MetricsLog(path, resume_step=3).close()  # the checkpoint was at step 3
    assert [r["step"] for r in read_log(path)] == [1, 2, 3]
    MetricsLog(path).close()
    assert read_log(path) == []


def test_without_tensorboard_installed_the_log_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
    log.write({"kind": "epoch", "step": 3, "epoch": 1, "loss": 1.0})
    log.close()
    assert log.tensorboard is None and not (tmp_path / "tb").exists()
    assert len(read_log(tmp_path / "metrics.jsonl")) == 1


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
    log.write({"kind": "epoch", "step": 3, "epoch": 1, "loss": 1.0, "val_loss": 1.2})
    log.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
