"""Checkpoints: round trip, atomic replacement, and every way a checkpoint can be broken."""

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import grulm.checkpoint.files as checkpoint_files
import grulm.checkpoint.load as checkpoint_load
from grulm.checkpoint import (
    METADATA_FILE,
    DataInfo,
    load_checkpoint,
    save_checkpoint,
    sweep_checkpoint_dir,
)
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


def _metadata(directory):
    return json.loads((directory / METADATA_FILE).read_text())


def _edit(directory, edit):
    metadata = _metadata(directory)
    edit(metadata)
    (directory / METADATA_FILE).write_text(json.dumps(metadata))


def _tensors_file(directory):
    return directory / _metadata(directory)["tensors_file"]


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def _bump(model):
    with torch.no_grad():
        model.head.bias.add_(1.0)


def test_round_trip_restores_config_weights_vocab_and_meta(tmp_path, model, vocab):
    state = {"optimizer.step": torch.tensor(7)}
    save_checkpoint(tmp_path / "ck", model, vocab, META, state)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model.config == model.config
    assert loaded.vocab == vocab
    assert loaded.meta.data == DataInfo(source="toy", cleaning="raw", token="char")
    assert loaded.meta.data.to_json() == META["data"] and loaded.meta.metrics == META["metrics"]
    assert loaded.meta.format_version == 1 and loaded.meta.grulm_version is not None
    assert int(loaded.state_tensors["optimizer.step"]) == 7
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], p), name
    assert not loaded.model.training
    X = torch.randint(0, len(vocab), (2, 5))
    torch.testing.assert_close(loaded.model(X)[0], model.eval()(X)[0])


def test_a_loaded_checkpoint_does_not_map_its_weights_file(tmp_path, model, vocab):
    """A resumed run's next save deletes the file it was loaded from; a mapping would keep that
    file's disk space for as long as the run."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps here")
    save_checkpoint(tmp_path, model, vocab, META, {"hidden": torch.ones(2, 3)})
    loaded = load_checkpoint(tmp_path)
    assert str(_tensors_file(tmp_path)) not in maps.read_text()
    assert torch.equal(loaded.state_tensors["hidden"], torch.ones(2, 3))


def test_float64_weights_round_trip(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model.double(), vocab, META)
    assert load_checkpoint(tmp_path).model.head.weight.dtype == torch.float64


def test_no_pickle_only_json_and_safetensors(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    assert _names(tmp_path) == sorted([METADATA_FILE, _tensors_file(tmp_path).name])
    assert _tensors_file(tmp_path).suffix == ".safetensors"


def test_saving_again_replaces_and_leaves_no_stale_files(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    _bump(model)
    save_checkpoint(tmp_path, model, vocab, META)
    assert len(list(tmp_path.iterdir())) == 2
    assert torch.equal(load_checkpoint(tmp_path).model.head.bias, model.head.bias)


def test_meta_cannot_override_the_fields_the_checkpoint_writes(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab,
                    {**META, "tensors_file": "../x", "format_version": 7, "vocab": {}})
    loaded = load_checkpoint(tmp_path)
    assert loaded.meta.format_version == 1 and loaded.vocab == vocab


def test_meta_of_the_wrong_type_is_refused_before_writing(tmp_path, model, vocab):
    with pytest.raises(CheckpointError, match="'metrics' must be an object, not a list.*would "
                       "refuse"):
        save_checkpoint(tmp_path / "ck", model, vocab, {"metrics": [1, 2]})
    assert not (tmp_path / "ck").exists()


# ------------------------------------------------------------------------ umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, model, vocab, umask, mode):
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path, model, vocab, META)
    finally:
        os.umask(previous)
    for name in _names(tmp_path):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------------------ failed writes
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_previous_checkpoint_intact(directory, names, bias):
    assert _names(directory) == names  # no temporary file, no orphaned weights
    assert torch.equal(load_checkpoint(directory).model.head.bias, bias)


def test_disk_full_while_writing_the_weights(tmp_path, model, vocab, monkeypatch):
    save_checkpoint(tmp_path, model, vocab, META)
    names, before = _names(tmp_path), model.head.bias.clone()
    monkeypatch.setattr(checkpoint_files, "save_file", _disk_full)
    _bump(model)
    with pytest.raises(CheckpointError, match=r"^could not save the checkpoint in .*: writing the "
                       r"weights failed \(\[Errno 28\] No space left on device\); the previous "
                       r"checkpoint there, if any, is unchanged — free some space"):
        save_checkpoint(tmp_path, model, vocab, META)
    _assert_previous_checkpoint_intact(tmp_path, names, before)


def test_safetensors_error_after_a_partial_write(tmp_path, model, vocab, monkeypatch):
    save_checkpoint(tmp_path, model, vocab, META)
    names, before = _names(tmp_path), model.head.bias.clone()

    def partial_then_error(tensors, path):
        Path(path).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: IoError(StorageFull)")

    monkeypatch.setattr(checkpoint_files, "save_file", partial_then_error)
    _bump(model)
    with pytest.raises(CheckpointError, match="writing the weights failed.*StorageFull.*unchanged"):
        save_checkpoint(tmp_path, model, vocab, META)
    _assert_previous_checkpoint_intact(tmp_path, names, before)


def test_a_failed_json_write_removes_the_new_weights(tmp_path, model, vocab, monkeypatch):
    save_checkpoint(tmp_path, model, vocab, META)
    names, before = _names(tmp_path), model.head.bias.clone()
    monkeypatch.setattr(Path, "write_text", _disk_full)
    _bump(model)
    with pytest.raises(CheckpointError, match="writing checkpoint.json failed.*No space left"):
        save_checkpoint(tmp_path, model, vocab, META)
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(tmp_path, names, before)


def test_a_failed_json_write_keeps_identical_weights_the_old_json_names(tmp_path, model, vocab,
                                                                      monkeypatch):
    save_checkpoint(tmp_path, model, vocab, META)
    names, before = _names(tmp_path), model.head.bias.clone()
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path, model, vocab, META)  # the same weights: the same file name
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(tmp_path, names, before)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_other_exceptions_midway_clean_up_and_propagate(tmp_path, model, vocab, monkeypatch,
                                                        error):
    save_checkpoint(tmp_path, model, vocab, META)
    names, before = _names(tmp_path), model.head.bias.clone()

    def interrupted(*args, **kwargs):
        raise error

    monkeypatch.setattr(Path, "write_text", interrupted)
    _bump(model)
    with pytest.raises(type(error)):
        save_checkpoint(tmp_path, model, vocab, META)
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(tmp_path, names, before)


def test_a_directory_that_cannot_be_created(tmp_path, model, vocab):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the checkpoint directory"):
        save_checkpoint(tmp_path / "file" / "ck", model, vocab, META)


def _mount_tmpfs(path, size):
    path.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        result = None
    if result is None or result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")


def test_a_full_tmpfs_at_every_fill_level(tmp_path, vocab):
    """A real 200 kB filesystem, filled to leave 0–88 kB: every save either succeeds or raises
    CheckpointError (the weights or checkpoint.json not fitting), the last checkpoint always
    loads, and nothing is left behind."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "200k")
    try:
        out = disk / "run"
        torch.manual_seed(0)
        model = GRULM(GRUConfig(len(vocab), 40))  # ~32 kB of weights
        save_checkpoint(out, model, vocab, META)
        outcomes = []
        for free_kb in range(0, 90, 2):
            filler = disk / "filler"
            stats = os.statvfs(disk)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free_kb * 1024))
            _bump(model)
            try:
                save_checkpoint(out, model, vocab, META)
                outcomes.append("saved")
            except CheckpointError as error:
                assert "unchanged" in str(error)
                outcomes.append(str(error).split(": writing ")[1].split(" failed")[0])
            filler.unlink()
            assert len(_names(out)) == 2, _names(out)  # checkpoint.json and its weights only
            loaded = load_checkpoint(out).model.head.bias
            if outcomes[-1] == "saved":
                assert torch.equal(loaded, model.head.bias)
        assert {"the weights", "checkpoint.json", "saved"} == set(outcomes)
        save_checkpoint(out, model, vocab, META)  # space freed: saving works again
        assert torch.equal(load_checkpoint(out).model.head.bias, model.head.bias)
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------------ names outside
@pytest.mark.parametrize("name", ["victim.txt", "../victim.txt", "ABSOLUTE"])
def test_a_tensors_file_outside_the_directory_is_never_deleted_or_loaded(tmp_path, model, vocab,
                                                                        name):
    ck, victim = tmp_path / "ck", tmp_path / "x" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    (tmp_path / "victim.txt").write_text("precious")
    save_checkpoint(ck, model, vocab, META)
    (ck / "victim.txt").write_text("precious")
    named = str(victim) if name == "ABSOLUTE" else name
    _edit(ck, lambda m: m.update(tensors_file=named))
    with pytest.raises(CheckpointError, match="'tensors_file' must name a "
                       r"tensors-<hex>\.safetensors file in the checkpoint directory, not"):
        load_checkpoint(ck)
    _bump(model)
    save_checkpoint(ck, model, vocab, META)
    for survivor in (victim, tmp_path / "victim.txt", ck / "victim.txt"):
        assert survivor.read_text() == "precious"
    assert torch.equal(load_checkpoint(ck).model.head.bias, model.head.bias)


@pytest.mark.parametrize("name", ["", ".", "..", "/", "tensors-../x.safetensors",
                                  "tensors-ABC.safetensors", "tensors-00.safetensors\n",
                                  "sub/tensors-00.safetensors", "checkpoint.json"])
def test_odd_tensors_file_names_are_refused(tmp_path, model, vocab, name):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m.update(tensors_file=name))
    with pytest.raises(CheckpointError, match="'tensors_file' must name"):
        load_checkpoint(tmp_path)


def test_a_tensors_file_linking_out_of_the_directory_is_refused(tmp_path, model, vocab):
    ck = tmp_path / "ck"
    save_checkpoint(ck, model, vocab, META)
    weights = _tensors_file(ck)
    shutil.move(weights, tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="symbolic link that leads out of the checkpoint"):
        load_checkpoint(ck)


def test_a_tensors_file_linking_inside_the_directory_loads(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    weights = _tensors_file(tmp_path)
    weights.rename(tmp_path / "weights.bin")
    weights.symlink_to("weights.bin")
    assert load_checkpoint(tmp_path).model.config == model.config


# ------------------------------------------------------------------------ sweeping
def test_sweep_removes_leftovers_and_nothing_else(tmp_path, model, vocab):
    ck, outside = tmp_path / "ck", tmp_path / "outside"
    outside.write_text("precious")
    save_checkpoint(ck, model, vocab, META)
    current = _tensors_file(ck).name
    leftovers = [".tmp-0123456789abcdef.part", ".tmp-k2_x9abc.part", ".tmpAb3dE9",
                 "tensors-0123456789abcdef.safetensors"]
    keep = ["notes.txt", "tensors-backup.safetensors", ".metrics.jsonl.part",
            ".perplexity.png.part", ".tmp-.part", ".tmpAb3dE9x", "tensors-0a.safetensors.bak"]
    for name in leftovers + keep:
        (ck / name).write_text("x")
    (ck / ".tmp-dir.part").mkdir()
    (ck / ".tmp-link.part").symlink_to(outside)
    (ck / "tensors-00aa.safetensors").symlink_to(outside)
    (ck / "best").mkdir()
    (ck / "best" / ".tmp-inner.part").write_text("x")
    removed = sweep_checkpoint_dir(ck)
    assert removed == sorted(ck / name for name in leftovers)
    assert _names(ck) == sorted([METADATA_FILE, current, *keep, ".tmp-dir.part",
                                 ".tmp-link.part", "tensors-00aa.safetensors", "best"])
    assert outside.read_text() == "precious" and (ck / "best" / ".tmp-inner.part").exists()
    assert load_checkpoint(ck).model.config == model.config
    assert sweep_checkpoint_dir(ck) == []


@pytest.mark.parametrize("damage", ["missing", "corrupt", "names a missing file", "bad name"])
def test_sweep_keeps_weights_unless_checkpoint_json_names_existing_ones(tmp_path, model, vocab,
                                                                       damage):
    save_checkpoint(tmp_path, model, vocab, META)
    weights = _tensors_file(tmp_path).name
    if damage == "missing":
        (tmp_path / METADATA_FILE).unlink()
    elif damage == "corrupt":
        (tmp_path / METADATA_FILE).write_text("{ not json")
    else:
        named = "tensors-ffff.safetensors" if damage == "names a missing file" else "../x"
        _edit(tmp_path, lambda m: m.update(tensors_file=named))
    (tmp_path / ".tmp-abc.part").write_text("x")
    assert sweep_checkpoint_dir(tmp_path) == [tmp_path / ".tmp-abc.part"]
    assert (tmp_path / weights).exists()


def test_sweep_of_a_missing_directory(tmp_path):
    assert sweep_checkpoint_dir(tmp_path / "nope") == []


def test_sweep_of_an_unlistable_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot list the checkpoint directory"):
        sweep_checkpoint_dir(tmp_path / "file")


def test_a_save_sweeps_what_a_killed_save_left(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    for name in (".tmp-deadbeef.part", ".tmpXy12Z9", "tensors-badc0ffee0000000.safetensors"):
        (tmp_path / name).write_bytes(b"\0" * 10)
    _bump(model)
    save_checkpoint(tmp_path, model, vocab, META)
    assert _names(tmp_path) == sorted([METADATA_FILE, _tensors_file(tmp_path).name])


# ------------------------------------------------------------------------ loading refusals
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


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"n": 1' + "0" * 5000 + "}"])
def test_json_too_deep_or_too_long_for_python(tmp_path, model, vocab, text):
    save_checkpoint(tmp_path, model, vocab, META)
    (tmp_path / METADATA_FILE).write_text(text)
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(tmp_path)


def test_deeply_nested_metadata_is_refused(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    deep = []
    for _ in range(200):
        deep = [deep]
    _edit(tmp_path, lambda m: m["metrics"].update(deep=deep))
    with pytest.raises(CheckpointError, match="nests values more than 64 levels deep"):
        load_checkpoint(tmp_path)


def test_future_format_version_is_refused(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m.update(format_version=99))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("field, value, expected", [
    ("format_version", True, "'format_version' must be an integer, not a boolean True"),
    ("format_version", "1", "'format_version' must be an integer, not a string '1'"),
    ("metrics", [1, 2], "'metrics' must be an object, not a list"),
    ("data", "toy", "'data' must be an object, not a string 'toy'"),
    ("train", None, "'train' must be an object, not null"),
    ("run", 3, "'run' must be an object, not a number 3"),
    ("training_state", [], "'training_state' must be an object"),
    ("grulm_version", 1.5, "'grulm_version' must be a string"),
    ("preset", {}, "'preset' must be a string or null"),
    ("tensors_sha256", None, "'tensors_sha256' must be a string"),
    ("model_config", [], "'model_config' must be an object"),
    ("vocab", "abc", "'vocab' must be an object"),
    ("data", {"token": 5}, "'data.token' must be a string, not a number 5"),
    ("training_state", {"progress": [1]}, "'training_state.progress' must be an object"),
    ("tensors_file", "x" * 1000, "not 'xxxxx.*…; undo the edit"),
])
def test_fields_of_the_wrong_type_are_named(tmp_path, model, vocab, field, value, expected):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m.update({field: value}))
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize("field", ["tensors_file", "tensors_sha256", "model_config", "vocab",
                                   "format_version"])
def test_missing_fields_are_named(tmp_path, model, vocab, field):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m.pop(field))
    with pytest.raises(CheckpointError, match=f"lacks the field '{field}'"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("key, value, expected", [
    ("hidden_size", True, "'model_config.hidden_size' must be an integer, not a boolean"),
    ("num_layers", 2.0, "'model_config.num_layers' must be an integer, not a number 2.0"),
    ("dropout", "0", "'model_config.dropout' must be a number"),
    ("hidden_size", -1, "invalid model_config: hidden_size must be a positive integer"),
    ("variant", "lstm", "invalid model_config: variant must be one of"),
    ("colour", "red", "invalid model_config: unknown model config fields: colour"),
])
def test_invalid_config_fields(tmp_path, model, vocab, key, value, expected):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m["model_config"].update({key: value}))
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path)


def test_invalid_vocab(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m["vocab"].update(tokens=["a", "b"]))
    with pytest.raises(CheckpointError, match="invalid vocab: a vocabulary must start with"):
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
    _edit(tmp_path, lambda m: m["model_config"].update(hidden_size=16))
    with pytest.raises(CheckpointError, match="do not match the model config.*shape"):
        load_checkpoint(tmp_path)


def test_vocab_not_matching_the_config(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m["model_config"].update(vocab_size=m["model_config"]
                                                       ["vocab_size"] + 1))
    with pytest.raises(CheckpointError, match="vocabulary has"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("key, value, expected", [
    ("hidden_size", 100_000, r"gru.weight_hh_l0 has shape \(24, 8\), the config needs "
                             r"\(300000, 100000\).*\(6 more\)"),
    ("num_layers", 100_000, "the model config has 100000 layers but the file holds only 11 "
                            "weight tensors"),
    ("num_layers", 3, "missing gru.weight_ih_l2"),
    ("embedding_size", 10**30, "embedding.weight has shape"),
])
def test_huge_configs_fail_on_the_header_before_a_model_is_built(tmp_path, model, vocab,
                                                                monkeypatch, key, value,
                                                                expected):
    save_checkpoint(tmp_path, model, vocab, META)
    _edit(tmp_path, lambda m: m["model_config"].update({key: value}))

    def never(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(checkpoint_load, "GRULM", never)
    monkeypatch.setattr(checkpoint_load, "load_file", never)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path)
    assert time.perf_counter() - started < 2


def test_weights_of_mixed_dtypes_are_refused(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["model.head.bias"] = tensors["model.head.bias"].double()
    name = "tensors-00000000000000aa.safetensors"
    save_file(tensors, str(tmp_path / name))
    digest = checkpoint_files.file_sha256(tmp_path / name)
    _edit(tmp_path, lambda m: m.update(tensors_file=name, tensors_sha256=digest))
    with pytest.raises(CheckpointError, match="share one floating-point dtype, found F32, F64"):
        load_checkpoint(tmp_path)


def test_a_dangling_tensors_link_is_reported_missing(tmp_path, model, vocab):
    save_checkpoint(tmp_path, model, vocab, META)
    weights = _tensors_file(tmp_path)
    weights.unlink()
    weights.symlink_to("gone.bin")
    with pytest.raises(CheckpointError, match="weights file .* is missing"):
        load_checkpoint(tmp_path)
