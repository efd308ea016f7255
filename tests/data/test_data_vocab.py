"""Vocab: the seed's id order, lookups, JSON round-trip; The Time Machine as d2l builds it."""

from __future__ import annotations

import collections
import re

import pytest
import torch

from grulm.data import Vocab, load_corpus, load_corpus_time_machine
from grulm.errors import DataError


def d2l_time_machine(path):
    """d2l §8.2 verbatim: read_time_machine, tokenize(lines, 'char'), Vocab, corpus."""
    with open(path) as f:
        lines = f.readlines()
    lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]
    tokens = [list(line) for line in lines]
    counter = collections.Counter(token for line in tokens for token in line)
    token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
    idx_to_token = ["<unk>"]
    for token, _ in token_freqs:
        idx_to_token.append(token)
    token_to_idx = {t: i for i, t in enumerate(idx_to_token)}
    corpus = [token_to_idx[token] for line in tokens for token in line]
    return idx_to_token, corpus


def test_ids_follow_frequency_then_first_appearance():
    vocab = Vocab.build(list("bbaacd"))  # b and a tie (2): b appeared first
    assert vocab.idx_to_token == ["<unk>", "b", "a", "c", "d"]
    assert vocab["b"] == 1 and vocab["zzz"] == 0 and vocab[["a", "q"]] == [2, 0]


def test_min_freq_and_reserved_tokens():
    vocab = Vocab.build(list("aaabbc<"), min_freq=2, reserved_tokens=["<pad>", "b"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "b", "a"]
    assert vocab["c"] == 0 and "c" not in vocab


def test_unk_in_the_text_is_not_added_twice():
    assert Vocab.build(["<unk>", "<unk>", "x"]).idx_to_token == ["<unk>", "x"]


def test_to_tokens_accepts_int_list_and_tensor():
    vocab = Vocab.build(list("abca"))
    assert vocab.to_tokens(1) == "a"
    assert vocab.to_tokens([1, 2]) == ["a", "b"]
    assert vocab.to_tokens(torch.tensor([[3], [0]])) == ["c", "<unk>"]
    with pytest.raises(DataError, match="outside this vocabulary of 4"):
        vocab.to_tokens([4])


def test_json_round_trip_and_equality():
    vocab = Vocab.build(list("héllo wörld"), reserved_tokens=["<bos>"])
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab and hash(again) == hash(vocab) and len(again) == len(vocab)
    assert Vocab.from_dict(vocab.to_dict()).idx_to_token == vocab.idx_to_token
    assert again != Vocab.build(list("hello"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "does not parse"),
        ('{"format": "other", "tokens": []}', "not a grulm vocabulary"),
        ('{"format": "grulm.vocab/1", "tokens": [1]}', "list of strings"),
        ('{"format": "grulm.vocab/1", "tokens": ["a"]}', "must start with '<unk>'"),
        ('{"format": "grulm.vocab/1", "tokens": ["<unk>", "a", "a"]}', "more than once"),
    ],
)
def test_bad_vocab_json(text, message):
    with pytest.raises(DataError, match=message):
        Vocab.from_json(text)


def test_time_machine_vocab_and_corpus_match_d2l(shared_data):
    idx_to_token, d2l_corpus = d2l_time_machine(shared_data / "timemachine.txt")
    corpus = load_corpus("timemachine")
    assert len(corpus.vocab) == 28 and len(corpus) == 170580 == len(d2l_corpus)
    assert corpus.vocab.idx_to_token == idx_to_token
    assert corpus.vocab.idx_to_token[:6] == ["<unk>", " ", "e", "t", "a", "i"]
    assert corpus.ids.tolist() == d2l_corpus
    assert corpus.ids[:10].tolist() == [3, 9, 2, 1, 3, 5, 13, 2, 1, 13]  # "the time m"
    assert corpus.decode(corpus.ids[:30]) == "the time machine by h g wellsi"


def test_load_corpus_time_machine_truncates_after_building_the_vocab(shared_data):
    ids, vocab = load_corpus_time_machine(10_000)
    full, _ = load_corpus_time_machine()
    assert ids.dtype == torch.int64 and ids.shape == (10_000,) and len(vocab) == 28
    assert torch.equal(ids, full[:10_000]) and len(full) == 170580
