"""``grulm eval``'s sizes and devices: every bad value is one clear line and exit status 2,
decided before anything large is allocated."""

import re

import pytest
import torch

from grulm.checkpoint import save_checkpoint
from grulm.cli import main
from grulm.data.vocab import Vocab
from grulm.model import GRULM, GRUConfig

TOKENS = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained 1×8 GRULM over the seed's 28 characters, and a text to evaluate it on."""
    directory = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(TOKENS), hidden_size=8, backend="reference")
    meta = {"data": {"source": "toy", "cleaning": "d2l", "token": "char"}}
    save_checkpoint(directory / "run", GRULM(config).eval(), Vocab(TOKENS), meta)
    (directory / "text.txt").write_text("the time traveller was expounding a matter\n" * 50)
    return directory


def _error(status, err, *patterns):
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("grulm eval: error: "), lines[0]
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]


def _eval(checkpoint, *args):
    return main(["eval", str(checkpoint / "run"), "--data", str(checkpoint / "text.txt"), *args])


def test_a_good_evaluation(checkpoint, capsys):
    assert _eval(checkpoint, "--batch-size", "4", "--num-steps", "10") == 0
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], r"error: --batch-size must be at least 1, got -1$"),
        (["--batch-size", "0"], r"error: --batch-size must be at least 1, got 0$"),
        (["--num-steps", "-5"], r"error: --num-steps must be at least 1, got -5$"),
        (["--num-steps", "0"], r"error: --num-steps must be at least 1, got 0$"),
        # More streams than the text has tokens: refused before the state is allocated.
        (["--batch-size", "100000000"], r"fewer than batch size \+ 1 = 100000001; .*smaller "
         r"--batch-size$"),
        (["--device", "xla"], r"--device xla: grulm runs on cpu or cuda, not on xla devices; "
         r"use --device cpu"),
        (["--device", "vulkan"], r"not on vulkan devices"),
        (["--device", "gpu"], r"--device 'gpu' is not a device; use cpu, cuda, cuda:N or auto$"),
        pytest.param(
            ["--device", "mps"], r"no Apple GPU \(MPS\)",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is here"),
        ),
        pytest.param(
            ["--device", "cuda:0"], r"PyTorch sees no CUDA GPU on this machine; use --device cpu$",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_values_give_one_clear_line(checkpoint, capsys, args, message):
    status = _eval(checkpoint, *args)
    captured = capsys.readouterr()
    _error(status, captured.err, message)
    assert captured.out == ""


def test_a_batch_beyond_the_memory_is_refused_with_the_estimate(checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", "1M")
    status = _eval(checkpoint, "--batch-size", "2000", "--num-steps", "1")
    _error(
        status, capsys.readouterr().err,
        r"^grulm eval: error: evaluating a 1×8 GRU with batch 2,000 × 1 needs about "
        r"[\d.]+ MiB of memory but only 1\.0 MiB are available \(grulm plans to use at most "
        r"80% of it\); use a smaller --batch-size or --num-steps$",
    )
    assert _eval(checkpoint, "--batch-size", "20", "--num-steps", "1") == 0
