"""A d2l-cleaned prefix that loses letters of another script says so; punctuation and digits,
which d2l cleaning is documented to drop, go silently."""

import warnings

import pytest

from grulm.data.vocab import Vocab
from grulm.generate.text_format import (
    DroppedLettersWarning,
    OutOfVocabularyWarning,
    TextFormat,
    prefix_ids,
)

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
