"""Checkpoints: round trip, atomic replacement, and every way a checkpoint can be broken."""

import json
import os

import pytest
import torch

from grulm.checkpoint import METADATA_FILE, load_checkpoint, save_checkpoint
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError
from grulm.model import GRULM, GRUConfig

META = {"data": {"source": "toy", "cleaning": "raw", "token": "char"}, "metrics": {"ppl": 1.5}}


@pytest.fixture
def vocab():
    return Vocab.build(list("hello world"))


@pytest.fixture
def model(vocab):
    torch.manual_seed(0)
    return GRULM(GRUConfig(len(vocab), 8, num_layers=2, input_kind="embedding", init="torch"))


def _tensors_file(directory):
    return directory / json.loads((directory / METADATA_FILE).read_text())["tensors_file"]


def test_round_trip_restores_config_weights_vocab_and_meta(tmp_path, model, vocab):
    state = {"optimizer.step": torch.tensor(7)}
    save_checkpoint(tmp_path / "ck", model, vocab, META, state)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model.config == model.config
    assert loaded.vocab == vocab
    assert loaded.meta["data"] == META["data"] and loaded.meta["metrics"] == META["metrics"]
    assert loaded.meta["format_version"] == 1 and "grulm_version" in loaded.meta
    assert int(loaded.state_tensors["optimizer.step"]) == 7
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], p), name
    assert not loaded.model.training
    X = torch.randint(0, len(vocab), (2, 5))
    torch.testing.assert_close(loaded.model(X)[0], model.eval()(X)[0])


def test_no_pickle_only_json_and_safetensors(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([METADATA_FILE, _tensors_file(tmp_path).name])
    assert _tensors_file(tmp_path).suffix == ".safetensors"


def test_saving_again_replaces_and_leaves_no_stale_files(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_checkpoint(tmp_path, model, vocab, META)
    assert len(list(tmp_path.iterdir())) == 2
    assert torch.equal(load_checkpoint(tmp_path).model.head.bias, model.head.bias)


def test_a_failed_write_keeps_the_previous_checkpoint_loadable(tmp_path, model, vocab, monkeypatch):
    save_checkpoint(tmp_path, model, vocab, META)
    before = load_checkpoint(tmp_path).model.head.bias.clone()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("grulm.checkpoint.save_file", disk_full)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint"):
        save_checkpoint(tmp_path, model, vocab, META)
    assert torch.equal(load_checkpoint(tmp_path).model.head.bias, before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_corrupt_json(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    (tmp_path / METADATA_FILE).write_text("{ not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(tmp_path)


def test_future_format_version_is_refused(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["format_version"] = 99
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path)


def test_missing_weights(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    os.remove(_tensors_file(tmp_path))
    with pytest.raises(CheckpointError, match="weights file .* is missing"):
        load_checkpoint(tmp_path)


def test_corrupted_weights(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    path = _tensors_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_weights_not_matching_the_config(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["model_config"]["hidden_size"] = 16
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="do not match the model config.*shape"):
        load_checkpoint(tmp_path)


def test_vocab_not_matching_the_config(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["model_config"]["vocab_size"] += 1
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="vocabulary has"):
        load_checkpoint(tmp_path)


def test_invalid_config_field(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["model_config"]["variant"] = "lstm"
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="invalid config.*variant"):
        load_checkpoint(tmp_path)
