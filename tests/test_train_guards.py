"""`grulm train` never loses a run: a second run into the same directory is refused (the first
stays byte-identical) unless --overwrite; two writers cannot share a directory; a full disk, a
kill -9 or an edited checkpoint end in one clear line with the last checkpoint safe; --max-time
holds even when one step is long. Real processes, real files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grulm.run.hooks as run_hooks
from grulm.checkpoint import load_checkpoint
from grulm.cli import main

TINY = ["--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--backend", "torch",
        "--variant", "reset_after", "--threads", "1", "--no-progress", "--sample-every", "0",
        "--no-tensorboard"]


@pytest.fixture
def small_text(shared_data, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text((shared_data / "timemachine.txt").read_text()[:3000])
    return path


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _leftovers(directory: Path) -> list[str]:
    """Temporary files, and weights files no checkpoint.json names."""
    found = []
    for path in directory.rglob("*"):
        if path.name.endswith(".part") or path.name.startswith(".tmp"):
            found.append(str(path))
        elif path.name.startswith("tensors-"):
            meta = json.loads((path.parent / "checkpoint.json").read_text()) \
                if (path.parent / "checkpoint.json").is_file() else {}
            if meta.get("tensors_file") != path.name:
                found.append(str(path))
    return found


def test_a_second_train_into_a_run_is_refused_and_the_first_stays_byte_identical(
    small_text, tmp_path, run_grulm
):
    out = tmp_path / "run"
    first = run_grulm("train", *TINY, "--data", small_text, "--epochs", "2", "--out", out)
    assert first.returncode == 0, first.stderr
    before = _snapshot(out)
    again = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1", "--seed", "5",
                      "--out", out)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert f"{out} already holds a run (step " in again.stderr
    assert f"--resume {out}" in again.stderr and "--overwrite" in again.stderr
    assert _snapshot(out) == before
    best = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1", "--out",
                     out / "best")
    assert best.returncode == 2 and "lies inside the run directory" in best.stderr
    assert _snapshot(out) == before

    replaced = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1", "--seed", "5",
                         "--overwrite", "--out", out)
    assert replaced.returncode == 0, replaced.stderr
    assert load_checkpoint(out).meta.train["seed"] == 5
    assert load_checkpoint(out / "best").meta.metrics["epochs"] == 1
    assert _leftovers(out) == []


def _train_until_checkpointed(data: Path, out: Path, every_steps: int) -> subprocess.Popen:
    """A long `grulm train` in its own process, returned once it has saved a checkpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "grulm.cli", "train", *TINY, "--data", str(data),
         "--epochs", "100000", "--checkpoint-every-steps", str(every_steps), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def test_a_second_writer_fails_at_once_naming_the_first(small_text, tmp_path, run_grulm):
    out = tmp_path / "run"
    first = _train_until_checkpointed(small_text, out, every_steps=5)
    try:
        second = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1",
                           "--overwrite", "--out", out)
        assert second.returncode == 2
        assert f"another grulm process (pid {first.pid}) is writing the run in {out}" in (
            second.stderr)
        resumed = run_grulm("train", "--resume", out, "--epochs", "1")
        assert resumed.returncode == 2 and f"pid {first.pid}" in resumed.stderr
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    assert load_checkpoint(out).meta.train["epochs"] == 100000


def test_kill_9_leaves_a_loadable_checkpoint_and_resume_sweeps_the_leftovers(
    small_text, tmp_path, run_grulm
):
    out = tmp_path / "run"
    process = _train_until_checkpointed(small_text, out, every_steps=3)
    try:
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    step = load_checkpoint(out).meta.training_state["progress"]["step"]
    # what a kill in the middle of a save leaves behind
    (out / ".tmp-killed.part").write_bytes(b"half a file")
    (out / "tensors-00000000deadbeef.safetensors").write_bytes(b"orphan")
    (out / ".metrics.jsonl.part").write_text("{")
    (out / ".perplexity.png.part").write_bytes(b"\x89PNG")
    resumed = run_grulm("train", "--resume", out, "--epochs", "2", "--threads", "1",
                        "--no-progress")
    assert resumed.returncode in (0, 2), resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert _leftovers(out) == []
    if resumed.returncode == 0:
        assert load_checkpoint(out).meta.training_state["progress"]["step"] >= step
    else:  # the kill came after epoch 2 had already begun: nothing left to do
        assert "nothing left to do" in resumed.stderr


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.mark.slow
def test_a_full_disk_at_any_fill_level_ends_cleanly_and_resume_works_once_freed(
    small_text, tmp_path, run_grulm
):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "200k")
    try:
        capacity = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        for free in (0, 30_000, 60_000, 100_000):
            out = disk / f"run{free}"
            filler = disk / "filler"
            filler.unlink(missing_ok=True)
            with open(filler, "wb") as f:  # leave about `free` bytes
                f.write(b"\0" * max(capacity - free - os.statvfs(disk).f_frsize, 0))
            result = run_grulm("train", *TINY, "--data", small_text, "--epochs", "2",
                               "--checkpoint-every-epochs", "1", "--log-every-steps", "4",
                               "--out", out)
            context = f"{free} bytes free: {result.stderr}"
            assert result.returncode in (0, 2), context
            assert "Traceback" not in result.stderr, context
            lines = result.stderr.strip().splitlines()
            assert all(line.startswith("grulm train: ") for line in lines), context
            if result.returncode == 2:
                assert "error: could not save" in lines[-1], context
                assert "is unchanged" in lines[-1], context
            if out.exists():
                assert _leftovers(out) == [], context
                if (out / "checkpoint.json").exists():
                    load_checkpoint(out)
            filler.unlink()
            if out.exists() and (out / "checkpoint.json").exists():
                resumed = run_grulm("train", "--resume", out, "--epochs", "3", "--threads",
                                    "1", "--no-progress")
                assert resumed.returncode == 0, context + resumed.stderr
                assert load_checkpoint(out).meta.training_state["progress"]["epoch"] == 3
            else:
                again = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1",
                                  "--overwrite", "--out", out)
                assert again.returncode == 0, context + again.stderr
            subprocess.run(["rm", "-rf", str(out)], check=True)
    finally:  # lazily: a file still open there must not leave the mount behind
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_an_edited_checkpoint_without_its_data_field_is_refused_on_resume(
    small_text, tmp_path, run_grulm
):
    out = tmp_path / "run"
    first = run_grulm("train", *TINY, "--data", small_text, "--epochs", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    meta = json.loads((out / "checkpoint.json").read_text())
    del meta["data"]
    (out / "checkpoint.json").write_text(json.dumps(meta))
    resumed = run_grulm("train", "--resume", out, "--epochs", "2")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "the field(s) data are missing or damaged" in resumed.stderr


def test_max_time_holds_with_long_steps_and_a_long_validation(shared_data, tmp_path,
                                                                run_grulm):
    """A deep model (steps of about a second) and a validation split that would take minutes
    to evaluate: the run stops near its budget and skips the evaluation, saying so."""
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_grulm("train", *TINY, "--data", "timemachine", "--max-tokens", "0",
                       "--split-fractions", "0.1,0.9", "--num-layers", "60", "--hidden-size",
                       "128", "--batch-size", "32", "--num-steps", "35", "--epochs", "1000",
                       "--max-time", "2", "--out", out)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "--max-time 2 s used" in result.stderr
    assert "validation skipped: evaluating 153,522 tokens would take about" in result.stderr
    assert f"grulm eval {out}" in result.stderr
    steps = load_checkpoint(out).meta.training_state["progress"]
    assert steps["seconds"] < 2.0 + steps["seconds"] / max(steps["step"], 1)  # ≤ one step over
    assert elapsed < 60, result.stderr


def test_clear_messages_for_budgets_onehot_width_and_default_out(small_text, tmp_path,
                                                                  run_grulm):
    out = tmp_path / "run"
    first = run_grulm("train", *TINY, "--data", small_text, "--epochs", "3", "--out", out)
    assert first.returncode == 0, first.stderr
    fewer = run_grulm("train", "--resume", out, "--epochs", "2")
    assert fewer.returncode == 2
    assert "it has already trained 3 epochs, and --epochs is 2 (raise it above 3)" in (
        fewer.stderr)
    onehot = run_grulm("train", *TINY, "--data", small_text, "--input", "onehot",
                       "--embedding-size", "64", "--out", tmp_path / "other")
    assert onehot.returncode == 2 and "drop --embedding-size or use --input embedding" in (
        onehot.stderr)
    assert not (tmp_path / "other").exists()
    assert "runs/seed; with --preset NAME, runs/NAME" in " ".join(
        run_grulm("train", "--help").stdout.split())


@pytest.mark.parametrize("flags, message", [
    (["--hidden-size", "100000"], "needs about"),
    (["--hidden-size", "30000"], "needs about"),
    (["--num-layers", "1000", "--epochs", "1", "--max-time", "8"], "no step could finish"),
    (["--device", "mps"], "--device mps"),
    (["--device", "xla"], "--device xla"),
])
def test_too_large_or_impossible_runs_are_refused_before_allocating(shared_data, tmp_path,
                                                                    run_grulm, flags, message):
    started = time.monotonic()
    result = run_grulm("train", *flags, "--no-progress", "--out", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_a_plot_that_cannot_be_written_warns_once_and_the_run_finishes(
    small_text, tmp_path, monkeypatch, capsys
):
    calls = []

    def disk_full(path, curves, title=""):
        calls.append(path)
        path.with_name(f".{path.name}.part").write_bytes(b"\x89PNG half")  # a partial file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_hooks, "save_perplexity_plot", disk_full)
    out = tmp_path / "run"
    status = main(["train", *TINY, "--data", str(small_text), "--epochs", "2",
                   "--checkpoint-every-epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert len(calls) == 3  # two epochs and the end: each time tried, the warning given once
    assert err.count("warning: cannot write the plot") == 1 and "No space left" in err
    final = err.strip().splitlines()[-1]
    assert final.startswith(f"checkpoint: {out}") and "plot:" not in final
    assert "metrics:" in final and not (out / ".perplexity.png.part").exists()
    assert load_checkpoint(out).meta.training_state["progress"]["epoch"] == 2
