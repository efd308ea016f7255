"""``grulm generate``: the real command in a subprocess (stream, interactive, samples, prime
files), and every bad input turned into one clear line with exit status 2."""

import re
import subprocess
import sys

import pytest
import torch

from grulm.checkpoint import load_checkpoint, save_checkpoint
from grulm.cli import main
from grulm.data.vocab import Vocab
from grulm.generate import predict
from grulm.model import GRULM, GRUConfig

# The 28 tokens of The Time Machine under d2l cleaning.
D2L_TOKENS = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]


def _save(directory, tokens, cleaning):
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(tokens), hidden_size=16, init="torch", backend="reference")
    save_checkpoint(
        directory, GRULM(config).eval(), Vocab(tokens), {"data": {"cleaning": cleaning}}
    )
    return directory


@pytest.fixture(scope="module")
def d2l_checkpoint(tmp_path_factory):
    """An untrained 1×16 GRULM over the seed's 28 characters, d2l cleaning."""
    return _save(tmp_path_factory.mktemp("gen") / "d2l", D2L_TOKENS, "d2l")


@pytest.fixture(scope="module")
def raw_checkpoint(tmp_path_factory):
    """An untrained model over a few raw characters (no cleaning of the prefix)."""
    return _save(tmp_path_factory.mktemp("gen") / "raw", ["<unk>", *"abc .\n"], "raw")


def _assert_clean_error(returncode, stderr, *patterns):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("grulm generate: error: "), lines[0]
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------
# The real command.


def test_defaults_are_the_seeds_prediction(d2l_checkpoint, run_grulm):
    result = run_grulm("generate", d2l_checkpoint)
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(d2l_checkpoint)
    expected = predict(checkpoint.model, checkpoint.vocab, "time traveller", 50)
    assert result.stdout == expected + "\n"
    assert result.stderr == ""


def test_stream_through_a_pipe_prints_as_it_goes(d2l_checkpoint, run_grulm):
    whole = run_grulm("generate", d2l_checkpoint, "--prefix", "The Time", "--num-preds", "200")
    streamed = run_grulm(
        "generate", d2l_checkpoint, "--prefix", "The Time", "--num-preds", "200", "--stream"
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == whole.stdout
    assert streamed.stdout.startswith("the time")  # cleaned like the training text

    # A continuation too long to finish: its first characters arrive while it still runs.
    process = subprocess.Popen(
        [sys.executable, "-m", "grulm.cli", "generate", str(d2l_checkpoint), "--stream"]
        + ["--num-preds", "100000000", "--strategy", "sample", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.read(40)
        assert first.startswith("time traveller") and len(first) == 40
        assert process.poll() is None
        process.stdout.close()  # the reader leaves, as `| head` does: a quiet exit
        assert process.wait(timeout=60) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_interactive_reads_prefixes_until_end_of_input(d2l_checkpoint, run_grulm):
    result = run_grulm(
        "generate",
        d2l_checkpoint,
        "--interactive",
        "--num-preds",
        "10",
        input="time traveller\n\nthe \nTHE \n",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("time traveller") and len(lines[0]) == 24
    assert lines[1].startswith("the ") and lines[1] == lines[2]  # THE is cleaned to the
    assert "prefix>" not in result.stderr  # stdin is not a terminal: no prompt
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "prefix is empty" in errors[0]


def test_prime_file_and_out_of_vocabulary_warning(raw_checkpoint, tmp_path, run_grulm):
    prime = tmp_path / "prime.txt"
    prime.write_text("abQ cZQ", encoding="utf-8")
    result = run_grulm("generate", raw_checkpoint, "--prime-file", prime, "--num-preds", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("abQ cZQ") and len(result.stdout) >= 7 + 5
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("grulm generate: warning:")
    assert "'Q', 'Z'" in warnings[0]


def test_bad_value_through_the_real_command(d2l_checkpoint, run_grulm):
    result = run_grulm("generate", d2l_checkpoint, "--num-preds", "-1")
    _assert_clean_error(result.returncode, result.stderr, "≥ 0")
    result = run_grulm("generate", d2l_checkpoint, "--prime-file", "/no/such/prime.txt")
    _assert_clean_error(result.returncode, result.stderr, "does not exist")


# ---------------------------------------------------------------------------------------------
# Every bad input, through the same entry point in this process (fast; an unexpected exception
# would fail the test outright).


@pytest.fixture
def prime_files(tmp_path):
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02abc")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", ""], "prefix is empty"),
        (["--prefix", "123"], None),  # d2l cleaning leaves " ": documented, not an error
        (["--num-preds", "-3"], "≥ 0"),
        (["--strategy", "sample", "--temperature", "-1"], "temperature must be ≥ 0"),
        (["--strategy", "sample", "--top-k", "0"], "top_k must be a positive"),
        (["--strategy", "sample", "--top-p", "0"], r"top_p must lie in \(0, 1\]"),
        (["--strategy", "sample", "--top-p", "1.5"], r"top_p must lie in \(0, 1\]"),
        (["--strategy", "beam", "--beam-width", "0"], "beam_width must be a positive"),
        (["--strategy", "beam", "--beam-width", "2", "--num-samples", "3"], "at most"),
        (["--temperature", "0.5"], "applies only to strategy 'sample'"),
        (["--num-samples", "0"], "num_samples"),
        (["--stream", "--strategy", "beam"], "--stream works with"),
        (["--stream", "--num-samples", "2"], "--stream prints one"),
        (["--prime-file", "{dir}/missing.txt"], "does not exist"),
        (["--prime-file", "{dir}"], "is a directory"),
        (["--prime-file", "{dir}/binary.bin"], "binary"),
        (["--prime-file", "{dir}/latin1.txt"], r"not UTF-8 text: byte 0xe9 at offset 3"),
        (["--prime-file", "{dir}/empty.txt"], "prefix is empty"),
        (["--device", "warp-drive"], r"^grulm generate: error: --device 'warp-drive' is not a "
         r"device; use cpu, cuda, cuda:N or auto$"),
        (["--device", "xla"], "grulm runs on cpu or cuda, not on xla devices; use --device cpu"),
        (["--device", "vulkan"], "not on vulkan devices"),
        pytest.param(
            ["--device", "mps"],
            "no Apple GPU",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is here"),
        ),
        pytest.param(
            ["--device", "cuda"],
            "PyTorch sees no CUDA GPU on this machine; use --device cpu$",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (["--num-samples", "100000000"], r"--num-samples 100,000,000 is more than the 10,000 "
         r"continuations grulm generates at once; ask for fewer and run again with another "
         r"--seed for more$"),
        (["--strategy", "beam", "--beam-width", "100000000"], r"--beam-width 100,000,000 is "
         r"more than the 10,000 hypotheses grulm keeps; use a smaller --beam-width$"),
        (["--strategy", "sample", "--num-samples", "10000", "--num-preds", "100000000"],
         r"generating 10,000 continuations of 100,000,000 tokens with a 1×16 GRU needs about "
         r"[\d.]+ TiB of memory but only [\d.]+ \w+ are available \(grulm plans to use at most "
         r"80% of it\); use a smaller --num-preds or --num-samples$"),
        (["--num-preds", "1000000000000"], r"generating 1 continuation of 1,000,000,000,000 "
         r"tokens .* use a smaller --num-preds, or --stream, which keeps no text$"),
        (["--strategy", "beam", "--beam-width", "10000", "--num-preds", "100000000"],
         r"generating 10,000 beam hypotheses of 100,000,000 tokens .* use a smaller "
         r"--num-preds or --beam-width$"),
    ],
)
def test_bad_inputs_give_one_clear_line(d2l_checkpoint, prime_files, capsys, args, message):
    args = [a.replace("{dir}", str(prime_files)) for a in args]
    status = main(["generate", str(d2l_checkpoint), "--num-preds", "5", *args])  # the last wins
    captured = capsys.readouterr()
    if message is None:
        assert status == 0, captured.err
        return
    _assert_clean_error(status, captured.err, message)
    assert captured.out == ""


def test_sampling_is_repeatable_with_a_seed(d2l_checkpoint, capsys):
    args = ["generate", str(d2l_checkpoint), "--strategy", "sample", "--num-samples", "3"]
    args += ["--top-p", "0.9", "--temperature", "0.8", "--seed", "7"]
    assert main(args) == 0
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first
    samples = first.rstrip("\n").split("\n\n")
    assert len(samples) == 3 and all(s.startswith("time traveller") for s in samples)
    main([*args[:-1], "8"])
    assert capsys.readouterr().out != first


def test_beam_search_and_stop_strings(d2l_checkpoint, capsys):
    args = ["generate", str(d2l_checkpoint), "--num-preds", "8"]
    assert main([*args, "--strategy", "beam", "--beam-width", "3"]) == 0
    beam = capsys.readouterr().out
    assert beam.startswith("time traveller") and len(beam) == 14 + 8 + 1

    main(args)
    continuation = capsys.readouterr().out[14:-1]
    stop = continuation[3:5]
    main([*args, "--stop", stop, "--stop", "never"])
    assert capsys.readouterr().out[14:-1] == continuation[: continuation.find(stop) + 2]


def test_a_missing_checkpoint(tmp_path, capsys):
    status = main(["generate", str(tmp_path / "nope")])
    _assert_clean_error(status, capsys.readouterr().err, "does not exist")


def test_top_k_larger_than_the_vocabulary_is_clamped_with_a_note(d2l_checkpoint, capsys):
    status = main(
        ["generate", str(d2l_checkpoint), "--strategy", "sample", "--top-k", "1000", "--seed", "1"]
    )
    captured = capsys.readouterr()
    assert status == 0
    assert captured.err.strip() == (
        "grulm generate: warning: top_k=1000 is larger than the vocabulary; using all 28 tokens"
    )


def test_temperature_zero_is_greedy(d2l_checkpoint, capsys):
    main(["generate", str(d2l_checkpoint)])
    greedy = capsys.readouterr().out
    main(["generate", str(d2l_checkpoint), "--strategy", "sample", "--temperature", "0"])
    assert capsys.readouterr().out == greedy


def test_interactive_prompt_goes_to_stderr_on_a_terminal(d2l_checkpoint, monkeypatch, capsys):
    class Terminal:
        lines = iter(["time\n", ""])

        def isatty(self):
            return True

        def readline(self):
            return next(self.lines)

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert main(["generate", str(d2l_checkpoint), "--interactive", "--num-preds", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("time") and len(captured.out) == 4 + 3 + 1
    assert captured.err.count("prefix> ") == 2


# ---------------------------------------------------------------------------------------------
# <unk> and memory.


@pytest.fixture(scope="module")
def unk_checkpoint(tmp_path_factory):
    """An untrained model whose head ranks <unk> first after every input, by far."""
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(D2L_TOKENS), hidden_size=16, backend="reference")
    model = GRULM(config).eval()
    with torch.no_grad():
        model.head.bias[0] = 3.0
    directory = tmp_path_factory.mktemp("gen") / "unk"
    save_checkpoint(directory, model, Vocab(D2L_TOKENS), {"data": {"cleaning": "d2l"}})
    return directory


@pytest.mark.parametrize(
    "args",
    [
        ["--strategy", "sample", "--temperature", "3"],
        ["--strategy", "sample", "--top-k", "3"],
        ["--strategy", "sample", "--temperature", "0"],
        ["--strategy", "beam"],
    ],
    ids=["hot", "top-k", "cold", "beam"],
)
def test_sample_and_beam_print_no_unk_unless_allowed(unk_checkpoint, capsys, args):
    seed = [] if "beam" in args else ["--seed", "3"]
    args = ["generate", str(unk_checkpoint), "--num-preds", "200", *seed, *args]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "<unk>" not in text and len(text) == len("time traveller") + 200 + 1
    assert main([*args, "--allow-unk"]) == 0
    assert "<unk>" in capsys.readouterr().out


def test_greedy_prints_the_seeds_argmax_even_when_it_is_unk(unk_checkpoint, capsys):
    assert main(["generate", str(unk_checkpoint), "--num-preds", "3"]) == 0
    assert capsys.readouterr().out == "time traveller" + "<unk>" * 3 + "\n"


def test_streaming_is_not_refused_for_its_length(d2l_checkpoint, monkeypatch, capsys):
    """Without --stream the text of 200,000 tokens would be kept (about 12 MiB); with it
    nothing is, so the same limit lets it run."""
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", "4M")
    args = ["generate", str(d2l_checkpoint), "--num-preds", "200000"]
    _assert_clean_error(
        main(args), capsys.readouterr().err, r"needs about [\d.]+ MiB of memory but only 4\.0 MiB"
    )
    assert main([*args[:-1], "20", "--stream"]) == 0
    assert main([*args, "--stream"]) == 0
    assert len(capsys.readouterr().out) > 200_000
