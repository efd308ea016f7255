"""Every cell through the real command: train, info, generate (every strategy) on its
checkpoint; an LSTM stopped mid-epoch resumes on the same trajectory, its (h, c) saved; a
format-v1 checkpoint loads as a GRU; bad cell settings are one line and write nothing."""

import json

import pytest

from grulm import memory
from grulm.checkpoint import load_checkpoint
from grulm.metrics_log import read_log

TINY = ["--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--threads", "1",
        "--no-progress", "--sample-every", "0", "--no-tensorboard", "--input", "embedding",
        "--embedding-size", "8"]
STRATEGIES = [[], ["--strategy", "sample", "--top-k", "5"],
              ["--strategy", "sample", "--top-p", "0.9"], ["--strategy", "beam"]]


@pytest.fixture
def small_text(shared_data, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "timemachine.txt").read_text()[:3000])
    return path


@pytest.mark.parametrize("cell, label", [
    (["--cell", "rnn"], "RNN"), (["--cell", "lstm", "--num-layers", "2", "--dropout", "0.1"],
                                 "LSTM"),
    (["--cell", "mingru", "--num-layers", "2"], "minGRU"),
    (["--gates", "update"], "reset_before GRU (update gate only)"),
    (["--gates", "none", "--variant", "reset_after"], "reset_after GRU (no gates)")])
def test_each_cell_trains_describes_itself_and_generates(cell, label, small_text, tmp_path,
                                                         run_grulm):
    out = tmp_path / "run"
    result = run_grulm("train", *TINY, *cell, "--data", small_text, "--max-steps", "5",
                       "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"1×16 {label}" in result.stderr or f"2×16 {label}" in result.stderr
    checkpoint = load_checkpoint(out)
    config = checkpoint.model.config
    info = run_grulm("info", out)
    assert f"{label}, embedding input" in info.stdout
    trained = sum(p.numel() for p in checkpoint.model.parameters())  # no zero bias_hh buffer
    buffers = sum(b.numel() for b in checkpoint.model.buffers())
    assert trained == memory.parameter_count(config) - buffers
    assert f"; {trained:,} parameters" in info.stdout
    assert json.loads(run_grulm("info", out, "--json").stdout)["model_config"]["cell"] == \
        config.cell
    for strategy in STRATEGIES:
        generated = run_grulm("generate", out, "--prefix", "the", "--num-preds", "12",
                              *strategy)
        assert generated.returncode == 0, generated.stderr
        text = generated.stdout.removesuffix("\n")
        assert text.startswith("the") and len(text) == 3 + 12, text
    evaluated = run_grulm("eval", out)
    assert evaluated.returncode == 0 and "perplexity" in evaluated.stdout


def _steps(run_dir):
    return [(r["step"], r["loss"]) for r in read_log(run_dir / "metrics.jsonl")
            if r["kind"] == "step"]


def test_an_lstm_stopped_mid_epoch_resumes_with_its_memory_cell(small_text, tmp_path,
                                                                run_grulm):
    flags = [*TINY, "--cell", "lstm", "--num-layers", "2", "--dropout", "0.2", "--data",
             small_text, "--log-every-steps", "1", "--optimizer", "adam", "--lr", "0.01"]
    straight = run_grulm("train", *flags, "--max-steps", "8", "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    first = run_grulm("train", *flags, "--max-steps", "4", "--out", tmp_path / "split")
    assert first.returncode == 0, first.stderr
    saved = load_checkpoint(tmp_path / "split")
    h, c = saved.state_tensors["hidden"], saved.state_tensors["hidden_cell"]
    assert h.shape == c.shape == (2, 4, 16) and not h.equal(c)
    resumed = run_grulm("train", "--resume", tmp_path / "split", "--max-steps", "8",
                        "--threads", "1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert len(_steps(tmp_path / "straight")) == 8
    assert _steps(tmp_path / "split") == _steps(tmp_path / "straight")
    other = run_grulm("train", "--resume", tmp_path / "split", "--cell", "gru",
                      "--max-steps", "9", "--no-progress")
    assert other.returncode == 2
    assert "model.cell: 'lstm' in the checkpoint, 'gru' now" in other.stderr


def test_a_checkpoint_without_a_cell_loads_as_a_gru():
    fixture = load_checkpoint("tests/fixtures/v1-run")
    assert (fixture.model.config.cell, fixture.model.config.gates) == ("gru", "both")
    raw = json.loads(next(fixture.directory.glob("checkpoint.json")).read_text())
    assert "cell" not in raw["model_config"]


@pytest.mark.parametrize("flags, message", [
    (["--cell", "transformer"],
     "unknown cell 'transformer'; choose one of: gru, rnn, lstm, mingru"),
    (["--cell", "lstm", "--gates", "update"],
     "--gates 'update' applies only to --cell gru (it ablates the GRU's gates); the LSTM cell "
     "has none to switch off: drop --gates or use --cell gru"),
    (["--cell", "mingru", "--backend", "cpu"],
     "--backend 'cpu' implements only the GRU cell; the minGRU cell runs on: reference, torch, "
     "auto"),
])
def test_bad_cell_settings_are_one_line_and_write_nothing(flags, message, tmp_path, run_grulm):
    out = tmp_path / "run"
    result = run_grulm("train", *flags, "--epochs", "1", "--no-progress", "--out", out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"grulm train: error: {message}"]
    assert not out.exists()
