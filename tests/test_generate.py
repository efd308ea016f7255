"""Generation: mock models with known logits, and a small GRULM trained on The Time Machine."""

import itertools
import math
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from grulm import step_kernel, textbook
from grulm.data.sources import resolve_source
from grulm.data.text import text_to_tokens
from grulm.data.vocab import Vocab
from grulm.errors import ConfigError
from grulm.generate import (
    GenerationWarning,
    GRUStepDecoder,
    ModelStepDecoder,
    OutOfVocabularyWarning,
    TextFormat,
    filter_logits,
    generate,
    predict,
    stream,
    warm_up,
)
from grulm.generate.sampling import without_unk
from grulm.model import GRULM, GRUConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# Mock models with the GRULM call signature.


class FixedLogits(nn.Module):
    """The same next-token logits (V,) after every input; a dummy (1, B, 1) state."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float64))

    def forward(self, inputs, state=None):
        B, T = inputs.shape
        state = torch.zeros(1, B, 1, dtype=torch.float64) if state is None else state
        return self.logits.expand(B, T, -1), state


class TrigramMock(nn.Module):
    """Logits ``table[prev, cur]`` from the last two tokens; the state is ``prev`` one-hot.

    The state matters, so beam search must reorder it correctly to score sequences right.
    """

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float64))  # (V, V, V)

    def forward(self, inputs, state=None):
        V = self.table.shape[0]
        prev = torch.zeros_like(inputs[:, 0]) if state is None else state[0].argmax(-1)
        logits = []
        for cur in inputs.unbind(1):
            logits.append(self.table[prev, cur])  # (B, V)
            prev = cur
        return torch.stack(logits, 1), F.one_hot(prev, V).double()[None]


def abc_vocab(n=3):
    return Vocab(["<unk>", *"abcdefgh"[:n]])


def random_trigram(V, seed, spaced=False):
    g = torch.Generator().manual_seed(seed)
    if spaced:  # distinct logits one apart: argmax is unambiguous, even at temperature 1e-3
        return torch.stack([torch.randperm(V, generator=g) for _ in range(V * V)]).reshape(V, V, V)
    return torch.randn(V, V, V, generator=g, dtype=torch.float64) * 2


def continuation_logprob(model, vocab, prefix, continuation, allow_unk=True):
    """log p(continuation | prefix) by one forward pass (for brute-force checks).

    ``continuation`` is a sequence of tokens (``<unk>`` is one token, not five characters).
    With ``allow_unk=False`` every step's distribution is the model's given "not ``<unk>``".
    """
    prefix_ids, ids = vocab[list(prefix)], vocab[list(continuation)]
    inputs = torch.tensor([prefix_ids + ids[:-1]])
    logits, _ = model(inputs, None)
    logits = logits[0, len(prefix_ids) - 1 :]  # (L, V)
    logp = (logits if allow_unk else without_unk(logits)).log_softmax(-1)
    return logp.gather(1, torch.tensor(ids)[:, None]).sum().item()


def manual_greedy(model, vocab, prefix, n):
    """The seed's loop: one token per forward call, argmax."""
    state, ids = None, vocab[list(prefix)]
    for i in ids[:-1]:
        _, state = model(torch.tensor([[i]]), state)
    out, token = [], ids[-1]
    for _ in range(n):
        logits, state = model(torch.tensor([[token]]), state)
        token = int(logits[0, -1].argmax())
        out.append(token)
    return prefix + "".join(vocab.idx_to_token[i] for i in out)


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
# Beam search.


def test_beam_finds_the_most_probable_sequence_where_greedy_does_not():
    # After 'a': b 0.6, c 0.4. After b: a, b, c equally likely. After c: c 0.9.
    # Greedy takes b (best total 0.6 · 1/3 = 0.2); the best pair is c c (0.4 · 0.9 = 0.36).
    vocab = abc_vocab()
    probs = torch.full((4, 4), 1e-12, dtype=torch.float64)
    probs[1, 2], probs[1, 3] = 0.6, 0.4
    probs[2, 1:] = 1 / 3
    probs[3, 3], probs[3, 1] = 0.9, 0.1
    table = probs.log()[None].expand(4, 4, 4)  # bigram: ignores the older token
    model = TrigramMock(table)

    everything = ["".join(s) for s in itertools.product("abc", repeat=2)]
    best = max(everything, key=lambda s: continuation_logprob(model, vocab, "a", list(s)))
    assert best == "cc"
    assert generate(model, vocab, "a", max_new=2)[0] == "aba"  # greedy, ties → lowest id
    assert generate(model, vocab, "a", max_new=2, strategy="beam", beam_width=2) == ["acc"]


@pytest.mark.parametrize("allow_unk", [True, None], ids=["unk-allowed", "default"])
@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_brute_force_enumeration(seed, allow_unk):
    vocab = abc_vocab(3)  # V = 4 with <unk>
    model = TrigramMock(random_trigram(4, seed))
    L = 3
    tokens = vocab.idx_to_token if allow_unk else vocab.idx_to_token[1:]
    scored = sorted(
        (
            (continuation_logprob(model, vocab, "ba", s, allow_unk=bool(allow_unk)), "".join(s))
            for s in itertools.product(tokens, repeat=L)
        ),
        reverse=True,
    )
    texts = generate(
        model, vocab, "ba", max_new=L, strategy="beam", beam_width=4 ** (L - 1), num_samples=3,
        allow_unk=allow_unk,
    )
    assert texts == ["ba" + text for _, text in scored[:3]]


def test_beam_with_a_stop_string_ranks_finished_hypotheses_by_length_normalised_score():
    vocab = abc_vocab()
    model = TrigramMock(random_trigram(4, 3))
    (text,) = generate(model, vocab, "a", max_new=6, strategy="beam", beam_width=3, stop="c")
    continuation = text[1:]
    assert "c" not in continuation[:-1]
    assert len(continuation) == 6 or continuation.endswith("c")


# ---------------------------------------------------------------------------------------------
# Sampling.


def test_same_seed_same_text_and_different_seeds_differ():
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 1) * 0.2)  # flat-ish: many likely continuations

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, vocab, "ab", max_new=60, strategy="sample", generator=g)[0]

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(5)}) == 5


def _chi_square(counts, probs, n):
    expected = probs * n
    return (((counts - expected) ** 2) / expected).sum().item()


# Upper 0.1% points of the chi-square distribution (scipy.stats.chi2.ppf(0.999, df)).
CHI2_999 = {2: 13.816, 3: 16.266, 4: 18.467}


@pytest.mark.parametrize(
    ("unk_logit", "allow_unk"), [(0.0, True), (3.0, None)], ids=["unk-allowed", "default"]
)
def test_sampled_frequencies_match_the_softmax(unk_logit, allow_unk):
    """Over every token with ``allow_unk=True``; by default over every token but <unk>, here
    the most likely one."""
    logits = torch.tensor([unk_logit, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    vocab = abc_vocab(4)
    n = 20_000
    texts = generate(
        FixedLogits(logits),
        vocab,
        "a",
        max_new=1,
        strategy="sample",
        num_samples=n,
        generator=torch.Generator().manual_seed(123),
        allow_unk=allow_unk,
    )
    counts = torch.tensor([vocab[t[1:]] for t in texts]).bincount(minlength=5).double()
    # Token 0 is <unk>: "a<unk>"[1:] is "<unk>", which maps back to 0.
    if allow_unk:
        assert _chi_square(counts, logits.softmax(0), n) < CHI2_999[4]
    else:
        assert counts[0] == 0
        assert _chi_square(counts[1:], logits[1:].softmax(0), n) < CHI2_999[3]


class UnkLover(nn.Module):
    """Prefers <unk> after every token, then the token after the one it was fed."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, inputs, state=None):
        B, T = inputs.shape
        logits = torch.full((B, T, self.vocab_size), -5.0, dtype=torch.float64)
        logits[:, :, 0] = 5.0
        following = inputs % (self.vocab_size - 1) + 1  # 1 → 2 → … → V-1 → 1, never 0
        logits.scatter_(-1, following[..., None], 4.0)
        state = torch.zeros(1, B, 1, dtype=torch.float64) if state is None else state
        return logits, state


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


def test_sampled_frequencies_with_temperature_and_top_k_match_the_renormalised_softmax():
    logits = torch.tensor([0.0, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    vocab = abc_vocab(4)
    n = 20_000
    texts = generate(
        FixedLogits(logits),
        vocab,
        "a",
        max_new=1,
        strategy="sample",
        temperature=0.7,
        top_k=3,
        num_samples=n,
        generator=torch.Generator().manual_seed(5),
    )
    counts = torch.tensor([vocab[t[1:]] for t in texts]).bincount(minlength=5).double()
    kept = torch.tensor([1, 2, 3])
    assert counts[[0, 4]].sum() == 0
    probs = (logits[kept] / 0.7).softmax(0)
    assert _chi_square(counts[kept], probs, n) < CHI2_999[2]


@pytest.mark.parametrize("option", [{"top_k": 2}, {"top_p": 0.6}], ids=["top-k", "top-p"])
def test_top_k_and_top_p_never_emit_a_token_outside_their_set(option):
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 11) * 0.5)
    texts = generate(
        model,
        vocab,
        "ab",
        max_new=40,
        strategy="sample",
        num_samples=50,
        generator=torch.Generator().manual_seed(0),
        **option,
    )
    for text in texts:
        ids = vocab[list(text.replace("<unk>", "?"))]  # "?" is unknown too: id 0
        for prev, cur, nxt in zip(ids, ids[1:], ids[2:], strict=False):
            logits = without_unk(model.table[prev, cur][None])  # the default: no <unk>
            allowed = filter_logits(logits, **option)[0].isfinite()
            assert allowed[nxt], (text, prev, cur, nxt)


def test_filter_logits_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False]]
    assert filter_logits(logits, top_p=0.79).isfinite().tolist() == [[True, True, False]]
    assert filter_logits(logits, top_p=0.81).isfinite().all()
    assert filter_logits(logits, top_k=2).isfinite().tolist() == [[True, True, False]]


def test_num_samples_are_one_batch_of_independent_samples():
    vocab = abc_vocab(4)
    model = TrigramMock(random_trigram(5, 2) * 0.2)
    g = torch.Generator().manual_seed(0)
    texts = generate(model, vocab, "ab", max_new=30, strategy="sample", num_samples=4, generator=g)
    assert len(texts) == 4 and len(set(texts)) == 4
    assert all(t.startswith("ab") for t in texts)


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
# Prefixes: out-of-vocabulary tokens, cleaning, words.


def test_out_of_vocabulary_prefix_characters_warn_once_and_read_as_unk():
    vocab = abc_vocab()
    table = random_trigram(4, 0)
    table[:, :, 0] = -30.0  # never generate <unk>, so the text has one character per token
    model = TrigramMock(table)
    with pytest.warns(OutOfVocabularyWarning, match=r"'X', 'é'") as record:
        text = predict(model, vocab, "aXbéX", 10)
    assert len(record) == 1
    assert text.startswith("aXbéX") and len(text) == 15
    assert text[5:] == manual_greedy(model, vocab, "a?b??", 10)[5:]


def test_d2l_cleaning_of_the_prefix_keeps_a_trailing_space():
    fmt = TextFormat(token="char", cleaning="d2l")
    assert fmt.tokenize("Time Traveller, ") == list("time traveller ")
    assert TextFormat().tokenize("Time!") == list("Time!")


def test_word_tokens_join_with_spaces_for_d2l_text():
    vocab = Vocab(["<unk>", "the", "time", "machine"])
    fmt = TextFormat(token="word", cleaning="d2l")
    model = TrigramMock(random_trigram(4, 2))
    text = generate(model, vocab, "The  Time", max_new=3, text_format=fmt)[0]
    words = text.split(" ")
    assert words[:2] == ["the", "time"] and len(words) == 5
    pieces = list(stream(model, vocab, "The  Time", max_new=3, text_format=fmt))
    assert all(p.startswith(" ") for p in pieces)
    assert "the time" + "".join(pieces) == text


def test_raw_word_tokens_round_trip_and_join_with_nothing():
    fmt = TextFormat(token="word", cleaning="raw")
    assert fmt.tokenize("Hello, world\n") == ["Hello", ",", " ", "world", "\n"]
    assert fmt.joiner == ""
    with pytest.raises(ConfigError, match="at least one word"):
        generate(
            FixedLogits([0.0, 1]),
            Vocab(["<unk>", "x"]),
            "  ",
            text_format=TextFormat("word", "d2l"),
        )


def test_text_format_from_checkpoint_meta():
    assert TextFormat.from_meta({"data": {"cleaning": "d2l", "token": "word"}}).joiner == " "
    assert TextFormat.from_meta({"cleaning": "raw", "token": "word"}).joiner == ""
    assert TextFormat.from_meta({}) == TextFormat("char", "raw")


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
# The real model: the lean step decoder and the one-pass warm-up.


@pytest.mark.parametrize(
    "config",
    [
        {"variant": "reset_before"},
        {"variant": "reset_after"},
        {
            "variant": "reset_before",
            "input_kind": "embedding",
            "embedding_size": 5,
            "num_layers": 2,
        },
        {"variant": "reset_after", "input_kind": "embedding", "num_layers": 3},
    ],
)
@pytest.mark.parametrize("impl", ["c", "numpy", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_decoder_equals_the_model_forward(config, impl, dtype):
    if impl == "c" and step_kernel.unavailable():
        pytest.skip(step_kernel.unavailable())
    torch.manual_seed(0)
    model = GRULM(GRUConfig(vocab_size=7, hidden_size=6, init="torch", **config)).to(dtype).eval()
    with torch.no_grad():  # random biases everywhere, so every folded bias is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = torch.randn(model.config.num_layers, 3, 6, dtype=dtype)
    fast = GRUStepDecoder(model, state, impl=impl)
    reference = ModelStepDecoder(model, state)
    assert fast.impl == impl
    tolerance = {"rtol": 0, "atol": 1e-12 if dtype == torch.float64 else 1e-5}

    def step_both(tokens):
        logits = torch.as_tensor(fast.step(fast.array(tokens)))
        torch.testing.assert_close(logits, reference.step(torch.tensor(tokens)), **tolerance)

    for tokens in torch.randint(0, 7, (5, 3)).tolist():
        step_both(tokens)
    fast.reorder(fast.array([2, 0, 2, 1]))
    reference.reorder(torch.tensor([2, 0, 2, 1]))
    step_both([1, 2, 3, 4])
    torch.testing.assert_close(fast.state, reference.state, **tolerance)
    chosen = fast.greedy(fast.array([0, 1, 2, 3]), 6)
    expected = reference.greedy(torch.tensor([0, 1, 2, 3]), 6)
    assert torch.as_tensor(chosen).tolist() == expected.tolist()


def test_without_a_c_compiler_generation_falls_back_to_the_array_step(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("GRULM_CACHE", str(tmp_path))
    step_kernel._load.cache_clear()
    try:
        assert "no C compiler" in step_kernel.unavailable()
        model = GRULM(GRUConfig(vocab_size=4, hidden_size=5, backend="reference")).eval()
        decoder, _ = warm_up(model, [1, 2])
        assert isinstance(decoder, GRUStepDecoder) and decoder.impl == "numpy"
        with pytest.raises(ConfigError, match="no C compiler"):
            GRUStepDecoder(model, model.begin_state(1), impl="c")
        fallback = predict(model, abc_vocab(), "ab", 5)
        assert fallback == generate(model, abc_vocab(), "ab", max_new=5, fast=False)[0]
    finally:
        step_kernel._load.cache_clear()


@pytest.fixture(scope="module")
def trained():
    """A 1×64 reset-before GRULM trained 250 Adam steps on The Time Machine (about 2 s).

    One thread: on a busy 2-core machine, two threads contending make this 10–100× slower.
    """
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"The Time Machine is not at {SHARED_DATA}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRULM_DATA_PATH", str(SHARED_DATA))
        path = resolve_source("timemachine").path
    tokens = text_to_tokens(path.read_text(encoding="utf-8"), "d2l", "char")[:10_000]
    vocab = Vocab.build(tokens)
    ids = torch.tensor(vocab[tokens])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = GRULM(GRUConfig(vocab_size=len(vocab), hidden_size=64, init="torch"))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        B, T = 16, 16
        for _ in range(250):
            starts = torch.randint(0, len(ids) - T - 1, (B,))
            window = torch.stack([ids[s : s + T + 1] for s in starts.tolist()])  # (B, T + 1)
            logits, _ = model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, len(vocab)), window[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 2.3  # it learned something: uniform is ln 28 ≈ 3.3
    return model.double().eval(), vocab


@pytest.mark.parametrize("fast", [True, False], ids=["kernel-or-forward", "forward"])
def test_one_pass_warm_up_gives_the_seeds_per_character_state(trained, fast):
    """Both one-pass warm-ups: one call into the C step (where it builds), ``model.forward``."""
    model, vocab = trained
    prefix = "time traveller said the time machine"
    ids = vocab[list(prefix)]
    decoder, logits = warm_up(model, ids, fast=fast)
    if fast and not step_kernel.unavailable():
        assert decoder.impl == "c"

    net = textbook.gru_model(len(vocab), 64)
    net.params = textbook.from_grulm(model)
    state = (torch.zeros(1, 64, dtype=torch.float64),)
    with torch.no_grad():
        for i in ids:  # the seed: one call per character
            y, state = net(torch.tensor([[i]]), state)
    torch.testing.assert_close(decoder.state[0], state[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(logits), y, rtol=0, atol=1e-12)


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
        whole = generate(
            model,
            vocab,
            "the ",
            max_new=80,
            strategy="sample",
            top_p=0.9,
            generator=torch.Generator().manual_seed(1),
        )[0]
        pieces = stream(
            model,
            vocab,
            "the ",
            max_new=80,
            strategy="sample",
            top_p=0.9,
            generator=torch.Generator().manual_seed(1),
        )
        assert "the " + "".join(pieces) == whole
