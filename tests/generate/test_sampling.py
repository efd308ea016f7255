"""Sampling (grulm.generate.sampling): seeded, at the softmax's frequencies, inside top-k and
top-p."""

import pytest
import torch

from grulm.generate import filter_logits, generate
from grulm.generate.sampling import without_unk

from .mocks import FixedLogits, TrigramMock, abc_vocab, random_trigram


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


def _next_token_counts(logits, n, seed, **options):
    """How often each of the five ids follows "a" in ``n`` one-token samples."""
    vocab = abc_vocab(4)
    texts = generate(FixedLogits(logits), vocab, "a", max_new=1, strategy="sample",
                     num_samples=n, generator=torch.Generator().manual_seed(seed), **options)
    # Token 0 is <unk>: "a<unk>"[1:] is "<unk>", which maps back to 0.
    return torch.tensor([vocab[t[1:]] for t in texts]).bincount(minlength=5).double()


@pytest.mark.parametrize(
    ("unk_logit", "allow_unk"), [(0.0, True), (3.0, None)], ids=["unk-allowed", "default"]
)
def test_sampled_frequencies_match_the_softmax(unk_logit, allow_unk):
    """Over every token with ``allow_unk=True``; by default over every token but <unk>, here
    the most likely one."""
    logits = torch.tensor([unk_logit, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    n = 20_000
    counts = _next_token_counts(logits, n, 123, allow_unk=allow_unk)
    if allow_unk:
        assert _chi_square(counts, logits.softmax(0), n) < CHI2_999[4]
    else:
        assert counts[0] == 0
        assert _chi_square(counts[1:], logits[1:].softmax(0), n) < CHI2_999[3]


def test_sampled_frequencies_with_temperature_and_top_k_match_the_renormalised_softmax():
    logits = torch.tensor([0.0, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    n = 20_000
    counts = _next_token_counts(logits, n, 5, temperature=0.7, top_k=3)
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
