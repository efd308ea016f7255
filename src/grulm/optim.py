"""Optimisers and learning-rate schedules, with state that round-trips through a checkpoint.

- :func:`make_optimizer`: ``sgd`` (the seed), ``adam`` or ``adamw``, with PyTorch's
  multi-tensor (``foreach``) or single-kernel (``fused``) implementations. Weight decay, when
  asked for, applies to matrices only (weights and embeddings), never to biases.
- :class:`Schedule`: the learning rate as a pure function of the step and of the run's
  progress (0 → 1), times a factor that reduce-on-plateau lowers. Every kind starts with an
  optional linear warm-up over ``warmup_steps``:

  ========  ===================================================================
  constant  ``lr``
  cosine    ``min_lr + (lr − min_lr) · (1 + cos(π · progress)) / 2``
  step      ``lr · gamma ** (step // step_size)``
  plateau   ``lr · factor ** k`` after the k-th validation without improvement
            for ``patience`` evaluations in a row
  ========  ===================================================================

  ``progress`` is the furthest of step / max_steps, epoch / epochs and elapsed / max_time,
  so a cosine schedule ends at ``min_lr`` exactly when the first budget runs out.
- :func:`clip_gradients` and :class:`ClippedStep`: the seed's clipping by the global norm,
  and clipping followed by one optimiser step; for plain SGD, a backend's fused kernel does
  both at once where it has one (the ``cpu`` backend: :func:`grulm.backends.cpu.clip_sgd_`),
  chosen once when the step is built, not at every step. :func:`clip_and_step` is the same
  for a single call.
- :func:`optimizer_state` / :func:`load_optimizer_state`: an optimiser's state as safetensors
  tensors plus JSON (no pickle), and back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grulm.errors import CheckpointError, ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
IMPLEMENTATIONS = ("foreach", "fused")
SCHEDULES = ("constant", "cosine", "step", "plateau")


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    implementation: str = "foreach",
) -> torch.optim.Optimizer:
    """The named optimiser over ``model``'s trainable parameters.

    With ``weight_decay > 0`` there are two parameter groups: matrices (decayed) and vectors
    (biases, not decayed); otherwise one group in the model's parameter order, as the seed.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(
            f"optimizer implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
            f"got {implementation!r}"
        )
    parameters = [p for p in model.parameters() if p.requires_grad]
    if weight_decay > 0:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": parameters, "weight_decay": 0.0}]
    kernel = {"fused": True} if implementation == "fused" else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, **kernel)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=betas, **kernel)


def clip_gradients(parameters: list[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients by ``min(1, max_norm / norm)``, norm being their global L2 norm.

    The seed's ``grad_clipping`` without its host sync: the comparison happens on the device
    and the scale is applied with one multi-tensor kernel.

    Returns:
        The norm before clipping, a 0-dim tensor on the device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / norm, max=1.0))
    return norm


FusedClipSGD = Callable[[list[Tensor], list[Tensor], list[float], float], Tensor]


class ClippedStep:
    """One update: clip the gradients' global norm to ``max_norm``, then step the optimiser.

    Which implementation runs is decided here, once, so a training loop pays for the choice
    when it starts rather than at every step: ``fused`` (a backend's clipping + plain SGD
    kernel, ``Backend.clip_sgd``) when ``optimizer`` is ``torch.optim.SGD`` without momentum,
    weight decay, ``maximize`` or ``differentiable``, over exactly ``parameters`` (in order),
    each a contiguous float32/float64 CPU tensor; otherwise :func:`clip_gradients` then
    ``optimizer.step()``. The fused kernel replaces ``optimizer.step()`` (and its step hooks):
    plain SGD keeps no state, so the optimiser is left as its own step would leave it, and the
    parameters agree up to float rounding.

    The learning rates are read from ``optimizer.param_groups`` at every call (schedules change
    them, and loading a state dict replaces the groups); the other hyper-parameters are taken
    as they are now: build a new step after changing them.

    Args:
        optimizer: the optimiser over ``parameters``.
        parameters: the parameters whose gradients are clipped together (the trainable ones,
            in the model's order: the order fixes the float sum of the norm).
        max_norm: θ.
        fused: a backend's fused ``(params, grads, lrs, max_norm) -> norm``, or None.

    Attributes:
        fused: the fused kernel this step runs, or None where it runs clipping and
            ``optimizer.step()``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: list[Tensor],
        max_norm: float,
        fused: FusedClipSGD | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.parameters = list(parameters)
        self.max_norm = max_norm
        plain_sgd = fused is not None and _is_plain_sgd(optimizer, self.parameters)
        self.fused = fused if plain_sgd else None

    def __call__(self) -> Tensor:
        """Clip and step, using the gradients now in ``parameters``.

        Returns:
            The gradients' norm before clipping, a 0-dim tensor on the device.
        """
        if self.fused is not None:
            grads = [p.grad for p in self.parameters]
            # A parameter the loss did not reach has no gradient: the kernel needs every one.
            if all(grad is not None for grad in grads):
                lrs = [float(group["lr"]) for group in self.optimizer.param_groups
                       for _ in group["params"]]
                return self.fused(self.parameters, grads, lrs, self.max_norm)
        norm = clip_gradients(self.parameters, self.max_norm)
        self.optimizer.step()
        return norm


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    parameters: list[Tensor],
    max_norm: float,
    fused: FusedClipSGD | None = None,
) -> Tensor:
    """:func:`clip_gradients` over ``parameters``, then ``optimizer.step()``, once.

    The same as ``ClippedStep(optimizer, parameters, max_norm, fused)()``; a loop builds its
    :class:`ClippedStep` once instead.

    Returns:
        The gradients' norm before clipping, a 0-dim tensor on the device.
    """
    return ClippedStep(optimizer, parameters, max_norm, fused)()


def _is_plain_sgd(optimizer: torch.optim.Optimizer, parameters: list[Tensor]) -> bool:
    """Whether a fused clipping + SGD kernel can stand in for ``optimizer``'s step over
    ``parameters`` (see :class:`ClippedStep`)."""
    if type(optimizer) is not torch.optim.SGD:
        return False
    members: list[Tensor] = []
    for group in optimizer.param_groups:
        if (
            group["momentum"]
            or group["weight_decay"]
            or group["maximize"]
            or group["differentiable"]
            or not isinstance(group["lr"], float | int)
        ):
            return False
        members += group["params"]
    if not parameters or len(members) != len(parameters):
        return False
    return all(
        p is member
        and p.device.type == "cpu"
        and p.dtype in (torch.float32, torch.float64)
        and p.layout == torch.strided
        and p.is_contiguous()
        for p, member in zip(parameters, members, strict=True)
    )


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate moves (see the module docstring for the formulas).

    Attributes:
        kind: ``constant``, ``cosine``, ``step`` or ``plateau``.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr`` over this many steps.
        min_lr_ratio: cosine ends at ``min_lr_ratio · lr``.
        step_size: steps between decays (``step``).
        gamma: decay per ``step_size`` steps (``step``).
        patience: evaluations without improvement before a decay (``plateau``).
        factor: decay on a plateau (``plateau``).
    """

    kind: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 1000
    gamma: float = 0.5
    patience: int = 2
    factor: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        for name, least in (("warmup_steps", 0), ("step_size", 1), ("patience", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"schedule {name} must be an integer ≥ {least}, got {value!r}")
        for name in ("gamma", "factor"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"schedule {name} must be in (0, 1], got {value!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


class Schedule:
    """The learning rate at every step; its state is two numbers (reduce-on-plateau's).

    Args:
        config: the schedule's shape.
        lr: the peak (base) learning rate.
    """

    def __init__(self, config: ScheduleConfig, lr: float) -> None:
        self.config = config
        self.base_lr = lr
        self.scale = 1.0  # reduce-on-plateau's accumulated factor
        self.best = math.inf
        self.bad_evaluations = 0

    def lr(self, step: int, progress: float = 0.0) -> float:
        """The learning rate for optimiser step ``step`` (0-based) at ``progress`` ∈ [0, 1]."""
        c = self.config
        lr = self.base_lr * self.scale
        if c.kind == "cosine":
            low = c.min_lr_ratio * lr
            lr = low + (lr - low) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2
        elif c.kind == "step":
            lr *= c.gamma ** (step // c.step_size)
        if step < c.warmup_steps:
            lr *= (step + 1) / c.warmup_steps
        return lr

    def observe(self, val_loss: float) -> None:
        """Reduce-on-plateau: count a validation loss; decay after ``patience`` bad ones."""
        if self.config.kind != "plateau":
            return
        if val_loss < self.best:
            self.best, self.bad_evaluations = val_loss, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.config.patience:
            self.scale *= self.config.factor
            self.bad_evaluations = 0

    def state_dict(self) -> dict[str, float | None]:
        """JSON-ready; ``best`` is None until a validation loss is observed."""
        best = self.best if math.isfinite(self.best) else None
        return {"scale": self.scale, "best": best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: Mapping[str, float | None]) -> None:
        self.scale = float(state["scale"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_evaluations = int(state["bad_evaluations"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and JSON.

    Returns:
        ``tensors``: ``"{param index}.{key}"`` → tensor (moments, step counts);
        ``json``: the parameter groups (hyper-parameters and indices) and the non-tensor
        per-parameter entries (e.g. SGD's ``momentum_buffer: None``).
    """
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], saved: Mapping[str, Any]
) -> None:
    """Restore what :func:`optimizer_state` saved into a freshly made ``optimizer``.

    Raises:
        CheckpointError: the saved state does not fit this optimiser's parameters.
    """
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as error:
        raise CheckpointError(
            f"the saved optimiser state does not fit the model: {error}"
        ) from None

