"""``grulm compare``: contenders trained as real runs under one budget; the table, the CSV,
the Markdown, the plot and the final JSON line agree; every bad input is one line with
nothing written."""

import csv
import json

import pytest
import torch

from grulm.compare import CONTENDERS, compare, contender_specs, hidden_size_for
from grulm.model import GRULM
from grulm.run import RunSpec
from test_cli import _assert_clean_error

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--data", "recall:3", "--hidden-size", "16", "--batch-size", "4", "--max-steps", "5"]


def test_the_command_trains_each_contender_and_reports_one_table(tmp_path, run_grulm_process,
                                                                run_grulm):
    out = tmp_path / "cmp"
    result = run_grulm_process("compare", "--cells", "gru,gru-reset-after", *TINY, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    results = json.loads(lines[-1])["results"]  # the final line
    assert [r["name"] for r in results] == ["gru", "gru-reset-after"]
    assert lines[0].startswith("| contender | parameters |")
    for line, entry in zip(lines[2:4], results, strict=True):
        assert line.startswith(f"| {entry['name']} | {entry['params']:,} | 16 | 5 |")
        assert f"{entry['val_nats']:.4f}" in line and f"{entry['recall_accuracy']:.4f}" in line
        assert entry["steps"] == 5 and entry["tokens_per_s"] > 0
        assert 0 <= entry["recall_accuracy"] <= 1
        assert entry["val_bits"] == pytest.approx(entry["val_nats"] / 0.6931471805599453)
        assert (out / entry["name"] / "checkpoint.json").is_file()  # a real run: eval reads it
    # reset-after has a second bias per gate: 3·16 more parameters than reset-before
    assert results[1]["params"] - results[0]["params"] == 48
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["name"], int(r["params"]), float(r["val_nats"])) for r in rows] == [
        (r["name"], r["params"], r["val_nats"]) for r in results]
    assert (out / "compare.md").read_text() == "\n".join(lines[:4]) + "\n"
    assert (out / "val_loss.png").read_bytes().startswith(PNG)
    again = run_grulm("compare", "--cells", "gru,gru-reset-after", *TINY, "--out", out)
    _assert_clean_error(again, r"holds results of an earlier run; .* --overwrite")


def test_each_contender_gets_a_validation_curve_over_its_budget(tmp_path, one_thread):
    spec = RunSpec.from_preset("recall", data="recall:3", hidden_size=8, batch_size=4,
                               max_steps=10, checkpoint_every_epochs=0)
    result = compare(spec, ["gru", "gru-reset-after"], tmp_path)
    for contender in result.contenders:
        assert [step for _, step, _ in contender.curve] == list(range(1, 11))  # 9 marks + end
        seconds = [s for s, _, _ in contender.curve]
        assert seconds == sorted(seconds)
        assert contender.curve[-1][2] == contender.val_nats
    result = compare(spec.replace(max_steps=4), ["gru", "gru-reset-after"], tmp_path,
                     overwrite=True)
    assert [c.steps for c in result.contenders] == [4, 4]
    assert set(result.files) == {"csv", "markdown", "plot"}


def _trainable(spec, vocab_size):
    model = GRULM(spec.model.config(vocab_size))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_match_params_sizes_every_contender_to_about_n_parameters():
    spec = RunSpec.from_preset("recall")
    specs = contender_specs(spec, ["gru", "gru-reset-after"], match_params=50_000)
    for contender in specs.values():
        count = _trainable(contender, 30)  # recall:K has 30 tokens
        assert abs(count - 50_000) / 50_000 < 0.01
        hidden = contender.model.hidden_size
        for other in (hidden - 1, hidden + 1):  # the nearest hidden size
            assert abs(count - 50_000) <= abs(_trainable(contender.replace(
                hidden_size=other), 30) - 50_000)
    assert hidden_size_for(spec, 30, 1) == 1
    assert torch.get_default_device().type == "cpu"  # the meta device did not leak


@pytest.mark.parametrize("cells, message", [
    ("gru", r"at least two contenders .* got 1: gru"),
    ("gru,gru", r"contender gru is named more than once"),
    ("gru,lstm9", r"unknown contender 'lstm9'; the contenders are " + ", ".join(CONTENDERS)),
])
def test_bad_contenders_are_one_line_and_nothing_is_written(tmp_path, run_grulm, cells,
                                                            message):
    result = run_grulm("compare", "--cells", cells, *TINY, "--out", tmp_path / "cmp")
    _assert_clean_error(result, message)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("args, message", [
    (["--data", "recall:abc"], r"K in recall:K"),
    (["--match-params", "0"], r"--match-params must be .* ≥ 1, got 0"),
    (["--match-params", "1000", "--hidden-size", "8"], r"drop --hidden-size or --match-params"),
    (["--max-time", "-1"], r"--max-time must be a positive number"),
])
def test_bad_settings_are_one_line_and_nothing_is_written(tmp_path, run_grulm, args, message):
    result = run_grulm("compare", "--cells", "gru,gru-reset-after", *args,
                       "--out", tmp_path / "cmp")
    _assert_clean_error(result, message)
    assert not (tmp_path / "cmp").exists()


def test_a_skipped_final_validation_is_said_with_how_to_get_it(capsys, tmp_path):
    from types import SimpleNamespace

    from grulm.cli.compare import _Report

    report = _Report("mingru", ["gru", "mingru"])
    report.started = 0.0
    result = SimpleNamespace(val_loss=None, validation_skipped=True, recall_accuracy=None,
                             step=31, stop_reason="max_time")
    report.on_finish(SimpleNamespace(out=tmp_path / "mingru"), result)
    line = capsys.readouterr().err.strip()
    assert line.startswith("grulm compare: mingru: 31 steps (max_time) in ")
    assert line.endswith(f"final validation skipped: it would run past the budget (— in the "
                         f"table; evaluate later with: grulm eval {tmp_path / 'mingru'})")
