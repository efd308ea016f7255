"""What single-step decoding reads: a language model's own parameters, as they are."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, eq=False)
class DecodeParams:
    """A language model's parameters in :mod:`grulm.cells`' layout, for decoding.

    The model's own tensors, detached: views of the same memory (no copy, so a model trained
    or reloaded in place between two steps is read as it is now) that carry no autograd
    history, so decoding records none and needs no grad-mode switch. :meth:`of` takes them
    from a :class:`grulm.model.GRULM`.

    Attributes:
        layers: per layer ``(weight_ih (G·H, I), weight_hh (G·H, H), bias_ih (G·H,),
            bias_hh (G·H,))`` (a minGRU's: ``(weight_ih, bias_ih)``), G blocks as the cell
            has (a GRU's: gates r, z, n); layer 0's I is the vocabulary size V for one-hot
            input, else the embedding size.
        head_weight: (V, H); head_bias: (V,).
        embedding: (V, I), or None for one-hot input.
        cell, gates, variant: the model's (see :class:`grulm.model.GRUConfig`).
    """

    layers: tuple[tuple[Tensor, ...], ...]
    head_weight: Tensor
    head_bias: Tensor
    embedding: Tensor | None
    cell: str = "gru"
    gates: str = "both"
    variant: str = "reset_before"

    def __post_init__(self) -> None:
        detached = tuple(tuple(t.detach() for t in layer) for layer in self.layers)
        object.__setattr__(self, "layers", detached)
        for name in ("head_weight", "head_bias", "embedding"):
            tensor = getattr(self, name)
            object.__setattr__(self, name, None if tensor is None else tensor.detach())
        found = [t for layer in self.layers for t in layer]
        found += [self.head_weight, self.head_bias]
        if self.embedding is not None:
            found.append(self.embedding)
        object.__setattr__(self, "_tensors", found)

    @classmethod
    def of(cls, model) -> DecodeParams:
        """A :class:`grulm.model.GRULM`'s parameters (``recurrent.layer(k)``, ``head``,
        ``embedding``, the config's cell, gates and variant), detached."""
        config = model.config
        return cls(
            layers=tuple(model.recurrent.layer(k) for k in range(config.num_layers)),
            head_weight=model.head.weight,
            head_bias=model.head.bias,
            embedding=None if model.embedding is None else model.embedding.weight,
            cell=config.cell,
            gates=config.gates,
            variant=config.variant,
        )

    @property
    def reset_after(self) -> bool:
        """The cuDNN GRU variant if True, the textbook (reset-before) one if False."""
        return self.variant == "reset_after"

    def tensors(self) -> list[Tensor]:
        """Every tensor in one list: each layer's in order, the head's weight and bias,
        then the embedding if there is one."""
        return self._tensors
