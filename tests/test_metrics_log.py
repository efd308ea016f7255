"""The metrics log: JSON lines, truncation on resume, TensorBoard only when installed."""

import errno
import sys
from pathlib import Path

import pytest

from grulm.metrics_log import AuxiliaryFileWarning, MetricsLog, read_log


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


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_resume_that_cannot_rewrite_the_log_warns_once_and_leaves_no_temporary(tmp_path,
                                                                               monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 4):
        log.write({"kind": "step", "step": step, "epoch": 1})
    log.close()
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.warns(AuxiliaryFileWarning, match="No space left on device") as caught:
        log = MetricsLog(path, resume_step=2)
        log.write({"kind": "step", "step": 3, "epoch": 1})
        log.close()
    assert len(caught) == 1 and not log.active
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_a_write_that_fails_midway_warns_once_and_logging_stops(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"kind": "step", "step": 1, "epoch": 1})
    log._file.write = _disk_full  # the disk fills up between two records
    with pytest.warns(AuxiliaryFileWarning) as caught:
        log.write({"kind": "step", "step": 2, "epoch": 1})
        log.write({"kind": "step", "step": 3, "epoch": 1})
    log.close()
    assert len(caught) == 1
    assert [r["step"] for r in read_log(path)] == [1]


def test_a_record_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n{"kind": "st')
    MetricsLog(path, resume_step=5).close()
    assert [r["step"] for r in read_log(path)] == [1, 2]
