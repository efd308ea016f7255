"""Beam search (grulm.generate.beam): the most probable sequences, checked by enumeration."""

import itertools

import pytest
import torch

from grulm.generate import generate

from .mocks import TrigramMock, abc_vocab, continuation_logprob, random_trigram


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
