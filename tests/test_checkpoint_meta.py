"""CheckpointMeta: typed attributes, a JSON round trip that loses nothing, the same validation
messages, and ``grulm info --json`` printing a checkpoint's metadata as the file holds it."""

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from grulm.checkpoint import (
    FORMAT_VERSION,
    METADATA_FILE,
    CheckpointMeta,
    DataInfo,
    load_checkpoint,
    save_checkpoint,
)
from grulm.cli import main
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError
from grulm.model import GRULM, GRUConfig

V1_RUN = Path(__file__).resolve().parent / "fixtures" / "v1-run"
FILE_FIELDS = ("model_config", "vocab", "tensors_file", "tensors_sha256")


@pytest.fixture
def model_and_vocab():
    vocab = Vocab.build(list("hello world"))
    torch.manual_seed(0)
    return GRULM(GRUConfig(len(vocab), 8, input_kind="embedding", init="torch")), vocab


def _info_json(directory) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", "--json", str(directory)]) == 0
    return json.loads(out.getvalue())


def _described_by_the_file(directory) -> dict:
    """What ``grulm info --json`` printed before metadata was typed: the model config (one
    written before cells existed names its cell, a GRU with both gates), the vocabulary's size,
    then every other field of ``checkpoint.json`` in the file's order."""
    metadata = json.loads((Path(directory) / METADATA_FILE).read_text())
    return {"model_config": {"cell": "gru", "gates": "both", **metadata["model_config"]},
            "vocab_size": len(metadata["vocab"]["tokens"]),
            **{k: v for k, v in metadata.items() if k not in FILE_FIELDS}}


@pytest.mark.parametrize("where", ["", "best"])
def test_a_v1_checkpoint_reads_as_typed_attributes(where):
    meta = load_checkpoint(V1_RUN / where).meta
    assert (meta.format_version, meta.grulm_version, meta.preset) == (1, "0.1.0", "d2l")
    assert meta.data.source == "timemachine" and meta.data.cleaning == "d2l"
    assert meta.data.max_tokens == 600 and meta.data.split_fractions is None
    assert meta.data.ranges == {"train": [0, 600], "val": [153522, 170580]}
    assert meta.train["batch_size"] == 4 and meta.run["sample_prefixes"][0] == "time traveller"
    assert meta.metrics["epochs"] == 2
    assert (meta.training_state is None) == (where == "best")


@pytest.mark.parametrize("where", ["", "best"])
def test_info_json_of_a_v1_checkpoint_is_its_file(where):
    described = _info_json(V1_RUN / where)
    assert described == _described_by_the_file(V1_RUN / where)
    assert list(described) == list(_described_by_the_file(V1_RUN / where))  # the same order


def test_info_json_keeps_unknown_null_and_absent_fields_as_written(tmp_path, model_and_vocab):
    model, vocab = model_and_vocab
    save_checkpoint(tmp_path, model, vocab, {"data": {"cleaning": "d2l"}})
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata.update(preset=None, future={"a": [1, {"b": None}]},
                    data={"note": "x", "cleaning": "d2l", "split_fractions": None})
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    meta = load_checkpoint(tmp_path).meta
    assert meta.preset is None and meta.extra == {"future": {"a": [1, {"b": None}]}}
    assert meta.data.extra == {"note": "x"} and meta.data.source is None
    assert meta.data.token == "char"  # absent: the default every reader assumes
    assert _info_json(tmp_path) == _described_by_the_file(tmp_path)
    assert list(_info_json(tmp_path)["data"]) == ["note", "cleaning", "split_fractions"]


def test_round_trip_through_json():
    written = {"format": "grulm-checkpoint", "format_version": 1, "grulm_version": "0.2.0",
               "created": "2026-12-02T07:08:24+00:00", "model_config": {}, "vocab": {},
               "tensors_file": "t", "tensors_sha256": "s",
               "data": {"source": "toy", "max_tokens": 0, "ranges": {"train": [0, 9]}},
               "train": {"lr": 1.0}, "run": {}, "preset": "d2l", "metrics": {},
               "training_state": {"progress": {"epoch": 1}}, "later": 3}
    meta = CheckpointMeta.from_json(written, "checkpoint.json")
    assert meta.data == DataInfo(source="toy", max_tokens=0, ranges={"train": [0, 9]})
    assert meta.to_json() == {k: v for k, v in written.items() if k not in FILE_FIELDS}
    assert CheckpointMeta.from_json(meta.to_json(), "again") == meta


def test_changed_fields_of_a_read_meta_are_written():
    meta = CheckpointMeta.from_json({"format_version": 1, "data": {"source": "toy"}}, "x")
    changed = replace(meta, metrics={"perplexity": 2.0}, training_state={"progress": {}},
                      data=replace(meta.data, token="word"))
    assert changed.to_json() == {"format": "grulm-checkpoint", "format_version": 1,
                                 "data": {"source": "toy", "token": "word"},
                                 "metrics": {"perplexity": 2.0},
                                 "training_state": {"progress": {}}}


def test_built_in_code_every_data_field_and_the_sections_that_are_set():
    meta = CheckpointMeta(data=DataInfo(source="toy"), train={"lr": 1.0}, preset="d2l",
                          metrics={"epochs": 1})
    assert meta.to_json() == {
        "format": "grulm-checkpoint", "format_version": FORMAT_VERSION,
        "data": {"source": "toy", "sha256": None, "cleaning": "raw", "token": "char",
                 "min_freq": 0, "num_tokens": None, "vocab_size": None, "max_tokens": None,
                 "split_fractions": None, "ranges": None},
        "train": {"lr": 1.0}, "preset": "d2l", "metrics": {"epochs": 1},
    }


@pytest.mark.parametrize("edit, message", [
    ({"metrics": [1, 2]}, "'metrics' must be an object, not a list […2 items]; undo the edit"),
    ({"data": {"source": 3}}, "'data.source' must be a string, not a number 3"),
    ({"preset": 1}, "'preset' must be a string or null, not a number 1"),
    ({"training_state": {"progress": []}}, "'training_state.progress' must be an object"),
    ({"format_version": "1"}, "'format_version' must be an integer, not a string '1'"),
])
def test_from_json_refuses_what_readers_cannot_use(edit, message):
    with pytest.raises(CheckpointError, match=r"^where: " + message.replace("[", r"\[")):
        CheckpointMeta.from_json({"format_version": 1, **edit}, "where")


def test_from_json_needs_a_format_version():
    with pytest.raises(CheckpointError, match="^where lacks the field 'format_version'"):
        CheckpointMeta.from_json({"data": {}}, "where")


def test_save_accepts_a_meta_and_stamps_the_fields_it_owns(tmp_path, model_and_vocab):
    model, vocab = model_and_vocab
    meta = CheckpointMeta(format_version=7, grulm_version="9", created="then",
                          data=DataInfo(source="toy", cleaning="d2l"), metrics={"ppl": 1.5})
    save_checkpoint(tmp_path, model, vocab, meta)
    loaded = load_checkpoint(tmp_path).meta
    assert loaded.format_version == FORMAT_VERSION and loaded.grulm_version not in (None, "9")
    assert loaded.created != "then" and loaded.data == meta.data and loaded.metrics == meta.metrics
    written = json.loads((tmp_path / METADATA_FILE).read_text())
    assert list(written)[:8] == ["format", "format_version", "grulm_version", "created",
                                 "tensors_file", "tensors_sha256", "model_config", "vocab"]


def test_save_refuses_a_meta_of_the_wrong_type_before_writing(tmp_path, model_and_vocab):
    model, vocab = model_and_vocab
    with pytest.raises(CheckpointError, match="'metrics' must be an object.*load_checkpoint "
                                              "would refuse such a checkpoint"):
        save_checkpoint(tmp_path / "ck", model, vocab, CheckpointMeta(metrics=[1, 2]))
    assert not (tmp_path / "ck").exists()
