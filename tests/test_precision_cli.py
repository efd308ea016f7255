"""``--precision`` through the commands: a bf16 run is recorded in its checkpoint, resumes
without the flag and refuses to change precision; eval and generate take either precision on
any checkpoint; bench and compare run grulm in bf16; bad values are one line, nothing written."""

import json
from pathlib import Path

import pytest

from grulm.checkpoint import load_checkpoint, save_checkpoint
from test_cli import _assert_clean_error

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
TINY = ["--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--backend",
        "reference", "--threads", "1", "--no-progress", "--sample-every", "0", "--no-tensorboard",
        "--eval-every", "1", "--init", "torch"]  # weights large enough for bf16 to show

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_grulm):
    """A 2-epoch bf16 run and a 2-epoch float32 run on 3,000 characters of The Time Machine."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"the corpora are not in {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("precision_cli")
    text = tmp / "small.txt"
    text.write_text((SHARED_DATA / "timemachine.txt").read_text()[:3000])
    env = {"GRULM_DATA_PATH": str(SHARED_DATA), "GRULM_CACHE": str(tmp / "cache")}
    found = {}
    for precision in ("bf16", "float32"):
        out = tmp / precision
        result = run_grulm("train", *TINY, "--data", text, "--cleaning", "d2l", "--epochs", "2",
                           "--precision", precision, "--out", out, env=env)
        assert result.returncode == 0, result.stderr
        found[precision] = (out, result)
    return found, env, tmp


def test_a_bf16_run_says_so_and_records_it_in_its_checkpoint(runs, run_grulm):
    found, env, _ = runs
    out, result = found["bf16"]
    assert "backend reference in bf16," in result.stderr
    assert "in bf16" not in found["float32"][1].stderr
    assert load_checkpoint(out).model.config.precision == "bf16"
    assert load_checkpoint(out / "best").model.config.precision == "bf16"
    info = json.loads(run_grulm("info", out, "--json", env=env).stdout)
    assert info["model_config"]["precision"] == "bf16"


@pytest.mark.parametrize("saved, asked", [("bf16", "float32"), ("float32", "bf16")])
def test_resume_refuses_another_precision_and_writes_nothing(runs, run_grulm, saved, asked):
    found, env, _ = runs
    out = found[saved][0]
    before = (out / "checkpoint.json").read_text()
    result = run_grulm("train", "--resume", out, "--epochs", "3", "--precision", asked,
                       "--no-progress", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"model.precision: {saved!r} in the checkpoint, {asked!r} now" in result.stderr
    assert "the precision is part of the run's arithmetic" in result.stderr
    assert f"resume it without --precision (it continues in {saved})" in result.stderr
    assert (out / "checkpoint.json").read_text() == before


def test_resume_of_a_bf16_run_needs_no_flag(runs, run_grulm):
    found, env, tmp = runs
    copy = tmp / "bf16-resumed"
    run_grulm("train", *TINY, "--data", tmp / "small.txt", "--cleaning", "d2l", "--epochs", "1",
              "--precision", "bf16", "--out", copy, env=env)
    result = run_grulm("train", "--resume", copy, "--epochs", "2", "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert "in bf16" in result.stderr and "resuming at epoch 2" in result.stderr
    checkpoint = load_checkpoint(copy)
    assert checkpoint.model.config.precision == "bf16" and checkpoint.meta.metrics["epochs"] == 2


def test_eval_takes_either_precision_default_the_checkpoints(runs, run_grulm):
    found, env, _ = runs
    out = found["bf16"][0]
    scores = {}
    for flags in ([], ["--precision", "bf16"], ["--precision", "float32"]):
        result = run_grulm("eval", out, "--json", *flags, env=env)
        assert result.returncode == 0, result.stderr
        scores[" ".join(flags)] = json.loads(result.stdout)
    assert scores[""]["precision"] == "bf16" and scores[""] == scores["--precision bf16"]
    as_float32 = scores["--precision float32"]
    assert as_float32["precision"] == "float32"
    assert as_float32["loss"] != scores[""]["loss"]
    assert as_float32["loss"] == pytest.approx(scores[""]["loss"], rel=1e-2)
    text = run_grulm("eval", out, env=env).stdout
    assert "predictions (bf16 products)" in text


@pytest.mark.parametrize("saved", ["bf16", "float32"])
@pytest.mark.parametrize("flags", [[], ["--precision", "bf16"], ["--precision", "float32"]])
def test_generate_works_in_either_precision(runs, run_grulm, saved, flags):
    found, env, _ = runs
    result = run_grulm("generate", found[saved][0], "--num-preds", "12", *flags, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("time traveller") and len(result.stdout.rstrip("\n")) == 26
    sampled = run_grulm("generate", found[saved][0], "--strategy", "sample", "--seed", "1",
                        "--num-samples", "2", "--num-preds", "5", *flags, env=env)
    assert sampled.returncode == 0, sampled.stderr


def test_bench_runs_grulm_in_bf16_and_the_baselines_in_float32(run_grulm):
    result = run_grulm("bench", "--config", "seed", "--precision", "bf16", "--variant",
                       "reset_after", "--batches", "1",
                       "--repeats", "1", "--warmup", "0", "--only", "grulm/reference",
                       "--json-only")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])["reports"][0]
    assert report["config"]["precision"] == "bf16"
    by_name = {r["contender"]: r for r in report["results"]}
    assert by_name["grulm/reference"]["tokens_per_s"] > 0 and by_name["nn.GRU"]["tokens_per_s"]
    assert "computes its products only in float32" in by_name["grulm/torch"]["skipped"]


def test_compare_trains_every_contender_in_bf16(runs, run_grulm):
    _, env, tmp = runs
    out = tmp / "compare"
    result = run_grulm("compare", "--cells", "gru,lstm", "--data", "recall:3", "--hidden-size",
                       "8", "--batch-size", "4", "--max-steps", "2", "--precision", "bf16",
                       "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    for name in ("gru", "lstm"):
        assert load_checkpoint(out / name).model.config.precision == "bf16"


@pytest.mark.parametrize("args, pattern", [
    (["train", "--precision", "fp16"], "--precision must be one of float32, bf16; got 'fp16' "
                                       r"\(float16 is not supported"),
    (["train", "--precision", "double"], "--precision must be one of float32, bf16"),
    (["train", "--precision", "bf16", "--backend", "torch"],
     "--backend 'torch' computes its products only in float32; precision bf16 runs on: reference"),
    (["compare", "--cells", "gru,rnn", "--precision", "bf16", "--backend", "torch"],
     "--backend 'torch' computes its products only in float32"),
    (["bench", "--precision", "bfloat16"], r"got 'bfloat16' \(write it bf16\)"),
    (["eval", "{run}", "--precision", "fp16"], "precision must be one of float32, bf16"),
    (["generate", "{run}", "--precision", "fp32"], r"\(write it float32\)"),
])
def test_bad_precisions_are_one_line_and_write_nothing(runs, run_grulm_process, tmp_path,
                                                       args, pattern):
    found, env, _ = runs
    out = tmp_path / "out"
    args = [arg.replace("{run}", str(found["bf16"][0])) for arg in args]
    if args[0] in ("train", "compare"):
        args += ["--out", out]
    _assert_clean_error(run_grulm_process(*args, env=env), pattern)
    assert not out.exists()


def test_bf16_on_a_float64_checkpoint_is_one_line(runs, run_grulm_process, tmp_path):
    found, env, tmp = runs
    checkpoint = load_checkpoint(found["float32"][0])
    save_checkpoint(tmp_path / "f64", checkpoint.model.double(), checkpoint.vocab, {})
    for command in ("eval", "generate"):
        result = run_grulm_process(command, tmp_path / "f64", "--precision", "bf16",
                                   *(["--data", tmp / "small.txt"] if command == "eval" else []),
                                   env=env)
        _assert_clean_error(result, "precision bf16 rounds the products of float32 parameters; "
                            "these are float64")
