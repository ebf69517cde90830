"""``--batch`` (issue 18, item 10): seeds run in chunks, so memory is flat in the number of seeds, and the samples
and benchmark rows do not depend on the chunk size (each seed has its own generator).

The slow test measures the peak RSS of a 50,000-sample run of digits-edm (``pytest -m slow
tests/commands/test_batch.py``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fewstep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread", "shared_reference_cache")


@pytest.mark.parametrize("model,solver", [("digits-gmm", "unipc"), ("digits-cond", "dpmpp_2m_sde")])
def test_samples_do_not_depend_on_the_batch(tmp_path, model, solver):
    extra = ["--class", "0-9", "--cfg", "2", "--cads"] if model == "digits-cond" else []
    runs = {}
    for batch in ("3", "256"):
        out = tmp_path / f"b{batch}"
        assert main(["sample", "--model", model, "--solver", solver, "--nfe", "5", "--seeds", "0-10", "--batch", batch,
                     "--no-progress", "--out", str(out), *extra]) == 0
        runs[batch] = np.load(out.with_suffix(".npz"))
    assert runs["3"]["seeds"].tolist() == list(range(11)) and int(runs["3"]["nfe"]) == int(runs["256"]["nfe"]) == 5
    # bitwise: the nets pad every call to MIN_BATCH rows, the exact models evaluate fixed blocks of rows
    np.testing.assert_array_equal(runs["3"]["samples"], runs["256"]["samples"])
    if extra:
        assert runs["3"]["class_labels"].tolist() == runs["256"]["class_labels"].tolist()


def test_the_library_sees_chunks_of_at_most_batch_seeds(tmp_path, monkeypatch, capsys):
    import fewstep.diffusion.sampling as sampling

    seen, sample = [], sampling.sample

    def recording(model, **kw):
        seen.append(list(kw["seeds"]))
        return sample(model, **kw)

    monkeypatch.setattr(sampling, "sample", recording)
    for n in (10, 1000):
        seen.clear()
        assert main(["sample", "--model", "gmm2d", "--nfe", "2", "--seeds", f"0-{n - 1}", "--batch", "7",
                     "--no-progress", "--out", str(tmp_path / f"n{n}")]) == 0
        assert max(map(len, seen)) == 7 and sum(seen, []) == list(range(n))  # every seed once, in order
    assert "in 2 model evaluations" in capsys.readouterr().out  # per sample, not summed over the chunks


def test_bench_rows_do_not_depend_on_the_batch(tmp_path, capsys):
    rows = {}
    for batch in ("5", "256"):
        j = tmp_path / f"b{batch}.json"
        assert main(["bench", "--models", "gmm2d", "--solvers", "heun,unipc", "--nfe", "3,4", "--seeds", "0-15",
                     "--metrics", "rmse_ref,sw", "--batch", batch, "--no-progress", "--json", str(j)]) == 0
        rows[batch] = json.loads(j.read_text())
    for a, b in zip(rows["5"], rows["256"]):
        assert (a["solver"], a["nfe_budget"], a["nfe"]) == (b["solver"], b["nfe_budget"], b["nfe"])
        assert (a["rmse_ref"], a["sw"]) == pytest.approx((b["rmse_ref"], b["sw"]), rel=1e-12)
    assert [r["nfe"] for r in rows["5"]] == [3, 3, 3, 4]  # heun at budget 4 uses 3
    table = capsys.readouterr().out
    assert "  4 (3 used)" in table and "\n" + "gmm2d  heun " in table


def _peak_rss_mb(argv, cwd) -> float:
    """Peak resident memory of ``fewstep argv`` run in a fresh interpreter, in MB."""
    code = ("import resource, runpy, sys\nsys.argv = ['fewstep', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('fewstep', run_name='__main__')\nfinally:\n"
            "    print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stderr.split("peak")[-1]) / 1024


@pytest.mark.slow
def test_memory_is_flat_in_the_number_of_seeds(tmp_path, request):
    """50,000 samples of digits-edm fit in 2 GB, and need little more than 2,000 do beyond the samples themselves.
    It runs only when asked for (``-m slow``): about ten minutes on two cores."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the 50,000-sample memory test: pytest -m slow tests/commands/test_batch.py")
    common = ["sample", "--model", "digits-edm", "--nfe", "4", "--no-progress"]
    small = _peak_rss_mb([*common, "--seeds", "0-1999", "--out", "small"], tmp_path)
    large = _peak_rss_mb([*common, "--seeds", "0-49999", "--out", "large"], tmp_path)
    samples_mb = 48_000 * 64 * 4 / 2**20  # the extra samples, float32
    assert large < 2048 and large - small < 3 * samples_mb + 100, (small, large)


def test_sharded_runs_chunks_of_at_most_batch_seeds():
    import torch

    from fewstep.bench.distributed import seed_batches, sharded

    seen = []

    def fn(ids):
        seen.append(list(ids))
        return torch.tensor(ids, dtype=torch.float64)[:, None]

    assert sharded(fn, range(10), batch=4).flatten().tolist() == list(range(10))
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    seen.clear()
    with seed_batches(3):
        assert sharded(fn, range(7)).shape == (7, 1) and len(seen) == 3
    seen.clear()
    assert sharded(fn, range(7)).shape == (7, 1) and len(seen) == 1  # outside the block: all at once
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        with seed_batches(0):
            pass
