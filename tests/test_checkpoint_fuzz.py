"""Hypothesis mutations of a real checkpoint's ``checkpoint.json``: every one loads or raises a
``GrulmError``, and ``grulm info`` / ``grulm generate`` exit 0 or 2, quickly and without
allocating what an edited size asks for."""

import contextlib
import copy
import io
import json
import re
import resource
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grulm.checkpoint import METADATA_FILE, load_checkpoint, save_checkpoint
from grulm.cli import main
from grulm.data.vocab import Vocab
from grulm.errors import GrulmError
from grulm.model import GRULM, GRUConfig

SIZES = [0, -1, 1, 2, 3, 8, 9, 11, 10**5, 10**9, 2**31, 2**63, 10**30, -(10**9)]
PATHS = ["", ".", "..", "/", "/etc/passwd", "../victim.txt", "victim.txt", "/tmp", "~/x",
         "tensors-0.safetensors", "tensors-abc.safetensors", "tensors-ABC.safetensors",
         "./tensors-00.safetensors", "tensors-00.safetensors/..", "checkpoint.json",
         "tensors-00.safetensors\n", "tensors-\x00.safetensors", "a" * 300]

json_leaves = (st.none() | st.booleans() | st.integers() | st.sampled_from(SIZES)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
               | st.sampled_from(PATHS))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
nested_junk = st.integers(1, 40).map(lambda depth: _nest(depth))

# Where a mutation lands. READER_KEYS: the fields whose types grulm's readers rely on.
READER_KEYS = [
    ("format",), ("format_version",), ("grulm_version",), ("created",), ("tensors_file",),
    ("tensors_sha256",), ("model_config",), ("vocab",), ("data",), ("train",), ("run",),
    ("metrics",), ("training_state",), ("preset",),
    *[("data", k) for k in ("source", "token", "cleaning")],
    *[("training_state", k) for k in ("progress", "optimizer", "schedule")],
]
KEYS = [
    *READER_KEYS, ("extra",),
    *[("model_config", k) for k in ("vocab_size", "hidden_size", "num_layers", "variant",
                                    "input_kind", "embedding_size", "dropout", "init",
                                    "backend", "extra")],
    ("vocab", "format"), ("vocab", "tokens"), ("vocab", "tokens", 0), ("vocab", "tokens", 3),
    ("data", "extra"), ("metrics", "perplexity"), ("metrics", "history"),
]
# Fields any JSON value may take: a checkpoint mutated only there still loads, and is described.
FREE_KEYS = [("extra",), ("metrics", "perplexity"), ("metrics", "extra"), ("metrics", "history"),
             ("data", "extra"), ("train", "lr"), ("train", "extra"), ("run", "extra"),
             ("training_state", "extra"), ("vocab", "extra")]
SIZE_KEYS = [("model_config", k) for k in ("vocab_size", "hidden_size", "num_layers",
                                           "embedding_size")]
wrong_type = st.tuples(st.sampled_from(READER_KEYS), st.just("set"),
                       json_leaves | st.lists(json_leaves, max_size=3))
mutations = st.one_of(
    wrong_type, wrong_type, wrong_type,
    st.tuples(st.sampled_from(KEYS), st.just("set"), json_values),
    st.tuples(st.sampled_from(SIZE_KEYS), st.just("set"), st.sampled_from(SIZES)),
    st.tuples(st.just(("tensors_file",)), st.just("set"), st.sampled_from(PATHS)),
    st.tuples(st.sampled_from(KEYS), st.just("set"), nested_junk),
    st.tuples(st.sampled_from(KEYS), st.just("delete"), st.none()),
)


def _nest(depth):
    value = []
    for _ in range(depth):
        value = {"a": [value]}
    return value


def _apply(metadata, mutation):
    path, op, value = mutation
    parent = metadata
    for key in path[:-1]:
        if isinstance(parent, dict) and key in parent:
            parent = parent[key]
        elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
            parent = parent[key]
        else:
            return
    key = path[-1]
    if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(key, int)
                                    and key < len(parent)):
        if op == "delete":
            if isinstance(parent, dict):
                parent.pop(key, None)
            else:
                del parent[key]
        else:
            parent[key] = value


@pytest.fixture(scope="module")
def checkpoint_dir():
    """A real small run-like checkpoint (with training state), and a victim file beside it."""
    root = Path(tempfile.mkdtemp(prefix="grulm-fuzz-"))
    vocab = Vocab.build(list("the time traveller"))
    torch.manual_seed(0)
    model = GRULM(GRUConfig(len(vocab), 8, num_layers=2, input_kind="embedding"))
    meta = {
        "data": {"source": "toy", "cleaning": "raw", "token": "char"},
        "train": {"lr": 1.0, "batch_size": 2},
        "run": {"checkpoint_every_epochs": 1},
        "metrics": {"perplexity": 9.5, "history": [1.0, 2.0]},
        "training_state": {"progress": {"epoch": 1, "step": 3}, "optimizer": {},
                           "schedule": {}},
        "preset": "d2l",
    }
    save_checkpoint(root / "ck", model, vocab, meta, {"torch_rng": torch.get_rng_state()})
    (root / "victim.txt").write_text("precious")
    yield root / "ck"
    shutil.rmtree(root)


def _run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([*map(str, argv)])
    assert status in (0, 2), err.getvalue()
    if status == 2:
        message = err.getvalue().strip()
        assert message.count("\n") == 0 and message.startswith("grulm "), message
    return status


@settings(max_examples=100, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(mutations, min_size=1, max_size=2),
       st.lists(st.tuples(st.sampled_from(FREE_KEYS), st.just("set"), json_values | nested_junk),
                max_size=3))
def test_mutated_metadata_loads_or_raises_a_grulm_error(checkpoint_dir, original_metadata,
                                                        peak_memory, breaking, free):
    metadata = copy.deepcopy(original_metadata)
    for mutation in [*free, *breaking]:
        _apply(metadata, mutation)
    (checkpoint_dir / METADATA_FILE).write_text(json.dumps(metadata))
    try:
        load_checkpoint(checkpoint_dir)
        loaded = True
    except GrulmError as error:
        loaded = False
        event(re.sub(r"^\S*/\S*:? ", "", str(error))[:40])
    info = {_run_cli("info", checkpoint_dir), _run_cli("info", "--json", checkpoint_dir)}
    generate = _run_cli("generate", checkpoint_dir, "--num-preds", "5")
    event(f"loaded, generate exit {generate}" if loaded else "refused")
    if loaded:
        assert info == {0}  # any loadable checkpoint is described
    else:
        assert info == {2} and generate == 2
    assert (checkpoint_dir.parent / "victim.txt").read_text() == "precious"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_memory  # KiB on Linux
    assert grown < 1 << 20, f"peak memory grew by {grown / 2**20:.1f} GiB"


@pytest.fixture(scope="module")
def original_metadata(checkpoint_dir):
    return json.loads((checkpoint_dir / METADATA_FILE).read_text())


@pytest.fixture(scope="module")
def peak_memory():
    """The peak resident memory (KiB) before the mutations: an edited size taken at its word
    would raise it by gigabytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


WRONG_VALUES = [None, True, 0, -1, 1.5, "x", "../victim.txt", [], [1, 2], {}, {"a": {}},
                _nest(300)]


@pytest.mark.parametrize("key", READER_KEYS + SIZE_KEYS, ids=".".join)
def test_every_reader_field_with_every_json_type(checkpoint_dir, original_metadata, key):
    """The cases the fuzz draws most rarely, all of them: each field readers use, set to a value
    of each JSON type, and deleted."""
    for op, value in [("delete", None), *(("set", v) for v in WRONG_VALUES)]:
        metadata = copy.deepcopy(original_metadata)
        _apply(metadata, (key, op, value))
        (checkpoint_dir / METADATA_FILE).write_text(json.dumps(metadata))
        try:
            load_checkpoint(checkpoint_dir)
            loaded = True
        except GrulmError:
            loaded = False
        assert _run_cli("info", checkpoint_dir) == (0 if loaded else 2), (op, value)
        assert _run_cli("info", "--json", checkpoint_dir) == (0 if loaded else 2), (op, value)
        assert _run_cli("generate", checkpoint_dir, "--num-preds", "3") in (0, 2), (op, value)


def test_the_unmutated_checkpoint_passes_every_command(checkpoint_dir, original_metadata):
    (checkpoint_dir / METADATA_FILE).write_text(json.dumps(original_metadata))
    assert load_checkpoint(checkpoint_dir).meta.preset == "d2l"
    assert _run_cli("info", checkpoint_dir) == 0
    assert _run_cli("generate", checkpoint_dir, "--num-preds", "5") == 0
