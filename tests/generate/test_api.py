"""generate, predict and stream (grulm.generate.api): greedy and its limits, <unk>, stop strings,
streaming, option checks, and the seed's predict on a small trained model."""

import itertools
import math
import tracemalloc
import warnings

import pytest
import torch

from grulm import textbook
from grulm.data.vocab import Vocab
from grulm.errors import ConfigError
from grulm.generate import GenerationWarning, OutOfVocabularyWarning, generate, predict, stream
from grulm.model import GRULM, GRUConfig

from .mocks import FixedLogits, TrigramMock, UnkLover, abc_vocab, manual_greedy, random_trigram

# ---------------------------------------------------------------------------------------------
# Greedy and its limits.


@pytest.mark.parametrize("seed", range(3))
def test_greedy_takes_the_argmax(seed):
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, seed))
    assert generate(model, vocab, "ab", max_new=20) == [manual_greedy(model, vocab, "ab", 20)]
    assert predict(model, vocab, "ab", 20) == manual_greedy(model, vocab, "ab", 20)


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "sample", "temperature": 0},
        {"strategy": "sample", "temperature": 1e-3},
        {"strategy": "sample", "top_k": 1},
        {"strategy": "sample", "top_p": 1e-6},
        {"strategy": "beam", "beam_width": 1},
    ],
    ids=["temperature-0", "temperature-1e-3", "top-k-1", "tiny-top-p", "beam-width-1"],
)
def test_limits_of_sampling_and_beam_equal_greedy(options):
    """Each limit is greedy over the same candidates: every token but <unk>."""
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 7, spaced=True))
    greedy = generate(model, vocab, "ca", max_new=30, allow_unk=False)
    generator = torch.Generator().manual_seed(0)
    if options["strategy"] == "sample":
        options = {**options, "generator": generator}
    assert generate(model, vocab, "ca", max_new=30, **options) == greedy


def test_max_new_zero_returns_the_prefix():
    vocab = abc_vocab()
    assert predict(FixedLogits([0.0, 1, 2, 3]), vocab, "abc", 0) == "abc"


# ---------------------------------------------------------------------------------------------
# <unk>: never generated unless asked, except by the seed's greedy.


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "sample"},
        {"strategy": "sample", "temperature": 5.0},
        {"strategy": "sample", "temperature": 0},
        {"strategy": "sample", "top_k": 2},
        {"strategy": "sample", "top_p": 0.9},
        {"strategy": "beam"},
        {"strategy": "beam", "beam_width": 8, "num_samples": 8},
        {"strategy": "greedy", "allow_unk": False},
    ],
    ids=["sample", "hot", "cold", "top-k", "top-p", "beam", "wide-beam", "greedy-masked"],
)
def test_unk_is_never_generated_unless_asked(options):
    vocab = abc_vocab(4)
    model = UnkLover(len(vocab))
    kwargs = {"generator": torch.Generator().manual_seed(0)} if options["strategy"] == "sample" \
        else {}
    texts = generate(model, vocab, "ab", max_new=40, **options, **kwargs)
    assert all("<unk>" not in text for text in texts), texts
    if options["strategy"] != "sample" or options.get("temperature") == 0:
        assert texts[0] == "ab" + "cdab" * 10  # the most likely other token, every step
    if options["strategy"] != "beam":
        pieces = stream(model, vocab, "ab", max_new=40, **options, **kwargs)
        assert "<unk>" not in "".join(pieces)
    texts = generate(model, vocab, "ab", max_new=40, **{**options, "allow_unk": True}, **kwargs)
    assert any("<unk>" in text for text in texts)


def test_greedy_keeps_the_seeds_argmax_over_every_token():
    vocab = abc_vocab(4)
    model = UnkLover(len(vocab))
    assert predict(model, vocab, "ab", 3) == "ab" + "<unk>" * 3
    assert generate(model, vocab, "ab", max_new=3) == ["ab" + "<unk>" * 3]


def test_a_vocabulary_of_unk_alone_still_generates():
    vocab = Vocab(["<unk>"])
    with pytest.warns(OutOfVocabularyWarning):
        texts = generate(FixedLogits([0.0]), vocab, "x", max_new=3, strategy="sample")
    assert texts == ["x" + "<unk>" * 3]


def test_allow_unk_must_be_a_bool_or_none():
    with pytest.raises(ConfigError, match="allow_unk must be None, True or False"):
        generate(FixedLogits([0.0, 1.0]), abc_vocab(1), "a", allow_unk="yes")


# ---------------------------------------------------------------------------------------------
# Stop strings and streaming.


def test_stop_strings_end_each_sequence_after_its_first_stop():
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 4) * 0.3)
    g = torch.Generator().manual_seed(3)
    texts = generate(
        model,
        vocab,
        "ab",
        max_new=50,
        strategy="sample",
        num_samples=8,
        stop=["ca", "dd"],
        generator=g,
    )
    for text in texts:
        continuation = text[2:]
        hits = [continuation.find(s) + len(s) for s in ("ca", "dd") if s in continuation]
        if hits:
            assert min(hits) == len(continuation)
        else:
            assert (
                len(vocab[list(continuation.replace("<unk>", "?"))])
                - 4 * continuation.count("<unk>")
                == 50
            )


def test_stream_equals_generate():
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 6) * 0.3)
    for options in ({}, {"strategy": "sample", "top_k": 3}, {"stop": "cb"}):
        whole = generate(
            model, vocab, "ab", max_new=40, generator=torch.Generator().manual_seed(9), **options
        )[0]
        pieces = stream(
            model, vocab, "ab", max_new=40, generator=torch.Generator().manual_seed(9), **options
        )
        assert "ab" + "".join(pieces) == whole


def test_streaming_memory_stays_constant():
    vocab = abc_vocab(4)
    model = GRULM(GRUConfig(vocab_size=5, hidden_size=8, backend="reference")).eval()
    pieces = stream(
        model,
        vocab,
        "a",
        max_new=20_000,
        stop="zz",
        strategy="sample",
        generator=torch.Generator().manual_seed(0),
    )
    tracemalloc.start()
    try:
        for _ in itertools.islice(pieces, 1_000):
            pass
        before = tracemalloc.get_traced_memory()[0]
        for _ in pieces:
            pass
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16_000  # keeping 19,000 more pieces would take ≥ 152 kB of list


# ---------------------------------------------------------------------------------------------
# Bad options.


@pytest.mark.parametrize(
    ("prefix", "options", "message"),
    [
        ("", {}, "prefix is empty"),
        ("a", {"max_new": -1}, "≥ 0"),
        ("a", {"strategy": "sample", "temperature": -0.5}, "temperature must be ≥ 0"),
        ("a", {"strategy": "sample", "temperature": math.nan}, "temperature"),
        ("a", {"strategy": "sample", "top_k": 0}, "top_k must be a positive"),
        ("a", {"strategy": "sample", "top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
        ("a", {"strategy": "sample", "top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
        ("a", {"strategy": "beam", "beam_width": 0}, "beam_width must be a positive"),
        ("a", {"strategy": "beam", "beam_width": 2, "num_samples": 3}, "at most beam_width=2"),
        ("a", {"temperature": 0.5}, "applies only to strategy 'sample'"),
        ("a", {"beam_width": 3}, "applies only to strategy 'beam'"),
        ("a", {"strategy": "nucleus"}, "strategy must be one of"),
        ("a", {"num_samples": 0}, "num_samples"),
        ("a", {"stop": [""]}, "stop strings"),
    ],
)
def test_bad_options_raise_one_clear_config_error(prefix, options, message):
    with pytest.raises(ConfigError, match=message):
        generate(FixedLogits([0.0, 1, 2, 3]), abc_vocab(), prefix, **options)


def test_stream_refuses_beam_search():
    with pytest.raises(ConfigError, match="cannot stream"):
        stream(FixedLogits([0.0, 1, 2, 3]), abc_vocab(), "a", strategy="beam")


def test_top_k_larger_than_the_vocabulary_is_clamped_with_a_warning():
    vocab, model = abc_vocab(), TrigramMock(random_trigram(4, 0))

    def sample(**options):
        g = torch.Generator().manual_seed(4)
        return generate(model, vocab, "a", max_new=20, strategy="sample", generator=g, **options)

    with pytest.warns(GenerationWarning, match="larger than the vocabulary"):
        clamped = sample(top_k=100)
    assert clamped == sample()


# ---------------------------------------------------------------------------------------------
# A small trained model: the seed's predict, sampling streamed.


@pytest.mark.parametrize("prefix", ["time traveller", "traveller", "t", "the machine "])
def test_predict_matches_the_textbook_predict(trained, prefix):
    model, vocab = trained
    net = textbook.gru_model(len(vocab), 64)
    net.params = textbook.from_grulm(model)
    net.init_state = lambda batch_size, hidden, device: (
        torch.zeros(batch_size, hidden, dtype=torch.float64),
    )
    with torch.no_grad():
        expected = textbook.predict(prefix, 50, net, vocab, "cpu")
    assert predict(model, vocab, prefix, 50) == expected
    assert generate(model, vocab, prefix, max_new=50, fast=False) == [expected]


def test_trained_model_sampling_streams_like_generate(trained):
    model, vocab = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = {"max_new": 80, "strategy": "sample", "top_p": 0.9}
        whole = generate(model, vocab, "the ", generator=torch.Generator().manual_seed(1),
                         **options)[0]
        pieces = stream(model, vocab, "the ", generator=torch.Generator().manual_seed(1),
                        **options)
        assert "the " + "".join(pieces) == whole
