"""``grulm inspect``: a page and a PNG from a checkpoint, and every bad input refused in one
line with nothing written."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from grulm.checkpoint import save_checkpoint
from grulm.data.vocab import Vocab
from grulm.model import GRULM, GRUConfig

D2L_TOKENS = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(D2L_TOKENS), hidden_size=8, num_layers=2, init="torch")
    directory = tmp_path_factory.mktemp("inspect") / "model"
    save_checkpoint(directory, GRULM(config).eval(), Vocab(D2L_TOKENS),
                    {"data": {"cleaning": "d2l"}})
    return directory


def _data(page):
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def _one_error(result, *patterns):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grulm inspect: error: "), result.stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]


def test_a_page_and_a_heat_map(checkpoint, tmp_path, run_grulm):
    out, png = tmp_path / "page.html", tmp_path / "gates.png"
    result = run_grulm("inspect", checkpoint, "--prefix", "Time Traveller!", "--out", out,
                       "--png", png, "--layer", "0")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    data = _data(out)
    assert "".join(data["tokens"]) == "time traveller " and data["layer"] == 0
    assert dict(data["description"])["model"].startswith("2×8 reset_before GRU")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gates.png", "page.html"]


def test_a_long_text_is_cut_with_a_warning_the_page_repeats(checkpoint, tmp_path, run_grulm):
    text_file, out = tmp_path / "text.txt", tmp_path / "page.html"
    text_file.write_text("the time machine " * 10, encoding="utf-8")
    result = run_grulm("inspect", checkpoint, "--text-file", text_file, "--max-chars", "20",
                       "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("grulm inspect: warning: the text has 170 tokens; only the first "
                             "20 are inspected (raise --max-chars for more)\n")
    data = _data(out)
    assert len(data["tokens"]) == 20 and "only the first 20" in data["notes"][0]


def test_only_unknown_characters_still_make_a_page(tmp_path, run_grulm):
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=4, hidden_size=4, init="torch")
    save_checkpoint(tmp_path / "raw", GRULM(config).eval(), Vocab(["<unk>", *"abc"]),
                    {"data": {"cleaning": "raw"}})
    out = tmp_path / "page.html"
    result = run_grulm("inspect", tmp_path / "raw", "--prefix", "xyz", "--out", out)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"grulm inspect: warning: prefix has 3 token\(s\) not in the model's "
                        r"vocabulary, read as <unk>: 'x', 'y', 'z'\n", result.stderr)
    data = _data(out)
    assert data["ids"] == [0, 0, 0] and data["tokens"] == ["x", "y", "z"]
    assert "not in the model's vocabulary" in data["notes"][0]


@pytest.mark.parametrize("arguments, patterns", [
    (["--prefix", ""], ["the prefix is empty"]),
    (["--prefix", "abc", "--max-chars", "0"], ["--max-chars must be at least 1"]),
    (["--prefix", "abc", "--layer", "2"], ["--layer must be from 0 to 1"]),
    (["--text-file", "missing.txt"], ["missing.txt", "does not exist"]),
])
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, run_grulm, arguments,
                                                  patterns):
    result = run_grulm("inspect", checkpoint, *arguments, "--out", tmp_path / "page.html",
                       cwd=tmp_path)
    _one_error(result, *patterns)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_one_line(tmp_path, run_grulm):
    result = run_grulm("inspect", tmp_path / "nowhere", "--prefix", "abc", "--out",
                       tmp_path / "page.html")
    _one_error(result, "nowhere")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_an_unwritable_directory_is_refused_before_any_work(checkpoint, tmp_path, run_grulm):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_grulm("inspect", checkpoint, "--prefix", "abc", "--out", locked / "p.html")
    _one_error(result, "is not writable")
    assert list(locked.iterdir()) == []


def test_a_missing_directory_or_a_directory_as_out_in_a_real_process(checkpoint, tmp_path):
    for out, pattern in ((tmp_path / "no" / "page.html", "does not exist"),
                         (tmp_path, "it is a directory")):
        result = subprocess.run(
            [sys.executable, "-m", "grulm.cli", "inspect", str(checkpoint), "--prefix", "abc",
             "--out", str(out)], capture_output=True, text=True, timeout=120)
        _one_error(result, pattern)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_page(checkpoint, tmp_path, run_grulm, monkeypatch):
    from pathlib import Path

    def fail(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fail)
    result = run_grulm("inspect", checkpoint, "--prefix", "abc", "--out", tmp_path / "p.html")
    _one_error(result, "cannot write", "No space left on device")
    assert list(tmp_path.iterdir()) == []
