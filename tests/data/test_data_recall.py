"""The recall:K stream: reproducible, well-formed records, the seed's vocabulary order, and
every malformed name refused in one clear message before anything is read or written."""

import hashlib

import pytest

from grulm.data import load_corpus
from grulm.data.recall import CUE, FILLER, LETTERS, MAX_DISTANCE, RECORDS, RecallTask, recall_task
from grulm.errors import ConfigError
from grulm.run import RunSpec
from grulm.run.spec import DataSpec


def test_the_stream_is_the_same_every_time_and_every_record_is_well_formed():
    task = recall_task("recall:7")
    text = task.text()
    assert text == RecallTask(7).text()  # generated from a fixed seed, not the run's
    assert len(text) == RECORDS * task.record_length == RECORDS * 11
    records = text.decode("ascii").split(" ")
    assert records[-1] == ""  # each record ends with the separator
    records = records[:-1]
    assert len(records) == RECORDS
    for record in records:
        assert record[0] in LETTERS
        assert record[1:8] == FILLER * 7
        assert record[8] == CUE
        assert record[9] == record[0]
        assert len(record) == 10
    letters = [record[0] for record in records]
    assert set(letters) == set(LETTERS)
    assert max(letters.count(c) for c in LETTERS) < 1.2 * RECORDS / 26  # drawn uniformly


def test_load_corpus_gives_the_stream_with_the_seed_vocabulary_order():
    corpus = load_corpus("recall:5", cleaning="raw")
    again = load_corpus("recall:5", cleaning="none")
    text = RecallTask(5).text()
    assert corpus.source == "recall:5"
    assert corpus.sha256 == hashlib.sha256(text).hexdigest() == again.sha256
    assert corpus.vocab.idx_to_token[:4] == ["<unk>", FILLER, CUE, " "]  # by frequency
    assert sorted(corpus.vocab.idx_to_token[4:]) == list(LETTERS)
    assert corpus.decode(corpus.ids) == text.decode("ascii")
    assert corpus.ids.equal(again.ids)
    assert corpus.describe()["num_tokens"] == RECORDS * 9


@pytest.mark.parametrize("name", ["recall:0", "recall:-3", "recall:abc", "recall:",
                                  f"recall:{MAX_DISTANCE + 1}", "recall:99999999999999",
                                  "recall:4_0", "recall: 4"])
def test_a_malformed_recall_name_is_one_clear_error(name):
    with pytest.raises(ConfigError, match=r"K in recall:K .* whole number from 1 to 1,000"):
        recall_task(name)
    with pytest.raises(ConfigError, match="recall:K"):
        DataSpec(data=name)  # refused when the spec is built, before any run directory


@pytest.mark.parametrize("cleaning, token", [("d2l", "char"), ("raw", "word")])
def test_the_stream_is_read_as_raw_characters_only(cleaning, token):
    with pytest.raises(ConfigError, match="--cleaning raw .* --token char"):
        load_corpus("recall:3", cleaning=cleaning, token=token)


def test_a_min_freq_that_drops_characters_is_refused():
    with pytest.raises(ConfigError, match="--min-freq 0"):
        load_corpus("recall:3", cleaning="raw", min_freq=10_000)


def test_other_sources_are_not_recall_tasks():
    assert recall_task("timemachine") is None
    assert recall_task("recall.txt") is None
    assert recall_task(None) is None


def test_training_windows_span_the_distance_unless_told_otherwise():
    assert RunSpec.from_preset("recall").train.num_steps == 100
    assert RunSpec.from_preset("recall").data.split_fractions == (0.9, 0.1)
    spec = RunSpec.from_preset("d2l", data="recall:200")
    assert spec.train.num_steps == 203
    assert spec.data.cleaning == "raw"
    with pytest.warns(UserWarning, match=r"num_steps 20 is shorter than K \+ 3 = 153"):
        assert RunSpec.from_preset("recall", data="recall:150", num_steps=20).train.num_steps == 20
