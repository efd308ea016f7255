"""Cleaning and tokenization: the fast whole-text functions equal the seed's per-line code."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grulm.data.text import (
    clean_d2l,
    clean_line_d2l,
    clean_raw,
    d2l_words,
    decode_raw,
    join_tokens,
    raw_words,
    text_to_tokens,
)
from grulm.errors import ConfigError, DataError

# Letters, separators, all three line ends, and a non-ASCII letter the d2l cleaning drops.
TRICKY = st.text(alphabet="aBz .,\t-\n\r\r\né9_", max_size=60)


def d2l_lines(text: str) -> list[str]:
    """Lines as the seed reads them: text mode, universal newlines."""
    return io.StringIO(text, newline=None).readlines()


@settings(max_examples=100, deadline=None)
@given(TRICKY)
def test_clean_d2l_equals_the_seed_line_by_line(text):
    expected = "".join(clean_line_d2l(line) for line in d2l_lines(text))
    assert clean_d2l(text.encode("utf-8")).decode("ascii") == expected


@settings(max_examples=100, deadline=None)
@given(TRICKY)
def test_d2l_words_equal_the_seed_line_by_line(text):
    expected = [word for line in d2l_lines(text) for word in clean_line_d2l(line).split()]
    assert [w.decode() for w in d2l_words(text.encode("utf-8"))] == expected


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_raw_words_round_trip(text):
    tokens = raw_words(text)
    assert "".join(tokens) == text
    assert all(tokens)


def test_raw_words_split_words_punctuation_and_whitespace():
    assert raw_words("Héllo,  wörld!\r\n\n  x_1") == [
        "Héllo", ",", "  ", "wörld", "!", "\r", "\n", "\n", "  ", "x_1",
    ]  # fmt: skip


def test_clean_line_is_the_seed_regex():
    assert clean_line_d2l("  The Time-Machine, 1895!\n") == "the time machine"
    assert re.sub("[^A-Za-z]+", " ", "a1b").strip().lower() == clean_line_d2l("a1b")


def test_decode_raw_names_the_byte_offset():
    with pytest.raises(DataError, match=r"byte 0xff at offset 105 .*--cleaning d2l"):
        decode_raw(b"abcde\xff", offset=100, name="f.txt")
    assert decode_raw("é".encode()) == "é"


def test_text_to_tokens_and_join_tokens():
    assert text_to_tokens("Time  Traveller!") == list("time traveller")
    assert text_to_tokens("Time  Traveller!", token="word") == ["time", "traveller"]
    assert join_tokens(["time", "traveller"], "d2l", "word") == "time traveller"
    assert text_to_tokens("Hé!", "raw", "char") == ["H", "é", "!"]
    assert join_tokens(raw_words("a, b\n"), "raw", "word") == "a, b\n"
    with pytest.raises(ConfigError, match="cleaning must be one of d2l, raw, none, got 'lower'"):
        text_to_tokens("x", cleaning="lower")
    with pytest.raises(ConfigError, match="token must be one of char, word"):
        join_tokens([], token="bpe")


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab \n\r\ufeffé", max_size=40))
def test_raw_cleaning_reads_as_python_text_mode_with_utf_8_sig(text):
    file = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8-sig", newline=None)
    assert clean_raw(text) == file.read()


def test_raw_cleaning_drops_only_a_leading_bom_and_normalises_line_ends():
    assert clean_raw("\ufeff\ufeffa\r\nb\rc\n\r\n") == "\ufeffa\nb\nc\n\n"
    assert clean_raw("\ufeffa", at_start=False) == "\ufeffa"  # mid-file: not a BOM


def test_prompts_are_cleaned_like_the_corpus():
    prompt = "\ufeffHi,\r\nyou\r"
    assert text_to_tokens(prompt, "raw", "char") == list("Hi,\nyou\n")
    assert text_to_tokens(prompt, "raw", "word") == ["Hi", ",", "\n", "you", "\n"]
    assert text_to_tokens(prompt, "none", "char") == list(prompt)
    assert text_to_tokens(prompt, "none", "word") == ["\ufeff", "Hi", ",", "\r", "\n", "you", "\r"]
    assert join_tokens(text_to_tokens(prompt, "none", "word"), "none", "word") == prompt


def test_d2l_reads_a_lone_surrogate_as_a_separator():
    # A command-line argument with a byte that is not UTF-8 arrives as a lone surrogate.
    assert text_to_tokens("ab\udcffcd", "d2l", "word") == ["ab", "cd"]
    assert text_to_tokens("ab\udcffcd", "d2l", "char") == list("ab cd")
