"""grulm.distributed: the torchrun environment, the batch split, and the collectives of two real
gloo ranks (spawned processes) against what one process computes."""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch
import torch.multiprocessing as mp

from grulm.data.batches import RowShare, epoch_batches
from grulm.distributed import DistributedError, World
from grulm.errors import ConfigError, DataError


def test_outside_torchrun_the_world_is_this_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = World.from_environment()
    assert (world.rank, world.size, world.distributed, world.writes) == (0, 1, False, True)
    loss = torch.tensor(2.5)
    assert world.average([], loss) is loss and world.agree("max_time") == "max_time"
    assert world.sum([1.0, 2.0]) == [1.0, 2.0] and world.same({"a": 1}) == {"a": 1}
    tensor = torch.arange(6).reshape(1, 6, 1)
    assert world.rows(tensor, 1) is tensor and world.gather_rows(tensor, 1) is tensor
    with pytest.raises(DataError, match="only"):
        world.settle(lambda: (_ for _ in ()).throw(DataError("only")))


def test_the_torchrun_environment(monkeypatch):
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    world = World.from_environment(timeout_s=5)
    assert (world.rank, world.size, world.local_rank, world.local_size, world.nodes) == (
        3, 4, 1, 2, 2)
    assert world.distributed and not world.writes and world.timeout_s == 5
    assert world.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert world.device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent torchrun environment: RANK=4"):
        World.from_environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="not a number"):
        World.from_environment()
    with pytest.raises(ConfigError, match="--dist-timeout must be > 0"):
        World.from_environment(timeout_s=0)


def test_a_batch_that_does_not_split_is_refused_with_the_nearest_sizes():
    World(rank=0, size=4).check_divides(32)
    with pytest.raises(ConfigError, match=r"--batch-size 30 does not split across 4 ranks.*"
                                          r"a multiple of 4 \(e\.g\. 28 or 32\)"):
        World(rank=0, size=4).check_divides(30)
    with pytest.raises(ConfigError, match=r"a multiple of 3 \(e\.g\. 3\)"):
        World(rank=0, size=3).check_divides(2)


@pytest.mark.parametrize("partition", ["sequential", "random"])
def test_rank_shares_tile_every_batch(partition):
    """Two ranks' rows, side by side, are the one-process batch (same RNG draws)."""
    ids = torch.randint(0, 28, (2_000,), dtype=torch.uint8)
    whole = epoch_batches(ids, 8, 5, random.Random(3), partition)
    shares = [RowShare(epoch_batches(ids, 8, 5, random.Random(3), partition), r * 4, r * 4 + 4)
              for r in range(2)]
    assert len(shares[0]) == len(whole) and shares[0].batch_size == 4
    for index in range(len(whole)):
        X, Y = whole.batch(index)
        parts = [share.batch(index) for share in shares]
        assert torch.equal(torch.cat([p[0] for p in parts]), X)
        assert torch.equal(torch.cat([p[1] for p in parts]), Y)
    with pytest.raises(ConfigError):
        RowShare(whole, 4, 9)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = World(rank=rank, size=2, local_rank=rank, local_size=2, timeout_s=30)
    world.join(torch.device("cpu"))
    try:
        out = {}
        parameter = torch.nn.Parameter(torch.zeros(3))
        parameter.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
        unused = torch.nn.Parameter(torch.zeros(2))  # no gradient on either rank
        out["loss"] = world.average([parameter, unused], torch.tensor(float(rank))).item()
        out["grad"], out["unused"] = parameter.grad.tolist(), unused.grad.tolist()
        out["agree"] = world.agree("SIGTERM" if rank == 1 else None)
        out["none"] = world.agree(None)
        out["sum"] = world.sum([rank + 1.0, 10.0])
        out["same"] = world.same({"rank": rank})
        rows = torch.arange(8.0).reshape(1, 8, 1)
        mine = world.rows(rows, 1)
        out["rows"] = mine.flatten().tolist()
        out["gathered"] = torch.equal(world.gather_rows(mine, 1), rows)
        weight = torch.full((2,), float(rank))
        world.broadcast([weight])
        out["broadcast"] = weight.tolist()
        try:
            world.settle(lambda: (_ for _ in ()).throw(DataError("no file")) if rank == 1
                         else "fine")
        except DataError as error:
            out["settle"] = (str(error), error.quiet)
        results[rank] = out
    finally:
        world.leave()


def test_two_gloo_ranks_share_what_one_process_computes():
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
    zero, one = results[0], results[1]
    for out in (zero, one):
        assert out["loss"] == 0.5 and out["grad"] == [1.5] * 3 and out["unused"] == [0.0] * 2
        assert out["agree"] == "SIGTERM" and out["none"] is None  # one rank stops: all stop
        assert out["sum"] == [3.0, 20.0] and out["same"] == {"rank": 0}
        assert out["gathered"] and out["broadcast"] == [0.0, 0.0]
    assert zero["rows"] == [0, 1, 2, 3] and one["rows"] == [4, 5, 6, 7]
    # rank 1's error fails both; rank 0 prints it (naming rank 1), rank 1's copy is quiet
    assert zero["settle"] == ("rank 1: no file", False)
    assert one["settle"] == ("rank 1: no file", True)


def test_joining_ranks_that_never_come_fails_in_bounded_time(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))  # nothing listens there
    world = World(rank=1, size=2, timeout_s=1)
    with pytest.raises(DistributedError, match=r"rank 1 could not join the other 1 rank\(s\) "
                                               r"at 127\.0\.0\.1:\d+ within 1 s"):
        world.join(torch.device("cpu"))
