"""Corpora and prompts through the real ``grulm`` command: special files are refused at once
(never opened, so never a hang), a min_freq that leaves only ``<unk>`` is refused, and a
d2l-cleaned prefix that loses letters says so."""

import os
import re

import pytest
import torch

from grulm.checkpoint import load_checkpoint, save_checkpoint
from grulm.data.vocab import Vocab
from grulm.model import GRULM, GRUConfig

HANG = 120  # seconds: far more than a refusal takes; a blocked open would pass it and fail


def _save(directory, tokens, cleaning):
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(tokens), hidden_size=8, init="torch", backend="reference")
    meta = {"data": {"source": "toy", "cleaning": cleaning, "token": "char"}}
    save_checkpoint(directory, GRULM(config).eval(), Vocab(tokens), meta)
    return directory


@pytest.fixture(scope="module")
def d2l_checkpoint(tmp_path_factory):
    """An untrained 1×8 GRULM over a space and the 26 letters, d2l cleaning."""
    tokens = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]
    return _save(tmp_path_factory.mktemp("inputs") / "d2l", tokens, "d2l")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _error_line(result, command):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"grulm {command}: error: "), lines[0]
    return lines[0].removeprefix(f"grulm {command}: error: ")


def test_train_refuses_a_fifo_at_once(fifo, tmp_path, run_grulm_process):
    out = tmp_path / "run"
    result = run_grulm_process("train", "--data", fifo, "--epochs", "1", "--no-progress",
                               "--out", out, timeout=HANG)
    message = _error_line(result, "train")
    assert message == f"'{fifo}' is a named pipe (FIFO), not a regular file; pass a text file"


def test_eval_refuses_a_fifo_at_once(d2l_checkpoint, fifo, run_grulm_process):
    result = run_grulm_process("eval", d2l_checkpoint, "--data", fifo, timeout=HANG)
    assert _error_line(result, "eval").endswith("is a named pipe (FIFO), not a regular file; "
                                                "pass a text file")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_generate_refuses_a_special_prime_file_at_once(d2l_checkpoint, fifo, special,
                                                       run_grulm_process):
    path = fifo if special == "fifo" else special
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    kind = "named pipe (FIFO)" if special == "fifo" else "character device"
    result = run_grulm_process("generate", d2l_checkpoint, "--prime-file", path, timeout=HANG)
    assert _error_line(result, "generate") == (
        f"prime file '{path}' is a {kind}, not a regular file; pass a text file"
    )


def test_a_min_freq_that_leaves_only_unk_is_refused(tmp_path, run_grulm):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the time traveller\n" * 200)
    result = run_grulm("train", "--data", corpus, "--min-freq", "1000000", "--epochs", "1",
                       "--no-progress", "--out", tmp_path / "run")
    assert _error_line(result, "train") == (
        f"--min-freq 1000000 leaves only <unk> in the vocabulary of {corpus}: its most frequent "
        "token, 'e', occurs 800 times; lower --min-freq to 800 or less"
    )
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_a_d2l_prefix_in_another_script_warns_what_was_dropped(d2l_checkpoint, run_grulm):
    result = run_grulm("generate", d2l_checkpoint, "--prefix", "日本語 time", "--num-preds", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(" time")
    assert result.stderr.splitlines() == [
        "grulm generate: warning: d2l cleaning drops 3 letter(s) of the prefix outside A-Z: "
        "'日', '本', '語'; the model was trained on the letters a-z only, so write the prefix "
        "in those"
    ]
    plain = run_grulm("generate", d2l_checkpoint, "--prefix", "Time, 1895!", "--num-preds", "3")
    assert plain.returncode == 0 and plain.stderr == ""  # punctuation and digits: silent
    assert re.match(r"time \S", plain.stdout)


def test_a_bom_crlf_copy_trains_exactly_as_its_lf_original(tmp_path, run_grulm):
    text = ("The Time Traveller (for so it will be convenient to speak of him)\n"
            "was expounding a recondite matter to us.\n\n") * 150
    (tmp_path / "lf.txt").write_bytes(text.encode())
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    runs = {}
    for name in ("lf", "crlf"):
        result = run_grulm("train", "--data", f"{name}.txt", "--epochs", "1", "--hidden-size",
                           "16", "--batch-size", "8", "--no-progress", "--out", f"run_{name}",
                           cwd=tmp_path, env={"GRULM_CACHE": str(tmp_path / "cache")})
        assert result.returncode == 0, result.stderr
        vocab_size = len(set(text)) + 1  # <unk> and the characters: no U+FEFF, no \r
        assert f"vocab {vocab_size})" in result.stdout + result.stderr
        runs[name] = load_checkpoint(tmp_path / f"run_{name}")
    assert runs["crlf"].vocab == runs["lf"].vocab
    lf, crlf = runs["lf"].model.state_dict(), runs["crlf"].model.state_dict()
    assert all(torch.equal(crlf[key], lf[key]) for key in lf)  # the same training, step by step
