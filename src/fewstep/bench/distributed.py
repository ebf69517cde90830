"""Scale-out over ``torchrun``: shard seeds over ranks and gather the results in seed order.

Under ``torchrun --nproc_per_node=K -m fewstep ...`` each rank samples ``seeds[rank::K]`` with the
same per-sample generators as a single process, so the gathered output is identical to it. A rank runs
its share in chunks of at most ``batch`` seeds (``sharded(..., batch=)``, or ``seed_batches(n)`` for the
calls inside a block), so the solver's working memory stays flat in the number of seeds.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator, Sequence

import torch

_BATCH: contextvars.ContextVar[int | None] = contextvars.ContextVar("fewstep_seed_batch", default=None)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group (gloo on CPU, nccl on GPU) on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def seed_batches(batch: int | None) -> Iterator[None]:
    """Inside the block, ``sharded`` calls that give no ``batch`` run at most ``batch`` seeds per call of ``fn``."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None; got {batch!r}")
    token = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(token)


def _in_chunks(fn: Callable[[list[int]], torch.Tensor], seeds: list[int], batch: int | None) -> torch.Tensor:
    if batch is None or len(seeds) <= batch:
        return fn(seeds)
    return torch.cat([fn(seeds[i:i + batch]) for i in range(0, len(seeds), batch)])


def sharded(fn: Callable[[list[int]], torch.Tensor], seeds: Sequence[int],
            batch: int | None = None) -> torch.Tensor | None:
    """Run ``fn`` on this rank's share of ``seeds``, at most ``batch`` seeds per call (default: the enclosing
    ``seed_batches`` block's, else all at once); rank 0 gets all rows in seed order, others None."""
    rank, size = world()
    batch = _BATCH.get() if batch is None else batch
    if size == 1:
        return _in_chunks(fn, list(seeds), batch)
    import torch.distributed as dist

    mine = list(seeds)[rank::size]
    out = _in_chunks(fn, mine, batch) if mine else None
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
