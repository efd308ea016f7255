"""``torchrun … grulm train``: real launches of 2 gloo ranks (and 2 "nodes" on this machine)
against the one-process run, resume across world sizes, faults and bad input.

Two ranks of the seed's global batch of 32 rows train the one-process run: the same epoch
losses (≤ 1e-4 relative), weights (≤ 1e-4 absolute) and `grulm eval` perplexity (≤ 1e-3).
Each launch costs a few seconds of start-up, so the runs are the seed's model for 4 epochs.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grulm.checkpoint import load_checkpoint

BIN = Path(sys.executable).parent
RUN = ("--data", "timemachine", "--epochs", "4", "--seed", "0", "--no-progress")
TORCHRUN_LOG = re.compile(r"^\[?[IWE]\d{4} \d\d:\d\d:\d\d")  # torchrun's and c10d's own lines


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    data = os.environ.get("GRULM_DATA_PATH", str(shared))
    if not any((Path(p) / "timemachine.txt").is_file() for p in data.split(":")):
        pytest.skip("the timemachine corpus is not in GRULM_DATA_PATH or ../shared/data")
    cache = tmp_path_factory.mktemp("cache")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return {**clean, "GRULM_DATA_PATH": data, "GRULM_CACHE": str(cache)}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def grulm(*args, env, cwd, timeout=300):
    return subprocess.run([str(BIN / "grulm"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def torchrun_command(*args, nproc=2, launch=("--standalone",), module=False):
    """``torchrun … --no-python grulm train …``, or with ``module`` ``torchrun … -m grulm
    train …`` (the workers are ``python -m grulm``)."""
    program = ["-m", "grulm"] if module else ["--no-python", str(BIN / "grulm")]
    return [str(BIN / "torchrun"), *launch, "--nproc-per-node", str(nproc), *program, "train",
            *args]


def torchrun(*args, env, cwd, nproc=2, timeout=300):
    return subprocess.run(torchrun_command(*args, nproc=nproc), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# Printed now and then by the C++ runtime of a rank whose gloo threads are torn down at exit
# after an error (PyTorch's gloo process group, not grulm: grulm's own error line comes first).
GLOO_TEARDOWN = "terminate called without an active exception"


def own_lines(text: str) -> list[str]:
    """grulm's lines of a launch's output: torchrun's log lines, its failure report and gloo's
    teardown message removed."""
    lines = [line for line in text.splitlines()
             if line.strip() and not TORCHRUN_LOG.match(line) and line != GLOO_TEARDOWN]
    if "Traceback (most recent call last):" in lines:
        lines = lines[: lines.index("Traceback (most recent call last):")]
    return lines


@pytest.fixture(scope="module")
def reference(env, work):
    """The one-process run: its output, epoch records and checkpoint."""
    result = grulm("train", *RUN, "--out", "S", env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    return result, work / "S"


def epochs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "epoch"]


def assert_same_run(run: Path, reference: Path) -> None:
    ours, theirs = epochs(run), epochs(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs] == [1, 2, 3, 4]
    for a, b in zip(ours, theirs, strict=True):
        assert a["step"] == b["step"]
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4)
        assert ("val_loss" in a) == ("val_loss" in b)
        assert math.isclose(a.get("val_loss", 0), b.get("val_loss", 0), rel_tol=1e-4)
    weights, expected = (load_checkpoint(p).model.state_dict() for p in (run, reference))
    assert weights.keys() == expected.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], expected[name], rtol=0, atol=1e-4)


def perplexity(run: Path, env, cwd) -> float:
    result = grulm("eval", str(run), "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["perplexity"]


def test_two_ranks_train_the_one_process_run(env, work, reference):
    one, single = reference
    result = torchrun(*RUN, "--out", "D", env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert_same_run(work / "D", single)
    assert math.isclose(perplexity(work / "D", env, work), perplexity(single, env, work),
                        rel_tol=1e-3)
    # rank 0 alone prints: the one process's lines, once, and the ranks named once
    assert len(result.stdout.splitlines()) == len(one.stdout.splitlines())
    assert len(own_lines(result.stderr)) == len(one.stderr.splitlines())
    assert result.stderr.count("2 ranks on 1 machine × 1 thread") == 1
    meta = json.loads((work / "D" / "checkpoint.json").read_text())
    assert meta["metrics"]["ranks"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_train_the_one_process_run(env, work, reference):
    """`--nnodes 2 --node-rank 0/1` over a loopback rendezvous, one rank per "node", started
    as `torchrun … -m grulm train`; each node has its own working directory, and only node 0's
    receives the run."""
    port = str(_free_port())
    nodes = []
    for node in (0, 1):
        cwd = work / f"node{node}"
        cwd.mkdir()
        launch = ("--nnodes", "2", "--node-rank", str(node), "--master-addr", "127.0.0.1",
                  "--master-port", port)
        nodes.append(subprocess.Popen(
            torchrun_command(*RUN, "--out", "N", nproc=1, launch=launch, module=True),
            env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert_same_run(work / "node0" / "N", reference[1])
    assert not (work / "node1" / "N").exists()
    threads = len(os.sched_getaffinity(0))  # one rank per "machine": all its cores
    assert f"2 ranks on 2 machines × {threads} thread" in outputs[0][1]
    assert outputs[1][0] == "" and own_lines(outputs[1][1]) == []  # node 1 prints nothing


def test_a_stopped_distributed_run_resumes_with_any_world_that_divides_its_batch(
        env, work, reference):
    """Stopped mid-epoch by 2 ranks (the hidden state of all 32 rows saved), continued by 2
    ranks, stopped mid-epoch again and finished by one process: the one-process run. A world
    of 3 ranks cannot split 32 rows and is refused."""
    stopped = torchrun(*RUN, "--out", "R", "--max-steps", "12", env=env, cwd=work)
    assert stopped.returncode == 0, stopped.stderr
    assert load_checkpoint(work / "R").meta.training_state["progress"]["batch"] == 4  # epoch 2
    refused = torchrun("--resume", "R", "--max-steps", "1000", env=env, cwd=work, nproc=3)
    assert refused.returncode != 0 and own_lines(refused.stderr) == [
        "grulm train: error: --batch-size 32 does not split across 3 ranks: each rank trains "
        "an equal share of the rows; use a multiple of 3 (e.g. 30 or 33)"]
    resumed = torchrun("--resume", "R", "--max-steps", "21", env=env, cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, step 12" in resumed.stderr
    alone = grulm("train", "--resume", "R", "--max-steps", "1000", "--no-progress", env=env,
                  cwd=work)
    assert alone.returncode == 0, alone.stderr
    assert "resuming at epoch 3, step 21" in alone.stderr
    assert_same_run(work / "R", reference[1])


def test_bad_input_under_torchrun_is_one_line_and_writes_nothing(env, work, reference):
    odd = torchrun(*RUN, "--out", "B", "--batch-size", "31", env=env, cwd=work)
    assert odd.returncode != 0 and not (work / "B").exists()
    assert [line for line in own_lines(odd.stderr) if line.startswith("grulm")] == [
        "grulm train: error: --batch-size 31 does not split across 2 ranks: each rank trains "
        "an equal share of the rows; use a multiple of 2 (e.g. 30 or 32)"]
    run = reference[1]
    before = {p.name: p.read_bytes() for p in run.glob("[!.]*") if p.is_file()}  # not the lock
    other = torchrun("--resume", "S", "--epochs", "8", "--hidden-size", "64", env=env, cwd=work)
    alone = grulm("train", "--resume", "S", "--epochs", "8", "--hidden-size", "64", env=env,
                  cwd=work)
    assert other.returncode != 0 and alone.returncode == 2
    assert "model.hidden_size: 256 in the checkpoint, 64 now" in alone.stderr
    assert own_lines(other.stderr) == alone.stderr.splitlines()  # said once, by rank 0
    assert {p.name: p.read_bytes() for p in run.glob("[!.]*") if p.is_file()} == before
    # rank 0 of 2 whose partner never comes: a bounded wait, one line, no directory
    lonely = {**env, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    started = time.monotonic()
    alone = grulm("train", *RUN, "--out", "L", "--dist-timeout", "2", env=lonely, cwd=work)
    assert time.monotonic() - started < 30 and alone.returncode == 2
    assert alone.stderr.startswith("grulm train: error: rank 0 could not join the other 1 "
                                   "rank(s) at 127.0.0.1:")
    assert len(alone.stderr.splitlines()) == 1 and not (work / "L").exists()


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{local rank: pid} of a torchrun's worker processes."""
    workers = {}
    for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next(v for v in environ if v.startswith(b"LOCAL_RANK="))
        workers[int(rank.split(b"=")[1])] = int(child)
    return workers


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_a_killed_worker_ends_the_job_and_the_run_resumes(env, work):
    """kill -9 of rank 1 of a shakespeare run: torchrun ends within 60 s leaving no process,
    the last checkpoint loads, and a torchrun --resume continues it."""
    run = work / "K"
    launcher = subprocess.Popen(
        torchrun_command("--preset", "shakespeare", "--out", "K", "--checkpoint-every-steps",
                         "2", "--no-progress"),
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "checkpoint.json").is_file(), 120, "a first checkpoint")
        workers = _workers(launcher)
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
        assert time.monotonic() - killed < 60 and launcher.returncode != 0
    finally:
        launcher.kill()
    assert not any(_alive(pid) for pid in workers.values())
    # rank 0 fails at its next exchange, one line naming it; torchrun may have sent it a
    # SIGTERM first (announced: it saves no checkpoint without the dead rank's rows)
    lines = [line for line in own_lines(stderr) if line.startswith("grulm")][1:]
    errors = [line for line in lines if "SIGTERM received" not in line]
    assert len(errors) == 1 and errors[0].startswith("grulm train: error: rank 0: "), lines
    info = grulm("info", "K", env=env, cwd=work)
    assert info.returncode == 0 and "ranks 2" in info.stdout, info.stderr
    step = load_checkpoint(run).meta.training_state["progress"]["step"]
    resumed = torchrun("--resume", "K", "--max-steps", str(step + 2), env=env, cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run).meta.training_state["progress"]["step"] == step + 2


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_one_checkpoint(env, work):
    run = work / "T"
    launcher = subprocess.Popen(
        torchrun_command("--data", "timemachine", "--epochs", "100000", "--out", "T",
                         "--no-progress"),
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file()
                  and (run / "metrics.jsonl").stat().st_size > 0, 120, "a first epoch")
        workers = _workers(launcher)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert not any(_alive(pid) for pid in workers.values())
    lines = [line for line in own_lines(stderr) if line.startswith("grulm")]
    assert lines[1:] == [
        "grulm train: SIGTERM received; saving a checkpoint after this step (send it again to "
        "abort without saving)",
        f"grulm train: stopped by SIGTERM at step {load_checkpoint(run).meta.metrics['step']}; "
        "checkpoint saved in T; continue with: grulm train --resume T"], lines
