"""fewstep.bench.distributed in one process (no process group is started), and the gather's reassembly of the
ranks' shares in seed order. Real ``torchrun`` runs are compared with single-process ones in
tests/commands/test_cli.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from fewstep.bench import distributed as D


@pytest.mark.parametrize("size", [None, "1"])
def test_one_process_is_rank_zero_of_one(monkeypatch, size):
    if size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", size)
    assert D.world() == (0, 1) and D.is_main()
    D.barrier()  # a no-op
    assert not (dist.is_available() and dist.is_initialized())


def test_sharded_in_one_process_is_one_call_on_every_seed_in_order(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = []
    out = torch.arange(5.0)

    def fn(ids):
        seen.append(ids)
        return out

    assert D.sharded(fn, range(7, 2, -1)) is out
    assert seen == [[7, 6, 5, 4, 3]] and isinstance(seen[0], list)


def _fake_world(monkeypatch, rank, size, seeds, fn):
    """Run ``sharded`` as ``rank`` of ``size``: the gather hands back what every rank would contribute."""
    monkeypatch.setattr(D, "world", lambda: (rank, size))

    def all_gather_object(parts, obj):
        for r in range(size):
            mine = list(seeds)[r::size]
            parts[r] = (mine, fn(mine) if mine else None)
        assert parts[rank][0] == obj[0]  # this rank's own share is the one it computed

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)


@pytest.mark.parametrize("size", [2, 3, 9])  # 9 ranks for 7 seeds: two ranks have nothing to do
def test_rank_zero_gets_every_row_in_seed_order(monkeypatch, size):
    seeds = [10, 3, 7, 0, 5, 8, 1]
    fn = lambda ids: torch.tensor(ids, dtype=torch.float64)[:, None] * torch.ones(1, 2)  # noqa: E731  row = seed
    full = fn(seeds)
    for rank in range(size):
        _fake_world(monkeypatch, rank, size, seeds, fn)
        assert D.is_main() == (rank == 0)
        calls = []
        out = D.sharded(lambda ids: calls.append(ids) or fn(ids), seeds)
        assert calls == ([seeds[rank::size]] if seeds[rank::size] else [])  # each rank solves its own share
        if rank == 0:
            torch.testing.assert_close(out, full, rtol=0, atol=0)
        else:
            assert out is None
