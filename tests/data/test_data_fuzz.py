"""Fuzzed corpora: whatever bytes a file holds, ``load_corpus`` either gives a usable corpus or
raises a :class:`GrulmError` with one line of explanation; no other exception, no hang.

Files are real files (the whole path: resolve, hash, chunked read, clean, count, cache); the
contents are random bytes, random text with BOMs, carriage returns and NULs, nothing at all,
separators only, and the options include every cleaning and token kind and a huge min_freq.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grulm.data import CLEANINGS, TOKENS, load_corpus
from grulm.data.text import clean_raw
from grulm.errors import GrulmError

BOM = "\ufeff".encode()
PIECES = ["\ufeff", "\r", "\n", "\r\n", "\0", " ", "\t", ".", "é", "日", "a", "B", "word"]
TRICKY_TEXT = st.lists(
    st.one_of(st.sampled_from(PIECES), st.characters(codec="utf-8")), max_size=100
).map(lambda pieces: "".join(pieces).encode("utf-8"))
CONTENTS = st.one_of(
    st.binary(max_size=200),
    TRICKY_TEXT,
    st.tuples(st.just(BOM), TRICKY_TEXT).map(b"".join),
    st.just(b""),
    st.just(BOM),
    st.text(alphabet=" \t\r\n.,;:!?-0123456789", max_size=100).map(str.encode),
)
MIN_FREQS = st.one_of(st.just(0), st.integers(0, 4), st.just(1_000_000))


@settings(
    max_examples=60,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the cache may be shared
)
@given(
    content=CONTENTS,
    cleaning=st.sampled_from(CLEANINGS),
    token=st.sampled_from(TOKENS),
    min_freq=MIN_FREQS,
    use_cache=st.booleans(),
)
def test_any_corpus_loads_or_gives_a_grulm_error(content, cleaning, token, min_freq, use_cache):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "corpus.txt"
        path.write_bytes(content)
        try:
            corpus = load_corpus(
                str(path), cleaning=cleaning, token=token, min_freq=min_freq, use_cache=use_cache
            )
        except GrulmError as error:
            event(type(error).__name__)  # shown by --hypothesis-show-statistics
            message = str(error)
            assert message and "\n" not in message and "Traceback" not in message
            return
        event("loaded")
        again = load_corpus(str(path), cleaning=cleaning, token=token, min_freq=min_freq)
    assert len(corpus) > 0 and len(corpus.vocab) >= 2
    assert int(corpus.ids.max()) < len(corpus.vocab)
    assert again.vocab == corpus.vocab and torch.equal(again.ids, corpus.ids)
    if cleaning != "d2l" and min_freq <= 1:  # every token kept: the text comes back
        text = content.decode("utf-8")
        assert corpus.decode(corpus.ids) == (clean_raw(text) if cleaning == "raw" else text)


@pytest.mark.parametrize("content", [b"", BOM, b" \t\r\n", b"\0\0\0"])
@pytest.mark.parametrize("cleaning", CLEANINGS)
def test_degenerate_corpora_give_one_clear_line(tmp_path, content, cleaning):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    try:
        corpus = load_corpus(str(path), cleaning=cleaning)
    except GrulmError as error:
        assert "\n" not in str(error) and str(error)
    else:
        assert cleaning != "d2l" and len(corpus) > 0
