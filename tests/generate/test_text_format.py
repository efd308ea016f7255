"""Prefixes and output text (grulm.generate.text_format): cleaning and tokenising a prefix as the
corpus was, out-of-vocabulary tokens read as <unk> with one warning, letters that d2l cleaning
drops named (punctuation and digits, which it is documented to drop, go silently), word tokens
joined, and the format read from a checkpoint's metadata."""

import warnings

import pytest

from grulm.checkpoint import CheckpointMeta, DataInfo
from grulm.data.vocab import Vocab
from grulm.errors import ConfigError
from grulm.generate import TextFormat, generate, predict, stream
from grulm.generate.text_format import DroppedLettersWarning, OutOfVocabularyWarning, prefix_ids

from .mocks import FixedLogits, TrigramMock, abc_vocab, manual_greedy, random_trigram

VOCAB = Vocab(["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"])
VOCAB_WORDS = Vocab(["<unk>", "time", "traveller"])


@pytest.mark.parametrize(
    "token, vocab, expected", [("char", VOCAB, [" "]), ("word", VOCAB_WORDS, ["time"])]
)
def test_letters_of_another_script_warn_once_naming_them(token, vocab, expected):
    prefix = "日本語" if token == "char" else "日本語 time"
    with pytest.warns(DroppedLettersWarning) as record:
        tokens, _ = prefix_ids(vocab, prefix, TextFormat(token, "d2l"))
    assert tokens == expected
    assert len(record) == 1
    assert str(record[0].message) == (
        "d2l cleaning drops 3 letter(s) of the prefix outside A-Z: '日', '本', '語'; the model "
        "was trained on the letters a-z only, so write the prefix in those"
    )
    assert issubclass(DroppedLettersWarning, OutOfVocabularyWarning)


def test_accented_letters_are_counted_and_long_lists_cut_short():
    prefix = "Déjà vu, café! " + "".join(chr(0x4E00 + i) for i in range(20))
    with pytest.warns(DroppedLettersWarning, match=r"drops 23 letter\(s\) .*'é', 'à', '一'.* and "
                      r"12 more; the model"):
        prefix_ids(VOCAB, prefix, TextFormat("char", "d2l"))


@pytest.mark.parametrize("prefix", ["Time Traveller, 1895!", "  \t\r\n-_0", "\ufeffthe"])
def test_punctuation_digits_and_spaces_are_dropped_silently(prefix):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prefix_ids(VOCAB, prefix, TextFormat("char", "d2l"))


def test_raw_cleaning_keeps_the_letters_and_reads_them_as_unknown():
    with pytest.warns(OutOfVocabularyWarning) as record:
        tokens, ids = prefix_ids(VOCAB, "日a", TextFormat("char", "raw"))
    assert tokens == ["日", "a"] and ids == [0, 2]
    assert [type(w.message) for w in record] == [OutOfVocabularyWarning]


def test_raw_prefixes_are_cleaned_like_the_corpus():
    vocab = Vocab(["<unk>", "a", "b", "\n", "ab"])
    assert prefix_ids(vocab, "\ufeffab\r\n", TextFormat("char", "raw")) == (
        ["a", "b", "\n"], [1, 2, 3]
    )
    assert prefix_ids(vocab, "\ufeffab\r\n", TextFormat("word", "raw")) == (["ab", "\n"], [4, 3])


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
    words = TextFormat.from_meta(CheckpointMeta(data=DataInfo(cleaning="d2l", token="word")))
    assert words == TextFormat("word", "d2l") and words.joiner == " "
    raw_words = TextFormat.from_meta(CheckpointMeta(data=DataInfo(token="word")))
    assert raw_words == TextFormat("word", "raw") and raw_words.joiner == ""
    assert TextFormat.from_meta(CheckpointMeta()) == TextFormat("char", "raw")
