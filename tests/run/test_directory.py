"""A run directory as a guarded resource: refusal of an existing run, overwrite of only what a
run writes, a lock that a second writer cannot take, and the sweep of a killed run's leftovers."""

import json
import os
import subprocess
import sys

import pytest

from grulm.errors import CheckpointError, ConfigError
from grulm.run.directory import (
    LOCK_FILE,
    RunLockedError,
    describe_run,
    open_run_directory,
)


def _fake_run(directory, step=120, epochs=3, best_val_loss=2.0):
    """The files a finished run leaves (contents do not matter to the guard)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "grulm-checkpoint", "metrics": {"step": step, "epochs": epochs,
                                                      "best_val_loss": best_val_loss},
            "training_state": {}, "tensors_file": "tensors-0123456789abcdef.safetensors"}
    (directory / "checkpoint.json").write_text(json.dumps(meta))
    (directory / "tensors-0123456789abcdef.safetensors").write_bytes(b"weights")
    (directory / "metrics.jsonl").write_text('{"kind": "epoch", "step": 1}\n')
    (directory / "perplexity.png").write_bytes(b"png")
    (directory / "best").mkdir(exist_ok=True)
    best = {k: v for k, v in meta.items() if k != "training_state"}  # a model, no state
    (directory / "best" / "checkpoint.json").write_text(json.dumps(best))
    (directory / "best" / "tensors-0123456789abcdef.safetensors").write_bytes(b"best")
    return directory


def _snapshot(directory):
    return {path.relative_to(directory): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_new_run_refuses_a_directory_that_holds_one_and_changes_nothing(tmp_path):
    run = _fake_run(tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(ConfigError) as error:
        open_run_directory(run, "new")
    message = str(error.value)
    assert "already holds a run (step 120, epoch 3, best validation perplexity 7.39)" in message
    assert f"--resume {run}" in message and "--overwrite" in message
    assert _snapshot(run) == before and not (run / LOCK_FILE).exists()


@pytest.mark.parametrize("inside", ["best", "best/deeper", "anything"])
def test_a_run_inside_another_run_directory_is_refused(tmp_path, inside):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="lies inside the run directory"):
        open_run_directory(run / inside, "overwrite")


def test_overwrite_removes_what_a_run_writes_and_keeps_everything_else(tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "best" / "keep.me").write_text("mine too")
    with open_run_directory(run, "overwrite") as directory:
        directory.clear_previous_run()
        assert describe_run(run) is None
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_FILE, "notes.txt", "best"])
    assert [p.name for p in (run / "best").iterdir()] == ["keep.me"]


def test_a_directory_created_for_a_run_that_never_wrote_is_removed_again(tmp_path):
    with open_run_directory(tmp_path / "new" / "run", "new"):
        assert (tmp_path / "new" / "run" / LOCK_FILE).is_file()
    assert not (tmp_path / "new" / "run").exists()


def test_a_second_writer_is_refused_at_once_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom grulm.run.directory import open_run_directory\n"
         f"d = open_run_directory({str(run)!r}, 'new')\nprint('locked', flush=True)\n"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            open_run_directory(run, "overwrite")
    finally:
        holder.kill()  # a killed holder's lock goes with it
        holder.wait()
    with open_run_directory(run, "overwrite") as directory:
        assert (directory.path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_sweep_removes_leftovers_of_a_killed_run_and_nothing_else(tmp_path):
    run = _fake_run(tmp_path / "run")
    leftovers = [run / ".metrics.jsonl.part", run / ".perplexity.png.part",
                 run / "tensors-fedcba9876543210.safetensors",
                 run / "best" / "tensors-fedcba9876543210.safetensors"]
    for path in leftovers:
        path.write_bytes(b"partial")
    (run / "mine.part").write_text("not grulm's")
    with open_run_directory(run, "resume") as directory:
        removed = directory.sweep()
    assert sorted(removed) == sorted(leftovers)
    assert (run / "mine.part").is_file()
    assert (run / "tensors-0123456789abcdef.safetensors").is_file()
    assert (run / "best" / "tensors-0123456789abcdef.safetensors").is_file()


def test_resume_of_a_read_only_directory_says_how_to_make_it_writable(tmp_path, monkeypatch):
    run = _fake_run(tmp_path / "run")
    # root may write anywhere: stand in for a user without write permission
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="chmod u\\+w") as error:
        open_run_directory(run, "resume")
    assert "--out" not in str(error.value)


def test_resume_needs_a_resumable_checkpoint_and_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_run_directory(tmp_path / "missing", "resume")
    assert not (tmp_path / "missing").exists()
    run = _fake_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no training state.*not its best/ copy"):
        open_run_directory(run / "best", "resume")
    assert not (run / "best" / LOCK_FILE).exists()
