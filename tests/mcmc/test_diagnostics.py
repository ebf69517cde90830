"""R-hat and ESS against ArviZ (the same definitions, arXiv 1903.08008), and the distances' basic properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fewstep.mcmc as mcmc

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ArviZ announces its refactor on import
    az = pytest.importorskip("arviz")


def _ar1(chains: int, n: int, phi: float, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, n))
    e = rng.standard_normal((chains, n))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x + shift * np.arange(chains)[:, None]


@pytest.mark.parametrize("case", [(4, 500, 0.9, 0.0), (3, 301, 0.3, 0.0), (2, 200, -0.4, 0.0), (4, 400, 0.95, 2.0),
                                  (1, 1000, 0.5, 0.0)])
def test_rhat_and_ess_match_arviz(case):
    chains, n, phi, shift = case
    x = _ar1(chains, n, phi, seed=n, shift=shift)
    x[0, :5] = np.round(x[0, :5])  # a few ties for the ranks
    ref = dict(bulk=float(az.ess(x, method="bulk")), tail=float(az.ess(x, method="tail")),
               mean=float(az.ess(x, method="mean")), rhat=float(az.rhat(x, method="rank")))
    np.testing.assert_allclose(mcmc.ess_bulk(x), ref["bulk"], rtol=1e-10)
    np.testing.assert_allclose(mcmc.ess_tail(x), ref["tail"], rtol=1e-10)
    np.testing.assert_allclose(mcmc.ess_mean(x), ref["mean"], rtol=1e-10)
    if chains > 1:
        np.testing.assert_allclose(mcmc.rhat(x), ref["rhat"], rtol=1e-10)
    else:  # ArviZ wants 2 chains before the split; one split chain already gives two halves to compare
        assert np.isnan(ref["rhat"]) and 0.9 < mcmc.rhat(x) < 1.1


def test_diagnostics_per_coordinate_and_their_meaning():
    x = _ar1(4, 2000, 0.0, seed=1)
    ess = mcmc.ess_bulk(np.stack([x, 2 * x], axis=-1))
    assert ess.shape == (2,) and ess[0] == pytest.approx(ess[1]) and 6000 < ess[0] < 10000  # iid: ESS ~ draws
    assert mcmc.ess_bulk(_ar1(4, 2000, 0.9, seed=1)) < 0.15 * 8000  # tau = (1 + phi) / (1 - phi) = 19
    assert mcmc.rhat(x) < 1.01 and mcmc.rhat(_ar1(4, 500, 0.5, seed=2, shift=3.0)) > 1.5
    with pytest.raises(ValueError, match="at least 4 draws"):
        mcmc.rhat(x[:, :3])


def test_distances_tell_the_same_law_from_another():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1500, 3, generator=g, dtype=torch.float64), torch.randn(1500, 3, generator=g,
                                                                                dtype=torch.float64)
    assert abs(mcmc.mmd2(a, b)) < 0.005 < mcmc.mmd2(a, b + 0.5)
    assert mcmc.sliced_wasserstein(a, b) < 0.15 < mcmc.sliced_wasserstein(a, b + 0.5)
    mix = mcmc.make_target("mixture", dim=4, modes=3)
    x = mix.sample(3000, g)
    assert mcmc.mode_weight_error(mix, x) < 0.03
    one_mode = x[mix.assign(x) == 2]
    np.testing.assert_allclose(mcmc.mode_weights(mix, one_mode).numpy(), [0, 0, 1])
