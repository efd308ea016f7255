"""``--device``: every name is checked once, with one line that says what to use instead."""

import pytest
import torch

from grulm.devices import resolve_device
from grulm.errors import ConfigError


def test_auto_is_the_gpu_if_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["cpu", "cpu:0", "cpu:1"])
def test_cpu(name):
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", r"^--device 'gpu' is not a device; use cpu, cuda, cuda:N or auto$"),
        ("", r"^--device '' is not a device"),
        ("cuda:-1", r"is not a device"),
        ("CUDA", r"is not a device"),
        ("xla", r"^--device xla: grulm runs on cpu or cuda, not on xla devices; use --device cpu"),
        ("vulkan", r"not on vulkan devices; use --device cpu"),
        ("meta", r"not on meta devices"),
        ("hip", r"not on hip devices"),
    ],
)
def test_unusable_names_are_one_clear_error(name, message):
    with pytest.raises(ConfigError, match=message) as error:
        resolve_device(name)
    assert "\n" not in str(error.value)


def test_mps_without_an_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^--device mps: PyTorch sees no Apple GPU \(MPS\) "
                       r"on this machine; use --device cpu"):
        resolve_device("mps")


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "cuda:7"):
        with pytest.raises(ConfigError, match=r"PyTorch sees no CUDA GPU on this machine; "
                           r"use --device cpu$"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_beyond_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"^--device cuda:7: this machine has 1 CUDA GPU "
                       r"\(cuda:0\); use one of those$"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r"use --device cpu or --device cuda$"):
        resolve_device("xla")


def test_the_flag_name_is_the_callers():
    with pytest.raises(ConfigError, match=r"^device= 'gpu' is not a device"):
        resolve_device("gpu", flag="device=")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_real_gpu_resolves():
    for index in range(torch.cuda.device_count()):
        assert resolve_device(f"cuda:{index}").index == index
