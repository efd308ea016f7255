"""Which device a command runs on: one check for every subcommand's ``--device``.

grulm's backends run on the CPU and on CUDA GPUs (and, where PyTorch has it, Apple's MPS).
``torch.device`` accepts many more names (``xla``, ``vulkan``, ``meta``, ``cuda:7`` on a
machine with one GPU …) that would only fail later, deep inside PyTorch, with a traceback;
:func:`resolve_device` refuses them at once with one line that says what to use instead.
"""

from __future__ import annotations

import torch

from grulm.errors import ConfigError


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The device ``name`` means on this machine.

    Args:
        name: ``auto`` (the first CUDA GPU if PyTorch sees one, else the CPU), ``cpu``,
            ``cuda``, ``cuda:N``, or ``mps`` where PyTorch can use it.
        flag: how the user gave the name, for the message (``--device``, ``device=``).

    Raises:
        ConfigError: a name that is not a device, a device type grulm cannot run on, or a
            device this machine does not have; the message says what to use instead.
    """
    cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "cpu")
    fallback = f"use {flag} cpu" + (f" or {flag} cuda" if cuda else "")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"{flag} {name!r} is not a device; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")  # one CPU device: an index would only show up in messages
    if device.type == "cuda":
        if not cuda:
            raise ConfigError(f"{flag} {name}: PyTorch sees no CUDA GPU on this machine; "
                              f"use {flag} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            gpus = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ConfigError(f"{flag} {name}: this machine has {count} CUDA "
                              f"GPU{'s' if count > 1 else ''} ({gpus}); use one of those")
        return device
    if device.type == "mps":
        if _mps_available():
            return device
        raise ConfigError(f"{flag} {name}: PyTorch sees no Apple GPU (MPS) on this machine; "
                          f"{fallback}")
    raise ConfigError(f"{flag} {name}: grulm runs on cpu or cuda, not on {device.type} "
                      f"devices; {fallback}")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
