"""``--data recall:K`` through the command: a run records its recall accuracy, ``eval``
reports it (line and JSON), ``info`` and ``generate`` read the checkpoint, and a malformed
name is one line with nothing written."""

import json
import re

import pytest

from test_cli import _assert_clean_error

TINY = ["--preset", "recall", "--data", "recall:3", "--hidden-size", "16", "--batch-size", "4",
        "--max-steps", "4", "--no-progress"]


@pytest.fixture(scope="module")
def recall_run(tmp_path_factory, run_grulm):
    out = tmp_path_factory.mktemp("recall") / "run"
    result = run_grulm("train", *TINY, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_a_recall_run_records_its_recall_accuracy(recall_run):
    out, result = recall_run
    match = re.search(r"recall accuracy (\d\.\d{4}) on the validation split", result.stdout)
    assert match, result.stdout
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "final"
    assert f"{final['recall_accuracy']:.4f}" == match.group(1)
    assert final["recall_positions"] > 1900  # 2,000 validation records, a few cut off
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["metrics"]["recall_accuracy"] == final["recall_accuracy"]
    assert checkpoint["data"]["source"] == "recall:3"
    assert checkpoint["train"]["num_steps"] == 100  # the preset's windows, ≥ K + 3


def test_eval_reports_recall_accuracy_as_a_line_and_in_json(recall_run, run_grulm):
    out, _ = recall_run
    line = run_grulm("eval", out, "--batch-size", "4", "--num-steps", "100")
    assert line.returncode == 0, line.stderr
    match = re.search(r"recall accuracy (\d\.\d{4}) \(([\d,]+) of ([\d,]+) letters after a cue",
                      line.stdout)
    assert match, line.stdout
    as_json = run_grulm("eval", out, "--batch-size", "4", "--num-steps", "100", "--json")
    data = json.loads(as_json.stdout)
    assert f"{data['recall_accuracy']:.4f}" == match.group(1)
    assert data["recall_positions"] == int(match.group(3).replace(",", ""))
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert data["recall_accuracy"] == pytest.approx(final["recall_accuracy"])  # the same split
    other = run_grulm("eval", out, "--data", "recall:1", "--json")
    assert json.loads(other.stdout)["recall_positions"] > 19_000  # the whole other stream


def test_info_and_generate_read_a_recall_checkpoint(recall_run, run_grulm):
    out, _ = recall_run
    info = run_grulm("info", out)
    assert info.returncode == 0 and "recall:3" in info.stdout, info.stdout + info.stderr
    sample = run_grulm("generate", out, "--prefix", "q...=", "--num-preds", "5")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("q...=")


@pytest.mark.parametrize("name", ["recall:0", "recall:-3", "recall:abc", "recall:1000000"])
def test_a_malformed_recall_name_writes_nothing(tmp_path, run_grulm, name):
    result = run_grulm("train", "--data", name, "--out", tmp_path / "run")
    _assert_clean_error(result, r"K in recall:K .* 1 to 1,000")
    assert not (tmp_path / "run").exists()
