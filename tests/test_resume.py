"""`grulm train --resume`: 6 epochs == 3 + stop + 3, a SIGTERM mid-epoch from another
process, and refusals (different model, data or vocabulary; no checkpoint; nothing left)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grulm.checkpoint import load_checkpoint
from grulm.metrics_log import read_log

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

# A tiny model on a small local text: each run takes seconds. nn.GRU (the torch backend) needs
# no compiled extension (each test has a fresh cache); one thread avoids oversubscription.
TINY = ["--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--backend", "torch",
        "--variant", "reset_after", "--threads", "1", "--no-progress", "--sample-every", "0",
        "--no-tensorboard", "--eval-every", "1"]


@pytest.fixture
def small_text(shared_data, tmp_path):
    """The first 3,000 characters of The Time Machine's text, as a local file."""
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "timemachine.txt").read_text()[:3000])
    return path


def _epochs(run_dir):
    return [(r["epoch"], r["loss"], r.get("val_loss"))
            for r in read_log(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def test_six_epochs_equal_three_then_resume_three(small_text, tmp_path, run_grulm):
    # A schedule without a horizon: a 3-epoch run is then the first half of a 6-epoch one.
    flags = [*TINY, "--data", small_text, "--optimizer", "adamw", "--lr", "0.01",
             "--schedule", "step", "--step-size", "50", "--warmup-steps", "5",
             "--input", "embedding", "--num-layers", "2", "--dropout", "0.2"]
    straight = run_grulm("train", *flags, "--epochs", "6", "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    first = run_grulm("train", *flags, "--epochs", "3", "--out", tmp_path / "split")
    assert first.returncode == 0, first.stderr
    resumed = run_grulm("train", "--resume", tmp_path / "split", "--epochs", "6",
                        "--threads", "1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 4" in resumed.stderr
    assert len(_epochs(tmp_path / "straight")) == 6
    assert _epochs(tmp_path / "split") == _epochs(tmp_path / "straight")
    assert _samples(straight.stdout) and _samples(straight.stdout) == _samples(resumed.stdout)


def test_sigterm_mid_epoch_saves_and_resume_continues_the_same_trajectory(
    small_text, tmp_path, run_grulm
):
    flags = [*TINY, "--data", small_text, "--log-every-steps", "1",
             "--checkpoint-every-epochs", "0"]
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "grulm.cli", "train", *map(str, flags), "--epochs", "1000",
         "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:  # wait until it is well into epoch 2, then stop it from outside
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            log = run_dir / "metrics.jsonl"
            records = read_log(log) if log.is_file() else []
            if any(r["kind"] == "step" and r["epoch"] == 2 for r in records):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and f"grulm train --resume {run_dir}" in stderr
    saved = load_checkpoint(run_dir).meta.training_state["progress"]
    stop_epoch = saved["epoch"] + 1  # the epoch it was in
    assert saved["step"] > 0

    resumed = run_grulm("train", "--resume", run_dir, "--epochs", stop_epoch + 1,
                        "--threads", "1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    straight = run_grulm("train", *flags, "--epochs", stop_epoch + 1, "--out",
                         tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    assert _epochs(run_dir) == _epochs(tmp_path / "straight")
    steps = [r for r in read_log(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # no gap, no repeat


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, run_grulm):
    """A finished 2-epoch run, shared by the tests that only read it or are refused."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"the corpora are not in {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("resume")
    text = tmp / "small.txt"
    text.write_text((SHARED_DATA / "timemachine.txt").read_text()[:3000])
    env = {"GRULM_DATA_PATH": str(SHARED_DATA), "GRULM_CACHE": str(tmp / "cache")}
    run_dir = tmp / "done"
    result = run_grulm("train", *TINY, "--data", text, "--epochs", "2", "--out", run_dir,
                       env=env)
    assert result.returncode == 0, result.stderr
    return run_dir, env


def _one_error(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_resume_with_different_settings_refuses_and_lists_every_difference(finished_run,
                                                                            run_grulm):
    run_dir, env = finished_run
    before = (run_dir / "checkpoint.json").read_text()
    stderr = _one_error(run_grulm("train", "--resume", run_dir, "--epochs", "4",
                                  "--hidden-size", "32", "--num-layers", "2", "--lr", "0.5",
                                  "--min-freq", "50", env=env))
    assert "cannot resume" in stderr
    for expected in ("model.hidden_size: 16 in the checkpoint, 32 now",
                     "model.num_layers: 1 in the checkpoint, 2 now",
                     "train.lr: 1.0 in the checkpoint, 0.5 now",
                     "vocabulary: 61 tokens in the checkpoint, 17 now"):
        assert expected in stderr
    assert (run_dir / "checkpoint.json").read_text() == before


def test_resume_with_different_data_lists_the_differences(finished_run, tmp_path, run_grulm):
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox jumps over the lazy dog " * 80)
    run_dir, env = finished_run
    stderr = _one_error(run_grulm("train", "--resume", run_dir, "--epochs", "4", "--data",
                                  other, env=env))
    assert "data.sha256" in stderr and "data.source" in stderr and "vocabulary" in stderr


def test_resume_with_nothing_left_to_do(finished_run, run_grulm):
    run_dir, env = finished_run
    stderr = _one_error(run_grulm("train", "--resume", run_dir, env=env))
    assert "nothing left to do" in stderr and "--epochs" in stderr


def test_resume_from_a_directory_without_checkpoint(tmp_path, run_grulm):
    stderr = _one_error(run_grulm("train", "--resume", tmp_path))
    assert "holds no checkpoint" in stderr


def test_resume_from_the_best_copy_is_refused(finished_run, run_grulm):
    run_dir, env = finished_run
    stderr = _one_error(run_grulm("train", "--resume", run_dir / "best", "--epochs", "3",
                                  env=env))
    assert "no training state" in stderr


def test_checkpoint_json_stays_plain_json(finished_run):
    meta = json.loads((finished_run[0] / "checkpoint.json").read_text())
    state = meta["training_state"]
    assert state["progress"]["epoch"] == 2 and state["progress"]["batch"] == 0
    assert {"optimizer", "schedule"} <= set(state)


def _samples(stdout: str) -> list[str]:
    """The greedy samples `grulm train` prints after its `perplexity …` line."""
    lines = stdout.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("perplexity "))
    return lines[last + 1 :]
