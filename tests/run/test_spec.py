"""RunSpec: presets with overrides, one clear error for a bad one, the JSON round trip, and
`grulm train --help` showing what a flag-less run really uses."""

import re

import pytest

import grulm.cli.train as train_cli
from grulm.cli import build_parser, main
from grulm.errors import ConfigError, GrulmError
from grulm.presets import PRESETS
from grulm.run import RunSpec
from grulm.run.spec import RENAMED, override_names
from grulm.train import TrainConfig


def test_the_d2l_preset_is_the_seed_experiment():
    spec = RunSpec.from_preset("d2l")
    assert (spec.data.data, spec.data.cleaning, spec.data.max_tokens) == ("timemachine", "d2l",
                                                                         10_000)
    assert (spec.model.hidden_size, spec.model.variant, spec.model.input_kind) == (
        256, "reset_before", "onehot")
    assert (spec.train.epochs, spec.train.lr, spec.train.clip, spec.train.batch_size,
            spec.train.num_steps) == (500, 1.0, 1.0, 32, 35)


def test_overrides_use_the_flag_names_and_another_corpus_takes_its_own_defaults():
    spec = RunSpec.from_preset("d2l", epochs=4, seed=3, hidden_size=64, input="embedding",
                               embedding_size=8, split_fractions=[0.8, 0.1, 0.1])
    assert (spec.train.epochs, spec.train.seed, spec.model.hidden_size) == (4, 3, 64)
    assert (spec.model.input_kind, spec.model.embedding_size) == ("embedding", 8)
    assert spec.data.split_fractions == (0.8, 0.1, 0.1)
    other = RunSpec.from_preset("d2l", data="my.txt")
    assert (other.data.cleaning, other.data.max_tokens, other.output.sample_prefixes) == (
        "raw", 0, None)
    assert RunSpec.from_preset("d2l", data="timemachine") == RunSpec.from_preset("d2l")


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(name):
    spec = RunSpec.from_preset(name, max_time=60.0, sample_prefixes=["a", "b"])
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.replace(epochs=7).train.epochs == 7


@pytest.mark.parametrize("call, message", [
    (lambda: RunSpec.from_preset("d2l", epoch=4), "unknown setting.* epoch; valid names: .*"
                                                  "epochs"),
    (lambda: RunSpec.from_preset("gpt"), "there is no preset 'gpt'; presets: d2l, shakespeare"),
    (lambda: RunSpec.from_preset("d2l", epochs=-1), "epochs must be an integer ≥ 1"),
    (lambda: RunSpec.from_preset("d2l", max_time=-5), "max_time must be a positive number"),
    (lambda: RunSpec.from_preset("d2l", max_tokens=-1), "max_tokens must be ≥ 0"),
    (lambda: RunSpec.from_preset("d2l", checkpoint_every_steps=-1),
     "checkpoint_every_steps must be an integer ≥ 0"),
    (lambda: RunSpec.from_preset("d2l", embedding_size=64), "one-hot input"),
    (lambda: RunSpec.from_preset("d2l", hidden_size="big"), "hidden_size must be a positive"),
    (lambda: RunSpec.from_dict({"train": {"epoch": 3}}), "section 'train' must be an object"),
])
def test_a_bad_spec_is_one_clear_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def _train_help() -> dict[str, str]:
    """Each `grulm train` option's help text, by flag, as --help prints it."""
    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    return {flag: action.help or "" for action in train._actions
            for flag in action.option_strings}


def test_every_override_name_is_a_flag_of_grulm_train():
    helps = _train_help()
    for name in override_names():
        flag = "--no-tensorboard" if name == "tensorboard" else f"--{name.replace('_', '-')}"
        assert flag in helps, flag


def test_help_shows_the_settings_a_flag_less_run_uses(monkeypatch):
    used = {}

    def capture(spec, out, **kwargs):
        used.update(spec=spec, out=out)
        raise KeyboardInterrupt  # stop before anything is trained

    monkeypatch.setattr(train_cli, "start", capture)
    assert main(["train"]) == 130
    flat, helps = used["spec"].flat(), _train_help()
    assert str(used["out"]) == "runs/seed"
    names = [n for n in override_names() if n != "tensorboard"]
    for name in names:
        value = flat[RENAMED.get(name, name)]
        expected = ("none" if value is None else ",".join(map(str, value))
                    if isinstance(value, tuple) else str(value))
        shown = re.search(r"\[([^\]]*)\]$", helps[f"--{name.replace('_', '-')}"])
        assert shown is not None and shown.group(1) == expected, (name, shown, expected)
    assert len(names) == 45
    assert TrainConfig().eval_every != flat["eval_every"] == 10  # the preset's, not the class's


def test_resume_of_a_directory_that_is_not_a_run_writes_nothing(tmp_path):
    from grulm.run import resume

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GrulmError, match="holds no checkpoint"):
        resume(tmp_path, epochs=4)
    with pytest.raises(GrulmError, match="does not exist"):
        resume(tmp_path / "missing")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
