"""Whole-file preparation and its cache: bad text, raw and word tokens, compact ids,
chunking that does not change the result, cache round-trip and repair, BOM and line ends,
a min_freq that leaves nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from grulm.data import Vocab, cache_dir, load_corpus
from grulm.data import prepare as prepare_module
from grulm.data.prepare import load_prepared, prepare, storage_dtype
from grulm.data.text import clean_line_d2l, raw_words
from grulm.errors import ConfigError, DataError


def write(tmp_path, content: bytes | str, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def entries():
    root = cache_dir() / "prepared"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def test_nothing_left_after_d2l_cleaning(tmp_path):
    path = write(tmp_path, "1234 ... !!\n\n¿¡ 42\n")
    with pytest.raises(DataError, match="nothing is left after d2l cleaning.*--cleaning raw"):
        load_corpus(str(path))
    assert len(load_corpus(str(path), cleaning="raw")) == len("1234 ... !!\n\n¿¡ 42\n")


def test_undecodable_byte_names_its_offset_even_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 64)
    data = ("line of text\n" * 20).encode() + b"caf\xe9\n"
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=f"byte 0xe9 at offset {len(data) - 2} is not valid UTF-8"):
        load_corpus(str(path), cleaning="raw")
    d2l = load_corpus(str(path))  # d2l cleaning treats the byte as a separator
    assert d2l.decode(d2l.ids).endswith("line of textcaf")


def test_bad_options(tmp_path):
    path = write(tmp_path, "abc\n")
    with pytest.raises(ConfigError, match="cleaning must be one of"):
        load_corpus(str(path), cleaning="lower")
    with pytest.raises(ConfigError, match="min_freq must be an integer ≥ 0"):
        load_corpus(str(path), min_freq=-1)


TEXT = "The Time Traveller, (for so it will be\r\nconvenient to speak of him)\rwas\n\nexpounding…\n"


@pytest.mark.parametrize("cleaning", ["d2l", "raw", "none"])
@pytest.mark.parametrize("token", ["char", "word"])
def test_chunking_does_not_change_the_result(tmp_path, monkeypatch, cleaning, token):
    path = write(tmp_path, TEXT * 40)
    whole = prepare(path, cleaning=cleaning, token=token)
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 50)  # many chunks, some mid-line
    chunked = prepare(path, cleaning=cleaning, token=token)
    assert chunked.vocab == whole.vocab and torch.equal(chunked.ids, whole.ids)


def test_d2l_char_ids_equal_the_seed_pipeline(tmp_path):
    path = write(tmp_path, TEXT * 3)
    lines = open(path).readlines()
    tokens = [ch for line in lines for ch in clean_line_d2l(line)]
    vocab = Vocab.build(tokens)
    corpus = load_corpus(str(path))
    assert corpus.vocab == vocab and corpus.ids.tolist() == vocab[tokens]
    assert corpus.ids.dtype == torch.uint8


def test_raw_unicode_chars_and_min_freq(tmp_path):
    corpus = load_corpus(str(write(tmp_path, "ééé aa ✓\n")), cleaning="raw", min_freq=2)
    assert corpus.vocab.idx_to_token == ["<unk>", "é", " ", "a"]
    assert corpus.decode(corpus.ids) == "ééé aa <unk><unk>"
    assert torch.equal(corpus.encode("aé✓"), torch.tensor([3, 1, 0]))


def test_words_d2l_and_raw(tmp_path):
    path = write(tmp_path, TEXT)
    d2l = load_corpus(str(path), token="word")
    assert d2l.decode(d2l.ids[:4]) == "the time traveller for"
    raw = load_corpus(str(path), cleaning="raw", token="word")
    assert raw.decode(raw.ids) == TEXT.replace("\r\n", "\n").replace("\r", "\n")
    assert raw.vocab.to_tokens(raw.ids[:4]) == raw_words(TEXT)[:4] == ["The", " ", "Time", " "]
    none = load_corpus(str(path), cleaning="none", token="word")
    assert none.decode(none.ids) == TEXT  # round trip, every character kept


def test_a_large_vocabulary_is_stored_as_uint16_and_round_trips(tmp_path):
    words = " ".join(f"w{i}" for i in range(700)) + "\n"  # 700 words + space + newline
    path = write(tmp_path, words)
    first = load_corpus(str(path), cleaning="raw", token="word")
    assert len(first.vocab) == 703 and first.ids.dtype == torch.uint16
    assert storage_dtype(len(first.vocab)) == "uint16"
    (entry,) = entries()
    assert (entry / "ids.bin").stat().st_size == 2 * len(first)
    again = load_prepared(path, cleaning="raw", token="word")
    assert again.cached and again.vocab == first.vocab and torch.equal(again.ids, first.ids)
    assert first.decode(first.ids) == words


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
@pytest.mark.parametrize("prepared_before", [False, True])
def test_ids_are_memory_mapped_from_the_cache(tmp_path, prepared_before):
    """Every process reading a prepared corpus shares the page cache's copy of its ids."""
    path = write(tmp_path, "abc def\n" * 1000)
    if prepared_before:
        load_corpus(str(path), cleaning="raw")
    corpus = load_corpus(str(path), cleaning="raw")
    (entry,) = entries()
    maps = Path("/proc/self/maps").read_text()
    assert str((entry / "ids.bin").resolve()) in maps
    assert corpus.decode(corpus.ids[:8]) == "abc def\n"
    corpus.ids[0] = 5  # copy-on-write: the cache file is never changed
    assert (entry / "ids.bin").read_bytes()[:1] != bytes([5])


def test_storage_dtype_bounds():
    assert [storage_dtype(v) for v in (28, 256, 257, 65536, 65537)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32",
    ]  # fmt: skip


def test_cache_round_trip_and_keys(tmp_path):
    path = write(tmp_path, TEXT * 10)
    first = load_prepared(path)
    assert not first.cached and len(entries()) == 1
    second = load_prepared(path)
    assert second.cached and second.vocab == first.vocab and torch.equal(second.ids, first.ids)
    assert second.sha256 == first.sha256
    load_prepared(path, min_freq=3)  # other options, other entry
    load_prepared(path, token="word")
    assert len(entries()) == 3
    meta = json.loads((entries()[0] / "meta.json").read_text())
    assert {"format", "sha256", "dtype", "num_tokens", "vocab", "cleaning"} <= set(meta)
    path.write_text(TEXT * 11)  # new content, new entry; the old one is never used
    assert not load_prepared(path).cached and len(entries()) == 4


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    path = write(tmp_path, TEXT * 10)
    first = load_prepared(path).ids.clone()  # the ids are mapped from the file damaged below
    (entry,) = entries()
    (entry / "ids.bin").write_bytes(b"\x00" * 5)  # truncated
    rebuilt = load_prepared(path)
    assert not rebuilt.cached and torch.equal(rebuilt.ids, first)
    (entry / "meta.json").write_text("{not json")
    assert not load_prepared(path).cached
    assert load_prepared(path).cached


def test_without_cache_nothing_is_written(tmp_path):
    path = write(tmp_path, TEXT)
    corpus = load_corpus(str(path), use_cache=False, progress=True)
    assert len(corpus) > 0 and not cache_dir().exists()


def test_describe_identifies_the_data(tmp_path):
    corpus = load_corpus(str(write(tmp_path, TEXT)))
    info = corpus.describe()
    assert info["sha256"] == corpus.sha256 and info["num_tokens"] == len(corpus)
    assert (info["cleaning"], info["token"], info["vocab_size"]) == ("d2l", "char", 24)


# ------------------------------------------------------------------------------ BOM, line ends
LF_TEXT = "The Time Traveller (for so it will be\nconvenient to speak of him)\n\nwas expounding\n"


def windows_copy(text: str) -> bytes:
    """What Notepad writes: a UTF-8 byte-order mark and CRLF line ends."""
    return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")


@pytest.mark.parametrize("token", ["char", "word"])
def test_raw_reads_a_bom_crlf_copy_exactly_as_its_lf_original(tmp_path, token):
    lf = load_corpus(str(write(tmp_path, LF_TEXT * 5, "lf.txt")), cleaning="raw", token=token)
    crlf_path = write(tmp_path, windows_copy(LF_TEXT * 5), "crlf.txt")
    crlf = load_corpus(str(crlf_path), cleaning="raw", token=token)
    assert crlf.vocab == lf.vocab and torch.equal(crlf.ids, lf.ids)
    assert "\ufeff" not in crlf.vocab and "\r" not in crlf.vocab
    mac = write(tmp_path, (LF_TEXT * 5).replace("\n", "\r"), "cr.txt")  # classic Mac line ends
    assert torch.equal(load_corpus(str(mac), cleaning="raw", token=token).ids, lf.ids)


@pytest.mark.parametrize("token", ["char", "word"])
def test_none_keeps_the_bom_and_every_carriage_return(tmp_path, token):
    path = write(tmp_path, windows_copy(LF_TEXT))
    corpus = load_corpus(str(path), cleaning="none", token=token)
    assert corpus.decode(corpus.ids) == path.read_bytes().decode("utf-8")
    assert corpus.vocab.to_tokens(int(corpus.ids[0])) == "\ufeff"


def test_a_crlf_across_a_read_boundary_is_one_newline(tmp_path, monkeypatch):
    line = "x" * 60 + "\r\n"
    path = write(tmp_path, b"\xef\xbb\xbf" + (line * 4 + "\ufeffend\r\n").encode())
    assert path.read_bytes()[63:65] == b"\r\n"  # the first 64-byte read ends between them
    whole = prepare(path, cleaning="raw")
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 64)
    chunked = prepare(path, cleaning="raw")
    assert chunked.vocab == whole.vocab and torch.equal(chunked.ids, whole.ids)
    text = chunked.vocab.to_tokens(chunked.ids)
    assert "".join(text) == ("x" * 60 + "\n") * 4 + "\ufeffend\n"  # only the first BOM goes
    assert "\r" not in text


def test_raw_ids_prepared_before_the_bom_rule_are_not_reused(tmp_path):
    path = write(tmp_path, windows_copy(LF_TEXT))
    load_prepared(path, cleaning="raw")
    (entry,) = entries()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["format"] == prepare_module.FORMAT == "grulm.prepared/2"
    meta["format"] = "grulm.prepared/1"  # as written by the previous version
    (entry / "meta.json").write_text(json.dumps(meta))
    again = load_prepared(path, cleaning="raw")
    assert not again.cached and "\r" not in again.vocab


def test_a_file_with_only_a_bom_has_no_text(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="no text is left after raw cleaning.*byte-order mark"):
        load_corpus(str(path), cleaning="raw")
    assert load_corpus(str(path), cleaning="none").vocab.idx_to_token == ["<unk>", "\ufeff"]


# ------------------------------------------------------------------------------ min_freq
@pytest.mark.parametrize("cleaning", ["d2l", "raw"])
@pytest.mark.parametrize("token", ["char", "word"])
def test_a_min_freq_that_leaves_only_unk_is_refused(tmp_path, cleaning, token):
    path = write(tmp_path, "a bb a\n")  # 'a' comes first of the most frequent tokens
    expected = (
        f"min_freq 1000000 leaves only <unk> in the vocabulary of {path}: its most frequent "
        "token, 'a', occurs 2 times; lower --min-freq to 2 or less"
    )
    with pytest.raises(ConfigError) as error:
        load_corpus(str(path), cleaning=cleaning, token=token, min_freq=1_000_000)
    assert str(error.value) == expected
    assert not entries()  # nothing cached
    kept = load_corpus(str(path), cleaning=cleaning, token=token, min_freq=2)
    assert kept.vocab.idx_to_token[:2] == ["<unk>", "a"]


def test_reserved_tokens_do_not_count_as_corpus_tokens(tmp_path):
    path = write(tmp_path, "abc\n")
    with pytest.raises(ConfigError, match="min_freq 2 leaves only <unk>"):
        load_corpus(str(path), min_freq=2, reserved_tokens=["<eos>"])
