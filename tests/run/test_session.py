"""grulm.run from Python: the same run as `grulm train`, to every printed digit of `grulm
eval`; start + resume equals one run; hooks see the run; a v1 checkpoint directory written by
an earlier grulm still loads for generate, eval, info and resume."""

import shutil
from pathlib import Path

import pytest

from grulm.checkpoint import load_checkpoint
from grulm.cli import main
from grulm.run import RunHook, RunSpec, resume, start

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1-run"
pytestmark = pytest.mark.usefixtures("one_thread")


def _eval(run_grulm, out) -> str:
    result = run_grulm("eval", out)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_python_runs_equal_the_command_to_every_printed_digit(shared_data, tmp_path,
                                                              run_grulm):
    cli = run_grulm("train", "--data", "timemachine", "--epochs", "4", "--seed", "0",
                    "--threads", "1", "--no-progress", "--out", tmp_path / "cli")
    assert cli.returncode == 0, cli.stderr
    spec = RunSpec.from_preset("d2l", data="timemachine", epochs=4, seed=0)
    straight = start(spec, tmp_path / "python")
    assert (straight.epochs, straight.stop_reason) == (4, "epochs")
    half = start(spec.replace(epochs=2), tmp_path / "resumed")
    assert half.epochs == 2
    resumed = resume(tmp_path / "resumed", epochs=4)
    assert resumed.epochs == 4 and resumed.val_loss == straight.val_loss
    printed = _eval(run_grulm, tmp_path / "cli")
    assert "perplexity" in printed
    assert _eval(run_grulm, tmp_path / "python") == printed
    assert _eval(run_grulm, tmp_path / "resumed") == printed


class Recorder(RunHook):
    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append(("start", run.resumed, run.progress.step, run.backend))

    def on_epoch(self, progress, stats):
        self.events.append(("epoch", stats.epoch))

    def should_stop(self):
        return "asked" if len(self.events) >= 3 else None  # stop after the second epoch

    def on_finish(self, run, result):
        self.events.append(("finish", result.stop_reason, result.epochs))


def test_hooks_see_the_run_and_may_stop_it(small_corpus, tmp_path):
    recorder = Recorder()
    spec = RunSpec.from_preset("d2l", data=str(small_corpus), hidden_size=16, batch_size=4,
                               num_steps=10, epochs=5, backend="torch",
                               variant="reset_after", tensorboard=False)
    result = start(spec, tmp_path / "run", hooks=[recorder])
    assert recorder.events == [("start", False, 0, "torch"), ("epoch", 1), ("epoch", 2),
                               ("finish", "asked", 2)]
    assert result.stop_reason == "asked" and result.best == tmp_path / "run" / "best"
    assert result.metrics == tmp_path / "run" / "metrics.jsonl" and result.plot.is_file()
    saved = load_checkpoint(tmp_path / "run")
    assert saved.meta.training_state["progress"]["epoch"] == 2
    assert saved.meta.run["tensorboard"] is False


class _Crash(RunHook):
    def on_step(self, progress, stats):
        if stats.step == 3:
            raise KeyboardInterrupt  # a kill after the step-2 checkpoint


def test_a_checkpoint_written_mid_epoch_times_the_run(small_corpus, tmp_path):
    """A run killed in its first epoch leaves a checkpoint whose seconds and throughput are
    the run's so far (what a resume counts against --max-time)."""
    spec = RunSpec.from_preset("d2l", data=str(small_corpus), hidden_size=16, batch_size=4,
                               num_steps=10, epochs=5, checkpoint_every_steps=2,
                               tensorboard=False)
    with pytest.raises(KeyboardInterrupt):
        start(spec, tmp_path / "run", hooks=[_Crash()])
    saved = load_checkpoint(tmp_path / "run").meta
    progress = saved.training_state["progress"]
    assert (progress["epoch"], progress["batch"]) == (0, 2)
    assert progress["seconds"] > 0 and progress["epoch_seconds"] > 0
    assert saved.metrics["train_seconds"] == progress["seconds"]
    assert saved.metrics["tokens_per_s"] > 0


@pytest.fixture
def small_corpus(shared_data, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "timemachine.txt").read_text()[:3000])
    return path


@pytest.fixture
def v1_run(shared_data, tmp_path):
    """A copy of the committed v1 run directory (tests never write into the repository)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "v1-run"))


def test_a_v1_run_directory_loads_for_info_generate_and_eval(v1_run, capsys):
    assert main(["info", str(v1_run)]) == 0
    assert "format       v1, written by grulm 0.1.0" in capsys.readouterr().out
    assert main(["generate", str(v1_run / "best"), "--num-preds", "10"]) == 0
    assert capsys.readouterr().out.startswith("time traveller")
    assert main(["eval", str(v1_run)]) == 0
    assert "timemachine val split (tokens 153,522–170,580)" in capsys.readouterr().out


def test_a_v1_run_resumes_from_python_and_the_command(v1_run, capsys):
    result = resume(v1_run, epochs=3, backend="reference")
    assert (result.epochs, result.step) == (3, 87)  # 29 steps an epoch, as saved
    assert main(["train", "--resume", str(v1_run), "--epochs", "4", "--no-progress"]) == 0
    assert "resuming at epoch 4, step 87" in capsys.readouterr().err
