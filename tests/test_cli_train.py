"""`grulm train` and `grulm eval` for real use: validation, metrics, best checkpoint, presets,
and bad inputs that end in one clear error with nothing lost (NaN, disk full, bad splits…)."""

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from grulm.checkpoint import files as checkpoint_files
from grulm.checkpoint import load_checkpoint
from grulm.cli import main
from grulm.metrics_log import read_log
from grulm.model import GRULM

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
# nn.GRU needs no compiled extension; one thread avoids oversubscribing a busy machine.
TINY = ["--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--backend", "torch",
        "--variant", "reset_after", "--threads", "1", "--no-progress", "--sample-every", "0",
        "--no-tensorboard", "--eval-every", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_text(shared_data, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "timemachine.txt").read_text()[:3000])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_grulm):
    """One 3-epoch run with step logs and a test split, shared by the tests that read it."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"the corpora are not in {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("cli_train")
    text = tmp / "small.txt"
    text.write_text((SHARED_DATA / "timemachine.txt").read_text()[:3000])
    env = {"GRULM_DATA_PATH": str(SHARED_DATA), "GRULM_CACHE": str(tmp / "cache")}
    out = tmp / "run"
    result = run_grulm("train", *TINY, "--data", text, "--cleaning", "d2l", "--epochs", "3",
                       "--split-fractions", "0.8,0.1,0.1", "--log-every-steps", "5",
                       "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    return out, result, env


def test_train_reports_validation_and_writes_metrics_best_and_plot(run):
    out, result, _ = run
    assert "validation perplexity" in result.stdout and "bits/char" in result.stdout
    records = read_log(out / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for r in epochs:
        assert {"loss", "perplexity", "val_loss", "val_perplexity", "lr", "tokens_per_s"} <= set(r)
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
    assert steps and all(r["step"] % 5 == 0 and r["grad_norm"] > 0 for r in steps)
    assert records[-1]["kind"] == "final" and records[-1]["stop_reason"] == "epochs"
    best = load_checkpoint(out / "best")
    assert best.meta.metrics["best_val_loss"] == min(r["val_loss"] for r in epochs)
    assert best.meta.training_state is None
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_matches_training_validation_and_reads_the_test_split(run, run_grulm):
    out, _, env = run
    final = read_log(out / "metrics.jsonl")[-1]
    result = run_grulm("eval", out, "--batch-size", "4", "--num-steps", "10", "--json", env=env)
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["loss"] == pytest.approx(final["val_loss"], rel=1e-9)
    assert scored["bits_per_token"] == pytest.approx(scored["loss"] / math.log(2))
    result = run_grulm("eval", out, "--split", "test", env=env)
    assert result.returncode == 0, result.stderr
    assert "test split" in result.stdout and "nats/char" in result.stdout
    assert "bits/char" in result.stdout


def test_eval_on_another_text_uses_the_checkpoints_vocabulary(run, run_grulm, tmp_path):
    out, _, env = run
    other = tmp_path / "other.txt"
    other.write_text("The Time Traveller (for so it will be convenient to speak of him)\n" * 5)
    result = run_grulm("eval", out, "--data", other, "--json", "--batch-size", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] > 0


def test_explicit_flags_override_the_preset_and_eval_needs_the_split(small_text, tmp_path,
                                                                     run_grulm):
    out = tmp_path / "run"
    result = run_grulm("train", "--preset", "shakespeare", *TINY, "--data", small_text,
                       "--max-steps", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(out)
    config, train = checkpoint.model.config, checkpoint.meta.train
    assert (config.hidden_size, config.variant, config.backend) == (16, "reset_after", "torch")
    assert (config.input_kind, config.embedding_size) == ("embedding", 64)  # from the preset
    assert (train["optimizer"], train["schedule"], train["batch_size"]) == ("adamw", "cosine", 4)
    assert checkpoint.meta.data.cleaning == "raw"  # the default for a local file
    assert "--max-steps 3 reached" in result.stderr
    result = run_grulm("eval", out, "--split", "test")  # a seed split: train and val only
    assert result.returncode == 2 and "there is no test split" in result.stderr
    assert "--split-fractions 0.8,0.1,0.1" in result.stderr


# --- bad inputs: one clear error, nothing lost ----------------------------------------------


def _one_error(result, *patterns):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_time_must_be_positive(tmp_path, run_grulm, value):
    _one_error(run_grulm("train", "--max-time", value, "--out", tmp_path / "o"), "--max-time")
    assert not (tmp_path / "o").exists()


def test_an_unwritable_output_directory(tmp_path, run_grulm):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _one_error(run_grulm("train", "--out", blocker / "run"), "cannot create the run directory")


@pytest.mark.parametrize("fractions, message", [
    ("0.999,0.001", "the val split has 3 tokens, too few to evaluate in 4 streams"),
    ("0.5,0.0001", "the val split (fraction 0.0001"),  # empty
    ("0.9,0", "split fractions must be > 0"),
    ("0.9,0.2", "sum to at most 1"),
])
def test_split_fractions_that_leave_a_split_unusable(small_text, tmp_path, run_grulm,
                                                     fractions, message):
    result = run_grulm("train", *TINY, "--data", small_text, "--split-fractions", fractions,
                       "--out", tmp_path / "o")
    _one_error(result, message)
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def _train_in_process(*args) -> int:
    """`grulm train …` in this process (so a test can patch the library underneath)."""
    return main(["train", *map(str, args)])


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_text, tmp_path,
                                                            monkeypatch, capsys):
    loss_of = GRULM.loss
    calls = {"training": 0}

    def poisoned(self, inputs, targets, state=None):
        loss, state = loss_of(self, inputs, targets, state)
        if self.training:
            calls["training"] += 1
            if calls["training"] > 150:  # well into epoch 3 (~62 steps an epoch)
                loss = loss * float("nan")
        return loss, state

    monkeypatch.setattr(GRULM, "loss", poisoned)
    out = tmp_path / "run"
    status = _train_in_process(*TINY, "--data", small_text, "--epochs", "5",
                               "--checkpoint-every-epochs", "1", "--out", out)
    assert status == 2
    assert "became nan in epoch 3" in capsys.readouterr().err
    checkpoint = load_checkpoint(out)
    assert checkpoint.meta.metrics["epochs"] == 2
    assert all(torch.isfinite(p).all() for p in checkpoint.model.parameters())


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_text, tmp_path,
                                                             monkeypatch, capsys):
    out = tmp_path / "run"
    save_file = checkpoint_files.save_file
    writes = {"run": 0}

    def fill_disk_on_second_run_checkpoint(tensors, path):
        if Path(path).parent == out:
            writes["run"] += 1
            if writes["run"] == 2:
                save_file(tensors, path)  # the partial file is written, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, path)

    monkeypatch.setattr(checkpoint_files, "save_file", fill_disk_on_second_run_checkpoint)
    status = _train_in_process(*TINY, "--data", small_text, "--epochs", "3",
                               "--checkpoint-every-epochs", "1", "--out", out)
    assert status == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "unchanged" in err
    checkpoint = load_checkpoint(out)  # the epoch-1 checkpoint, whole
    assert checkpoint.meta.training_state["progress"]["epoch"] == 1
    assert not list(out.glob(".tmp-*"))
