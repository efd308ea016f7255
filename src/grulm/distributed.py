"""Data-parallel training across processes: who this process is among the ranks, and the few
collectives a run needs.

Under ``torchrun`` every process (rank) trains the same model on its own contiguous share of
each batch's rows. :class:`World` is that arrangement as the training code sees it; the
single-process run is a ``World`` of size 1 whose collectives do nothing, so the loop, the
evaluation and the run code read the same either way.

What a rank exchanges, and why it keeps the one-process mathematics:

- :meth:`World.average`: after the backward pass, the gradients and the loss, summed in one
  all-reduce and divided by the world size. Every rank holds the same number of rows, so the
  mean of the ranks' means is the mean over all B·T tokens of the global batch, and clipping
  the averaged gradients clips by the global norm.
- :meth:`World.agree`: after every step, whether to stop (a signal, ``max_time``, a hook). A
  rank that stops alone would leave the others waiting in the next collective.
- :meth:`World.rows` / :meth:`World.gather_rows`: a rank's share of a (…, B, …) tensor and the
  whole tensor back (the carried hidden state, for checkpoints).
- :meth:`World.sum`: evaluation sums, so that the held-out split is scored once, in parts.
- :meth:`World.settle`: a set-up step that may fail on one rank only (a locked run directory
  on rank 0, a missing file on another node) fails on every rank with that rank's message.

The process group uses gloo for CPU tensors and NCCL for CUDA ones. A collective that fails
(a rank died, a timeout) raises :class:`DistributedError` naming the rank and the reason.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from grulm.errors import ConfigError, GrulmError

DEFAULT_TIMEOUT_S = 600.0
REASON_BYTES = 32  # a stop reason travels as this many UTF-8 bytes
T = TypeVar("T")


class DistributedError(GrulmError):
    """A collective failed: another rank died or did not answer within the timeout."""


@dataclass
class World:
    """This process's place among the ranks of one run.

    Attributes:
        rank, size: this rank and how many there are (``RANK``, ``WORLD_SIZE``).
        local_rank, local_size: the same on this machine (``LOCAL_RANK``,
            ``LOCAL_WORLD_SIZE``); a CUDA rank uses ``cuda:<local_rank>``.
        nodes: how many machines (``size // local_size`` when every node runs as many).
        timeout_s: how long a collective, or joining the others, may wait.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    _device: torch.device | None = None
    _owns_group: bool = False

    @classmethod
    def from_environment(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
        """The world ``torchrun`` describes in the environment; size 1 outside it.

        Raises:
            ConfigError: the variables are there but inconsistent, or ``timeout_s`` ≤ 0.
        """
        if not timeout_s > 0:
            raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
        if "WORLD_SIZE" not in os.environ:
            return cls(timeout_s=timeout_s)
        try:
            size = int(os.environ["WORLD_SIZE"])
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
        except ValueError as error:
            raise ConfigError(f"a torchrun environment variable is not a number ({error})"
                              ) from None
        if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < local_size <= size):
            raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE="
                              f"{size}, LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size}")
        return cls(rank, size, local_rank, local_size, timeout_s)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Whether this rank writes files and prints (rank 0 alone)."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // self.local_size)

    def device(self, device: torch.device) -> torch.device:
        """The device this rank uses for ``device``: a CUDA rank takes its local GPU."""
        if self.distributed and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def check_divides(self, batch_size: int) -> None:
        """Raise ``ConfigError`` unless the global batch splits evenly across the ranks."""
        if batch_size % self.size:
            below = batch_size - batch_size % self.size
            nearest = " or ".join(str(n) for n in (below, below + self.size) if n)
            raise ConfigError(
                f"--batch-size {batch_size} does not split across {self.size} ranks: each "
                f"rank trains an equal share of the rows; use a multiple of {self.size} "
                f"(e.g. {nearest})"
            )

    # ---------------------------------------------------------------------- process group
    def join(self, device: torch.device) -> None:
        """Join the process group (gloo on CPUs, NCCL on GPUs), once per process.

        Raises:
            DistributedError: the other ranks could not be reached within the timeout.
        """
        import torch.distributed as dist

        if not self.distributed or dist.is_initialized():
            self._device = device
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        host, port = os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
        failed = f"rank {self.rank} could not join the other {self.size - 1} rank(s) at " \
                 f"{host}:{port} within {self.timeout_s:g} s"
        hint = "start every node with the same torchrun command, or raise --dist-timeout"
        # A rank that connects to a store (every rank under torchrun, whose agent holds it)
        # first waits for it here: PyTorch's own retries log a C++ trace at every attempt.
        if self.rank or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            if not _reachable(host, port, self.timeout_s):
                raise DistributedError(f"{failed} (nothing answers there); {hint}")
        try:
            dist.init_process_group(backend, rank=self.rank, world_size=self.size,
                                    timeout=datetime.timedelta(seconds=self.timeout_s))
        except (RuntimeError, ValueError) as error:  # DistStoreError, a refused connection
            raise DistributedError(f"{failed} ({_first_line(error)}); {hint}") from None
        self._device, self._owns_group = device, True

    def leave(self) -> None:
        """Leave the process group if :meth:`join` created it.

        Over gloo the ranks first meet at a barrier (bounded by ``timeout_s``, at most 60 s;
        a rank that died or went elsewhere is not waited for): a rank that tears its group
        down while another still works on it (rank 0 writing the last checkpoint) can make
        gloo's threads abort the process at exit.
        """
        if self._owns_group:
            import torch.distributed as dist

            if dist.get_backend() == "gloo":
                try:
                    dist.monitored_barrier(
                        timeout=datetime.timedelta(seconds=min(self.timeout_s, 60.0)))
                except RuntimeError:
                    pass  # the others are gone or failed: leave alone
            dist.destroy_process_group()
            self._owns_group = False

    # ------------------------------------------------------------------------ collectives
    def rows(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """This rank's contiguous share of ``tensor`` along ``dim`` (a view)."""
        if not self.distributed:
            return tensor
        share = tensor.shape[dim] // self.size
        return tensor.narrow(dim, self.rank * share, share)

    def gather_rows(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """Every rank's share of a tensor along ``dim``, joined in rank order."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        with self._collective("gathering the hidden state"):
            dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def average(self, parameters: Sequence[Tensor], loss: Tensor) -> Tensor:
        """Average the gradients of ``parameters`` and ``loss`` (0-dim) over the ranks.

        One all-reduce of one flat buffer. A parameter without a gradient counts as zero
        (and gets a zero gradient), so every rank sends the same layout.

        Returns:
            The mean loss over the ranks (0-dim, detached).
        """
        if not self.distributed:
            return loss
        import torch.distributed as dist

        grads = []
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(
            grads[0].dtype if grads else loss.dtype)])
        with self._collective("averaging the gradients"):
            dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        return flat[-1].to(loss.dtype)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        total = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        with self._collective("summing evaluation results"):
            dist.all_reduce(total)
        return total.tolist()

    def agree(self, reason: str | None) -> str | None:
        """The stop reason of the lowest rank that has one, the same on every rank."""
        if not self.distributed:
            return reason
        import torch.distributed as dist

        mine = torch.zeros(REASON_BYTES, dtype=torch.uint8)
        if reason:
            encoded = reason.encode()[:REASON_BYTES]
            mine[: len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
        device = self._collective_device()
        parts = [torch.empty(REASON_BYTES, dtype=torch.uint8, device=device)
                 for _ in range(self.size)]
        with self._collective("agreeing when to stop"):
            dist.all_gather(parts, mine.to(device))
        for part in parts:
            text = bytes(part.cpu().tolist()).rstrip(b"\0")
            if text:
                return text.decode(errors="replace")
        return None

    def same(self, value: T) -> T:
        """Rank 0's ``value`` (a picklable object), on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        with self._collective("sharing the run's state"):
            dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def broadcast(self, tensors: Sequence[Tensor]) -> None:
        """Copy rank 0's ``tensors`` into every rank's, in place."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with self._collective("sharing the model's weights"):
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def settle(self, step: Callable[[], T]) -> T:
        """Run ``step`` on this rank; if it fails on any rank, fail on every rank.

        The error raised everywhere is the lowest failing rank's, of its class where that is
        a :class:`GrulmError` (else ``GrulmError``); a rank other than the one that failed
        raises it marked ``quiet`` (the CLI prints it once, on rank 0), and a message from a
        rank other than 0 says which rank.
        """
        error: GrulmError | None = None
        try:
            result = step()
        except GrulmError as caught:
            error, result = caught, None
        if not self.distributed:
            if error is not None:
                raise error
            return result
        import torch.distributed as dist

        mine = None if error is None else (type(error), str(error))
        outcomes: list[Any] = [None] * self.size
        with self._collective("checking the set-up"):
            dist.all_gather_object(outcomes, _picklable(mine))
        failed = [(rank, outcome) for rank, outcome in enumerate(outcomes) if outcome]
        if not failed:
            return result
        rank, (cls, message) = failed[0]
        if rank != 0 and not all(o == outcomes[rank] for o in outcomes):
            message = f"rank {rank}: {message}"
        shared = _rebuild(cls, message)
        shared.quiet = self.rank != 0
        raise shared from None

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            with self._collective("waiting for the other ranks"):
                dist.barrier()

    @contextmanager
    def _collective(self, what: str):
        try:
            yield
        except (RuntimeError, ValueError, OSError) as error:  # gloo/NCCL errors, timeouts
            raise DistributedError(
                f"rank {self.rank}: {what} failed ({_first_line(error)}); another rank "
                "stopped or cannot be reached (its own error, if it could print one, is above)"
            ) from None

    def _collective_device(self) -> torch.device:
        device = self._device or torch.device("cpu")
        return device if device.type == "cuda" else torch.device("cpu")


def _reachable(host: str, port: str, timeout_s: float) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout_s`` (retrying)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            if time.monotonic() + 0.5 > deadline:
                return False
            time.sleep(0.5)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _picklable(outcome: tuple[type, str] | None) -> tuple[type, str] | None:
    if outcome is None:
        return None
    cls, message = outcome
    try:
        pickle.dumps(cls)
    except (pickle.PicklingError, AttributeError, TypeError):
        cls = GrulmError
    return cls, message


def _rebuild(cls: type, message: str) -> GrulmError:
    try:
        error = cls(message)
    except TypeError:
        error = GrulmError(message)
    return error if isinstance(error, GrulmError) else GrulmError(message)
