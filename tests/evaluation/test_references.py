"""rmse_ref: references are exact where the ODE has a closed form, checked by halving, and cached."""

import pytest
import torch

import fewstep
from fewstep.diffusion.reference import reference_solution
from fewstep.diffusion.sampling import seeded_noise
from fewstep.evaluation import rmse_ref
from fewstep.evaluation.references import reference_samples


def test_reference_matches_the_closed_form_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    g = fewstep.load_model("gauss", dim=3, std=0.7, mean=0.2)
    seeds = list(range(6))
    ref, tol_check = reference_samples(g, seeds)
    x_T = g.sigma_max * seeded_noise(seeds, g.shape, dtype=torch.float64)
    # the reference follows the ODE to sigma_min and closes with x = D(x, sigma_min), as every grid does
    exact = g(g.ode_solution(x_T, g.sigma_max, g.sigma_min), g.sigma_min)
    assert float((ref - exact).abs().max()) < 1e-5 and tol_check < 1e-5
    files = list((tmp_path / "reference").glob("*.pt"))
    assert len(files) == 1
    again, _ = reference_samples(g, seeds)  # from the cache
    torch.testing.assert_close(again, ref)
    assert rmse_ref(g, exact, seeds) < 1e-5
    assert abs(rmse_ref(g, exact + 0.1, seeds) - 0.1) < 1e-5
    # another model, other seeds or another sigma range get their own entry
    reference_samples(g, seeds[:3])
    reference_samples(fewstep.load_model("gauss", dim=3, std=0.8, mean=0.2), seeds)
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 3


def test_a_checked_subset_gives_the_loose_solution_and_its_error(tmp_path, monkeypatch):
    """check=k returns the rtol solution of every seed; its tolerance check, from the first k seeds
    re-solved at rtol / 2, is of the size of its actual error against the closed form."""
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    g = fewstep.load_model("gauss", dim=3, std=0.7, mean=0.2)
    seeds = list(range(8))
    x_T = g.sigma_max * seeded_noise(seeds, g.shape, dtype=torch.float64)
    exact = g(g.ode_solution(x_T, g.sigma_max, g.sigma_min), g.sigma_min)
    loose, tol = reference_samples(g, seeds, rtol=1e-3, check=3)
    err = float((loose - exact).pow(2).mean().sqrt())
    assert 1e-7 < err < 1e-2 and err / 20 < tol < 20 * err
    tight, _ = reference_samples(g, seeds, rtol=1e-3)  # check=None: its own cache entry, the rtol / 2 solution
    assert float((tight - exact).pow(2).mean().sqrt()) < err
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 2
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="check must be None"):
            reference_samples(g, seeds, check=bad)


def test_reference_progress_reaches_the_end(capfd):
    g = fewstep.load_model("gauss", dim=3, std=0.7, mean=0.2)
    x = g.sigma_max * seeded_noise(range(4), g.shape, dtype=torch.float64)
    seen = []
    reference_solution(g, x, g.sigma_max, rtol=1e-4, atol=1e-6, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1
    reference_samples(g, range(4), rtol=1e-4, use_cache=False, check=2, progress=True)
    assert "references of 4 seeds (rtol 0.0001)" in capfd.readouterr().err
    reference_samples(g, range(4), rtol=1e-4, use_cache=False, check=2)
    assert capfd.readouterr().err == ""
