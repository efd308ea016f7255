"""What single-step decoding reads: a language model's own parameters, as they are."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, eq=False)
class DecodeParams:
    """A GRU language model's parameters in ``torch.nn.GRU``'s layout, for decoding.

    The model's own tensors, detached: views of the same memory (no copy, so a model trained
    or reloaded in place between two steps is read as it is now) that carry no autograd
    history, so decoding records none and needs no grad-mode switch. :meth:`of` takes them
    from a :class:`grulm.model.GRULM`.

    Attributes:
        layers: per layer ``(weight_ih (3H, I), weight_hh (3H, H), bias_ih (3H,),
            bias_hh (3H,))``, gates ordered r, z, n; layer 0's I is the vocabulary size V for
            one-hot input, else the embedding size.
        head_weight: (V, H); head_bias: (V,).
        embedding: (V, I), or None for one-hot input.
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.
    """

    layers: tuple[tuple[Tensor, Tensor, Tensor, Tensor], ...]
    head_weight: Tensor
    head_bias: Tensor
    embedding: Tensor | None
    reset_after: bool

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
        """A :class:`grulm.model.GRULM`'s parameters (``gru.layer(k)``, ``head``,
        ``embedding``, ``config.variant``), detached."""
        return cls(
            layers=tuple(model.gru.layer(k) for k in range(model.config.num_layers)),
            head_weight=model.head.weight,
            head_bias=model.head.bias,
            embedding=None if model.embedding is None else model.embedding.weight,
            reset_after=model.config.variant == "reset_after",
        )

    def tensors(self) -> list[Tensor]:
        """Every tensor in one list: the layers' four in order, the head's weight and bias,
        then the embedding if there is one."""
        return self._tensors
