"""grulm.bench and ``grulm bench``: every contender runs, the baseline is the reference point."""

import json

import torch

from grulm import bench

TINY = bench.BenchConfig("tiny", vocab_size=7, hidden_size=8, batch_size=2, num_steps=3)


def test_run_measures_every_contender_against_the_baseline():
    report = bench.run(TINY, batches=2, warmup=0, repeats=2)
    results = {r.contender: r for r in report.results}
    assert {"textbook", "nn.GRU", "grulm/reference", "grulm/torch"} <= results.keys()
    assert results["nn.GRU"].ratio == 1.0
    assert results["grulm/torch"].skipped and results["grulm/torch"].tokens_per_s is None
    for name in ("textbook", "grulm/reference"):
        assert len(results[name].rounds) == 2
        assert results[name].tokens_per_s > 0 and results[name].ratio > 0
    assert json.loads(json.dumps(report.to_dict()))["config"]["hidden_size"] == 8


def test_grulm_contenders_train_in_grulms_loop(monkeypatch):
    """Each round of a grulm contender is one epoch of fit over the round's batches, in order,
    with the state carried from batch to batch."""
    rounds = []
    real_fit = bench.fit

    def recording_fit(model, make_batches, config, **kwargs):
        epoch = make_batches(None)
        rounds.append(([x for x, _ in epoch], config))
        return real_fit(model, make_batches, config, **kwargs)

    monkeypatch.setattr(bench, "fit", recording_fit)
    bench.run(TINY, batches=3, warmup=1, repeats=2, only=["grulm/reference"])
    assert len(rounds) == 3  # warm-up and two timed rounds
    data = bench._batches(TINY, 3, torch.device("cpu"), seed=0)
    for inputs, config in rounds:
        assert all(torch.equal(x, d) for x, (d, _) in zip(inputs, data, strict=True))
        assert (config.epochs, config.partition, config.optimizer) == (1, "sequential", "sgd")
        assert (config.lr, config.clip) == (TINY.lr, TINY.clip)


def test_embedding_config_skips_the_textbook_model():
    config = bench.BenchConfig("tiny-emb", vocab_size=7, hidden_size=8, num_layers=2,
                               input_kind="embedding", batch_size=2, num_steps=3,
                               variant="reset_after")
    report = bench.run(config, batches=1, warmup=0, repeats=1, only=["grulm/torch"])
    results = {r.contender: r for r in report.results}
    assert "one layer with one-hot input" in results["textbook"].skipped
    assert results["grulm/torch"].tokens_per_s > 0
    assert "grulm/reference" not in results  # not asked for


def test_cli_prints_a_table_and_one_json_line(run_grulm):
    result = run_grulm("bench", "--config", "seed", "--batches", "1", "--repeats", "1",
                       "--warmup", "0", "--only", "grulm/cpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("seed: 1×256 reset_before GRU")
    assert any(line.startswith("nn.GRU") and "1.00×" in line for line in lines)
    data = json.loads(lines[-1])
    assert [r["config"]["name"] for r in data["reports"]] == ["seed"]


def test_cli_rejects_bad_counts(run_grulm):
    result = run_grulm("bench", "--repeats=0")
    assert result.returncode == 2
    assert "--repeats must be a positive integer" in result.stderr


def test_a_cell_option_benchmarks_that_cell_where_it_runs(run_grulm):
    """``--cell lstm``: the backends that run an LSTM are timed, the fused GRU one and the
    seed's GRU are skipped with the reason; a bad cell is one line."""
    result = run_grulm("bench", "--config", "seed", "--cell", "lstm", "--batches", "1",
                       "--repeats", "1", "--warmup", "0", "--only", "grulm/torch")
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
