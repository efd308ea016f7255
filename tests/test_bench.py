"""grulm.bench and ``grulm bench``: every contender runs, the baseline is the reference point,
grulm trains as ``grulm train`` does, and rounds last long enough."""

import json

import pytest
import torch

from grulm import bench

TINY = bench.BenchConfig("tiny", vocab_size=7, hidden_size=8, batch_size=2, num_steps=3)
ISAS = ("avx512-bf16", "avx512", "avx2", "generic")


def test_run_measures_every_contender_against_the_baseline():
    report = bench.run(TINY, batches=2, warmup=0, repeats=2, min_round_seconds=0)
    results = {r.contender: r for r in report.results}
    assert {"textbook", "nn.GRU", "grulm/reference", "grulm/torch"} <= results.keys()
    assert results["nn.GRU"].ratio == 1.0
    assert results["grulm/torch"].skipped and results["grulm/torch"].tokens_per_s is None
    for name in ("textbook", "grulm/reference"):
        assert len(results[name].rounds) == 2
        assert results[name].tokens_per_s > 0 and results[name].ratio > 0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["config"]["hidden_size"] == 8
    assert data["batches"] == 2 and data["min_round_seconds"] == 0
    assert data["isa"] is None or data["isa"] in ISAS
    assert all(r["epochs_per_round"] == 1 for r in data["results"] if r["tokens_per_s"])


@pytest.mark.parametrize("min_round_seconds", [0, 0.05])
def test_grulm_contenders_train_in_grulms_loop(monkeypatch, min_round_seconds):
    """Each round of a grulm contender is one run of fit with grulm train's step, over epochs
    of the round's batches, in order, with the state carried from batch to batch: one epoch
    per warm-up round, and as many per timed round as the report says."""
    rounds = []
    real_fit, real_build_step = bench.fit, bench.build_step
    steps = []

    def recording_fit(model, make_batches, config, **kwargs):
        epoch = make_batches(None)
        rounds.append(([x for x, _ in epoch], config, kwargs["optimizer"]))
        return real_fit(model, make_batches, config, **kwargs)

    def recording_build_step(model, config):
        steps.append(real_build_step(model, config))
        return steps[-1]

    monkeypatch.setattr(bench, "fit", recording_fit)
    monkeypatch.setattr(bench, "build_step", recording_build_step)
    report = bench.run(TINY, batches=3, warmup=1, repeats=2, only=["grulm/reference"],
                       min_round_seconds=min_round_seconds)
    result = next(r for r in report.results if r.contender == "grulm/reference")
    assert len(rounds) == 3  # warm-up and two timed rounds
    assert [config.epochs for _, config, _ in rounds] == [1] + [result.epochs_per_round] * 2
    # the step grulm train takes (build_step's), built once
    assert len({id(step) for _, _, step in rounds}) == 1 and rounds[0][2] in steps
    data = bench._batches(TINY, 3, torch.device("cpu"), seed=0)
    for inputs, config, _ in rounds:
        assert all(torch.equal(x, d) for x, (d, _) in zip(inputs, data, strict=True))
        assert (config.partition, config.optimizer) == ("sequential", "sgd")
        assert (config.lr, config.clip) == (TINY.lr, TINY.clip)


class _Clock:
    """A stand-in for the ``time`` module whose clock moves only when told."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize(("warmup", "min_round_seconds", "calls", "epochs"), [
    (2, 0.1, [1, 1], 4),  # 0.03 s an epoch: 4 fill 0.1 s
    (0, 0.1, [1], 4),  # one untimed epoch to size the rounds, even with no warm-up asked
    (0, 0.0, [], 1),  # no sizing: one epoch a round
    (1, 0.01, [1], 1),  # an epoch outlasts the minimum
])  # fmt: skip
def test_rounds_are_the_fewest_whole_epochs_that_fill_the_minimum(monkeypatch, warmup,
                                                                 min_round_seconds, calls,
                                                                 epochs):  # fmt: skip
    clock, seen = _Clock(), []
    monkeypatch.setattr(bench, "time", clock)

    def runner(data, count):
        seen.append(count)
        clock.now += 0.03 * count

    assert bench._warm_up(runner, [], warmup, min_round_seconds) == epochs
    assert seen == calls


def test_embedding_config_skips_the_textbook_model():
    config = bench.BenchConfig("tiny-emb", vocab_size=7, hidden_size=8, num_layers=2,
                               input_kind="embedding", batch_size=2, num_steps=3,
                               variant="reset_after")
    report = bench.run(config, batches=1, warmup=0, repeats=1, only=["grulm/torch"],
                       min_round_seconds=0)
    results = {r.contender: r for r in report.results}
    assert "one layer with one-hot input" in results["textbook"].skipped
    assert results["grulm/torch"].tokens_per_s > 0
    assert "grulm/reference" not in results  # not asked for


def test_cli_prints_a_table_and_one_json_line(run_grulm):
    result = run_grulm("bench", "--config", "seed", "--batches", "1", "--repeats", "1",
                       "--warmup", "0", "--only", "grulm/cpu", "--min-round-seconds", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("seed: 1×256 reset_before GRU")
    assert any(line.startswith("nn.GRU") and "1.00×" in line for line in lines)
    data = json.loads(lines[-1])
    assert [r["config"]["name"] for r in data["reports"]] == ["seed"]
    report = data["reports"][0]
    assert report["isa"] in ISAS  # the cpu kernels' path, also in the table's header
    assert f"cpu kernels {report['isa']};" in lines[0]
    assert report["min_round_seconds"] == 0 and report["batches"] == 1


def test_cli_rejects_bad_counts(run_grulm):
    result = run_grulm("bench", "--repeats=0")
    assert result.returncode == 2
    assert "--repeats must be a positive integer" in result.stderr
    for seconds in ("-1", "nan", "inf"):
        result = run_grulm("bench", "--min-round-seconds", seconds)
        assert result.returncode == 2
        assert "--min-round-seconds must be a number of seconds ≥ 0" in result.stderr


def test_a_cell_option_benchmarks_that_cell_where_it_runs(run_grulm):
    """``--cell lstm``: the backends that run an LSTM are timed, the fused GRU one and the
    seed's GRU are skipped with the reason; a bad cell is one line."""
    result = run_grulm("bench", "--config", "seed", "--cell", "lstm", "--batches", "1",
                       "--repeats", "1", "--warmup", "0", "--only", "grulm/torch",
                       "--min-round-seconds", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("seed: 1×256 LSTM, onehot input")
    data = json.loads(lines[-1])["reports"][0]
    results = {r["contender"]: r for r in data["results"]}
    assert data["config"]["cell"] == "lstm" and results["grulm/torch"]["tokens_per_s"] > 0
    assert "implements only the GRU cell" in results["grulm/cpu"]["skipped"]
    assert "reset-before GRU with both gates" in results["textbook"]["skipped"]
    bad = run_grulm("bench", "--cell", "lstm", "--gates", "reset")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "applies only to --cell gru" in bad.stderr
