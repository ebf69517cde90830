"""Scale-out over ``torchrun``: shard seeds over ranks and gather the results in seed order.

Under ``torchrun --nproc_per_node=K -m fewstep ...`` each rank samples ``seeds[rank::K]`` with the
same per-sample generators as a single process, so the gathered output is identical to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch


def world() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group (gloo on CPU, nccl on GPU) on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def sharded(fn: Callable[[list[int]], torch.Tensor], seeds: Sequence[int]) -> torch.Tensor | None:
    """Run ``fn`` on this rank's share of ``seeds``; rank 0 gets all rows in seed order, others None."""
    rank, size = world()
    if size == 1:
        return fn(list(seeds))
    import torch.distributed as dist

    mine = list(seeds)[rank::size]
    out = fn(mine) if mine else None
    parts: list = [None] * size
    dist.all_gather_object(parts, (mine, None if out is None else out.cpu()))
    if rank != 0:
        return None
    rows = {}
    for ids, tensor in parts:
        if tensor is not None:
            rows.update({s: tensor[i] for i, s in enumerate(ids)})
    return torch.stack([rows[s] for s in seeds])


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def is_main() -> bool:
    return world()[0] == 0
