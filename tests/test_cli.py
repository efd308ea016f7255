"""The real ``grulm`` command in a subprocess: train → checkpoint on disk → generate and info,
every subcommand's help, and bad input turned into one clear line and nothing half-written."""

import re
from pathlib import Path

import pytest

from grulm.checkpoint import load_checkpoint

FAST = ["--epochs", "3", "--hidden-size", "32", "--no-progress"]


def _assert_clean_error(result, *patterns):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]


SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_grulm):
    """One short seed-style run shared by the tests that read its checkpoint."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip("the corpora are not in ../shared/data")
    tmp = tmp_path_factory.mktemp("cli")
    env = {"GRULM_DATA_PATH": str(SHARED_DATA), "GRULM_CACHE": str(tmp / "cache")}
    out = tmp / "run"
    result = run_grulm("train", *FAST, "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    return out, result, env


def test_train_prints_the_seed_summary_and_writes_checkpoint_and_plot(trained):
    out, result, _ = trained
    lines = result.stdout.splitlines()
    assert re.search(r"perplexity \d+\.\d, [\d,]+ tokens/s on cpu", result.stdout), result.stdout
    assert any(line.startswith("time traveller") for line in lines)
    assert any(line.startswith("traveller") for line in lines)
    checkpoint = load_checkpoint(out)
    assert checkpoint.model.config.hidden_size == 32
    assert checkpoint.meta.data.cleaning == "d2l"
    assert (out / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_from_the_trained_checkpoint(trained, run_grulm):
    out, _, env = trained
    result = run_grulm("generate", out, "--prefix", "time traveller", "--num-preds", "20", env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 20


def test_info_describes_the_trained_checkpoint(trained, run_grulm):
    out, _, env = trained
    result = run_grulm("info", out, env=env)
    assert result.returncode == 0, result.stderr
    assert "1×32 reset_before GRU" in result.stdout
    assert "28 tokens" in result.stdout
    assert "perplexity" in result.stdout


@pytest.mark.parametrize("command", [None, "train", "generate", "info"])
def test_help_is_complete(command, run_grulm):
    result = run_grulm(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "usage: grulm" in result.stdout
    if command == "train":
        for flag in ("--data", "--out", "--epochs", "--batch-size", "--num-steps",
                     "--hidden-size", "--lr", "--variant", "--backend", "--max-tokens", "--seed"):
            assert flag in result.stdout, flag


def test_missing_data_path(tmp_path, run_grulm):
    result = run_grulm("train", *FAST, "--data", tmp_path / "nope.txt", "--out", tmp_path / "o")
    _assert_clean_error(result, "nope.txt")
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def test_directory_as_data(tmp_path, run_grulm):
    result = run_grulm("train", *FAST, "--data", tmp_path, "--out", tmp_path / "o")
    _assert_clean_error(result, "director")


def test_empty_file(tmp_path, run_grulm):
    (tmp_path / "empty.txt").write_text("")
    result = run_grulm("train", *FAST, "--data", tmp_path / "empty.txt", "--out", tmp_path / "o")
    _assert_clean_error(result, "empty")


def test_nothing_left_after_d2l_cleaning(tmp_path, run_grulm):
    (tmp_path / "digits.txt").write_text("1234 5678\n!!!\n")
    result = run_grulm("train", *FAST, "--data", tmp_path / "digits.txt", "--cleaning", "d2l",
                       "--out", tmp_path / "o")
    _assert_clean_error(result, "nothing|no text|empty", "raw")


def test_corpus_too_short_for_one_batch_says_how_many_tokens(tmp_path, run_grulm):
    (tmp_path / "short.txt").write_text("a short text")
    result = run_grulm("train", *FAST, "--data", tmp_path / "short.txt", "--out", tmp_path / "o")
    _assert_clean_error(result, r"needs at least 1156")  # 32·35 + 35 + 1
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def test_undecodable_bytes_name_the_offset(tmp_path, run_grulm):
    (tmp_path / "bad.txt").write_bytes(b"hello world\n" * 10 + b"\xff\xfe oops")
    result = run_grulm("train", *FAST, "--data", tmp_path / "bad.txt", "--cleaning", "raw",
                       "--out", tmp_path / "o")
    _assert_clean_error(result, "offset 120|byte 120")


@pytest.mark.parametrize(
    "flag, value",
    [("--epochs", "0"), ("--batch-size", "0"), ("--num-steps", "-1"), ("--hidden-size", "0"),
     ("--lr", "0"), ("--lr", "-0.5"), ("--clip", "0"), ("--num-layers", "0")],
)
def test_zero_or_negative_sizes_and_rates(shared_data, tmp_path, flag, value, run_grulm):
    result = run_grulm("train", *FAST, flag, value, "--out", tmp_path / "o")
    _assert_clean_error(result, flag.lstrip("-").replace("-", "_") + "|" + flag)


def test_offline_without_a_local_copy_names_the_three_ways(tmp_path, run_grulm):
    env = {"GRULM_DATA_PATH": "", "GRULM_CACHE": str(tmp_path / "cache"),
           # An unroutable proxy makes the download fail fast, as offline.
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_grulm("train", *FAST, "--data", "tinyshakespeare", "--out", tmp_path / "o",
                       env=env)
    _assert_clean_error(result, "GRULM_DATA_PATH", "cache", "--data PATH")


def test_generate_from_a_missing_checkpoint(tmp_path, run_grulm):
    _assert_clean_error(run_grulm("generate", tmp_path / "nope"), "does not exist")


def test_info_on_a_directory_without_checkpoint(tmp_path, run_grulm):
    _assert_clean_error(run_grulm("info", tmp_path), "holds no checkpoint")


@pytest.mark.slow
def test_the_seed_experiment_reaches_perplexity_1_2(shared_data, tmp_path, run_grulm_process):
    """`grulm train` with no flags: 500 epochs on the first 10,000 characters, reset-before."""
    result = run_grulm_process("train", "--no-progress", "--out", tmp_path / "seed",
                               timeout=1800)
    assert result.returncode == 0, result.stderr
    perplexity = float(re.search(r"perplexity (\d+\.\d+),", result.stdout).group(1))
    assert perplexity <= 1.2, result.stdout
    assert load_checkpoint(tmp_path / "seed").meta.metrics["perplexity"] <= 1.2
