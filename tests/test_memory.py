"""Memory estimates against the bytes real models keep, and what the system says is free."""

import resource

import pytest
import torch

from grulm import memory
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig
from grulm.optim import OPTIMIZERS, make_optimizer

# ---------------------------------------------------------------------------------------------
# The estimates against reality.


def test_parameter_count_is_the_models():
    for config in (
        GRUConfig(28, 32),
        GRUConfig(28, 16, 3, variant="reset_after"),
        GRUConfig(50, 16, 2, input_kind="embedding", embedding_size=8),
        *(GRUConfig(28, 16, 2, cell=cell) for cell in ("rnn", "lstm", "mingru")),
        GRUConfig(28, 16, 2, gates="update", variant="reset_after"),
    ):
        model = GRULM(config)
        numbers = sum(t.numel() for t in [*model.parameters(), *model.buffers()])
        assert memory.parameter_count(config) == numbers


def test_every_optimizer_has_a_state_size():
    assert set(memory.OPTIMIZER_STATE) == set(OPTIMIZERS)


def kept_bytes(config, batch_size, num_steps, optimizer):
    """Bytes one training step keeps: parameters (and buffers), gradients, the optimiser's
    state, and every tensor autograd saved for backward that is not a parameter (each
    storage once)."""
    torch.manual_seed(0)
    model = GRULM(config)
    opt = make_optimizer(model, optimizer, lr=1e-3)
    inputs, targets = torch.randint(config.vocab_size, (2, batch_size, num_steps))
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = model.loss(inputs, targets)
    loss.backward()
    opt.step()
    own = [*model.parameters(), *model.buffers()]
    own_storages = {t.untyped_storage().data_ptr() for t in own}
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    grads = [p.grad for p in model.parameters()]
    return (
        sum(t.numel() * t.element_size() for t in [*own, *grads, *state])
        + sum(n for pointer, n in saved.items() if pointer not in own_storages)
    )


TRAINING_CASES = [
    (GRUConfig(28, 32, backend="reference"), 4, 5, "sgd"),
    (GRUConfig(28, 32, backend="cpu"), 4, 5, "sgd"),
    (GRUConfig(28, 32, 2, backend="reference"), 32, 35, "adam"),
    (GRUConfig(28, 32, 2, backend="cpu"), 32, 35, "adam"),
    (GRUConfig(28, 64, 2, variant="reset_after", backend="torch"), 32, 35, "sgd"),
    (GRUConfig(28, 64, 2, variant="reset_after", backend="cpu"), 32, 35, "sgd"),
    (GRUConfig(100, 16, 3, input_kind="embedding", embedding_size=8, backend="cpu"), 32, 35,
     "adamw"),
    (GRUConfig(100, 16, 3, input_kind="embedding", embedding_size=8, backend="reference"), 2, 3,
     "sgd"),
    *((GRUConfig(28, 32, 2, cell=cell, backend=backend), 32, 35, "adam")
      for cell in ("rnn", "lstm", "mingru") for backend in ("torch", "reference")),
    (GRUConfig(28, 32, 2, gates="update"), 32, 35, "sgd"),
    (GRUConfig(100, 16, 2, cell="lstm", input_kind="embedding", embedding_size=8), 32, 35,
     "sgd"),
]


@pytest.mark.parametrize(
    ("config", "batch_size", "num_steps", "optimizer"),
    TRAINING_CASES,
    ids=[f"{c.cell}-{c.gates}-{c.backend}-{c.num_layers}x{c.hidden_size}-{c.input_kind}-{b}x{t}-{o}"
         for c, b, t, o in TRAINING_CASES],
)
def test_training_estimate_covers_what_a_step_keeps(config, batch_size, num_steps, optimizer):
    kept = kept_bytes(config, batch_size, num_steps, optimizer)
    estimate = memory.training_bytes(config, batch_size, num_steps, optimizer)
    assert kept <= estimate <= 4 * kept, (kept, estimate)


def test_inference_estimate_is_below_training_and_grows_with_the_batch():
    config = GRUConfig(28, 256)
    small = memory.inference_bytes(config, 32, 35)
    assert small < memory.training_bytes(config, 32, 35, "sgd")
    assert memory.inference_bytes(config, 64, 35) > small
    assert memory.training_bytes(config, 32, 35, "adam") > memory.training_bytes(
        config, 32, 35, "sgd"
    )


def test_generation_estimate_counts_the_kept_text_unless_streamed():
    config = GRUConfig(28, 256)
    kept = memory.generation_bytes(config, 1000, 100_000)
    streamed = memory.generation_bytes(config, 1000, 100_000, keep_text=False)
    assert kept - streamed >= 1000 * 100_000 * 8  # at least the int64 ids
    assert streamed < 2 ** 30


@pytest.mark.parametrize(
    "call",
    [
        lambda c: memory.training_bytes(c, 32, 35, "rmsprop"),
        lambda c: memory.training_bytes(c, 0, 35, "sgd"),
        lambda c: memory.inference_bytes(c, -1, 35),
        lambda c: memory.inference_bytes(c, 32, 0),
        lambda c: memory.generation_bytes(c, 0, 10),
    ],
    ids=["optimizer", "train-batch", "eval-batch", "eval-steps", "generate-batch"],
)
def test_bad_arguments_are_config_errors(call):
    with pytest.raises(ConfigError):
        call(GRUConfig(28, 16))


# ---------------------------------------------------------------------------------------------
# What is available, and the refusal.


def test_the_environment_override_wins(monkeypatch):
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", "123456789")
    assert memory.available_bytes() == 123456789
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", "2G")
    assert memory.available_bytes() == 2 << 30
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="GRULM_MEMORY_LIMIT must be a number of bytes"):
        memory.available_bytes()


def _fake_system(tmp_path, monkeypatch, *, meminfo_kib, cgroup_lines, files):
    """A /proc and /sys/fs/cgroup of our own: ``files`` maps paths under the cgroup root to
    their contents."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       99999999 kB\nMemAvailable:   {meminfo_kib} kB\n"
    )
    (proc / "self" / "cgroup").write_text("".join(line + "\n" for line in cgroup_lines))
    (proc / "self" / "status").write_text("VmSize:\t  1024 kB\n")
    for name, text in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(text)
    cgroup.mkdir(exist_ok=True)
    monkeypatch.setattr(memory, "PROC", proc)
    monkeypatch.setattr(memory, "CGROUP", cgroup)
    monkeypatch.delenv("GRULM_MEMORY_LIMIT", raising=False)


def test_meminfo_alone(tmp_path, monkeypatch):
    _fake_system(tmp_path, monkeypatch, meminfo_kib=4096, cgroup_lines=["0::/"], files={})
    assert memory.available_bytes() == 4096 * 1024


def test_a_cgroup_v2_limit_lowers_it_with_inactive_file_cache_counted_free(tmp_path, monkeypatch):
    _fake_system(
        tmp_path, monkeypatch, meminfo_kib=1 << 30, cgroup_lines=["0::/job/step"],
        files={
            "cgroup.controllers": "memory\n",
            "job/memory.max": f"{10 << 30}\n",
            "job/memory.current": f"{3 << 30}\n",
            "job/step/memory.max": "max\n",
            "job/step/memory.current": f"{1 << 30}\n",
            "job/memory.stat": f"anon 1\ninactive_file {1 << 30}\n",
        },
    )
    assert memory.available_bytes() == (10 << 30) - (2 << 30)


def test_a_cgroup_v1_limit_lowers_it(tmp_path, monkeypatch):
    _fake_system(
        tmp_path, monkeypatch, meminfo_kib=1 << 30, cgroup_lines=["4:memory:/box", "0::/"],
        files={
            "memory/memory.limit_in_bytes": "9223372036854771712\n",  # no limit
            "memory/memory.usage_in_bytes": "5\n",
            "memory/box/memory.limit_in_bytes": f"{6 << 30}\n",
            "memory/box/memory.usage_in_bytes": f"{2 << 30}\n",
        },
    )
    assert memory.available_bytes() == 4 << 30


def test_an_address_space_limit_lowers_it(tmp_path, monkeypatch):
    _fake_system(tmp_path, monkeypatch, meminfo_kib=1 << 30, cgroup_lines=[], files={})
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1 << 30, resource.RLIM_INFINITY))
    assert memory.available_bytes() == (1 << 30) - 1024 * 1024


def test_without_proc_it_asks_sysconf(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "PROC", tmp_path / "nothing")
    monkeypatch.delenv("GRULM_MEMORY_LIMIT", raising=False)
    assert memory.available_bytes() > 0


def test_the_real_machine_reports_something_plausible():
    assert 0 < memory.available_bytes() < 1 << 50


def test_check_fits_refuses_with_the_estimate_and_the_hint(monkeypatch):
    monkeypatch.setenv("GRULM_MEMORY_LIMIT", str(21 << 30))
    memory.check_fits(16 << 30, "a small model", "never shown")
    config = GRUConfig(28, 100_000)
    needed = memory.training_bytes(config, 32, 35, "sgd")
    with pytest.raises(ConfigError) as error:
        memory.check_fits(needed, memory.describe(config, 32, 35), "use a smaller --hidden-size")
    message = str(error.value)
    assert message.startswith("a 1×100000 GRU with batch 32 × 35 needs about ")
    assert "GiB of memory but only 21.0 GiB are available" in message
    assert message.endswith("; use a smaller --hidden-size")
    assert "\n" not in message


def test_format_bytes():
    assert memory.format_bytes(int(121.3 * (1 << 30))) == "121.3 GiB"
    assert memory.format_bytes(512 << 20) == "512.0 MiB"
    assert memory.format_bytes(10) == "10 bytes"
