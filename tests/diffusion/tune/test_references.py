"""The tuning seeds' references: a looser tolerance than the benchmark's, cached in shared blocks."""

import torch

from fewstep.diffusion.tune import _tuning as T
from fewstep.evaluation.references import reference_samples

BLOCK = 8  # instead of REF_BLOCK, to keep the test small
SEEDS = list(range(100_000, 100_000 + BLOCK + 5))


def test_methods_share_whole_blocks_of_tuning_references(gmm2d, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    monkeypatch.setattr(T, "REF_BLOCK", BLOCK)
    files = lambda: sorted((tmp_path / "reference").glob("*.pt"))  # noqa: E731
    few = T.tuning_references(gmm2d, SEEDS, T.start_sigma(gmm2d), n=3)  # e.g. IIA's 32 trajectories
    assert few.shape[0] == 3 and len(files()) == 1  # the whole first block was solved and cached
    first = files()
    full = T.tuning_references(gmm2d, SEEDS)  # e.g. the predictor: the first block again, plus the second
    assert full.shape[0] == len(SEEDS) and len(files()) == 2 and first[0] in files()
    torch.testing.assert_close(full[:3], few, rtol=0, atol=0)
    # the same rows as a block of its own seeds (shared, not recomputed)
    torch.testing.assert_close(T.Predictor(gmm2d, SEEDS[:BLOCK]).ref.double(), full[:BLOCK].double())
    assert len(files()) == 2


def test_tuning_references_are_close_to_the_benchmarks(gmm2d, shared_reference_cache):
    """At TUNE_RTOL they are within a few 1e-5 RMS of the rtol-1e-6 references (few-step errors tuning
    compares are 1e-2 and up), and their stored tolerance check is of that size too."""
    block = SEEDS[:BLOCK]
    loose, check = reference_samples(gmm2d, block, sigma_max=T.start_sigma(gmm2d), rtol=T.TUNE_RTOL,
                                     check=T.TUNE_CHECK)
    tight, _ = reference_samples(gmm2d, block, sigma_max=T.start_sigma(gmm2d))
    err = float((loose - tight).pow(2).mean().sqrt())
    assert err < 1e-4 and check < 1e-4
