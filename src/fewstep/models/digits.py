"""Exact models built on scikit-learn's 8x8 digits (shipped as package data), scaled to [-1, 1]."""

from __future__ import annotations

from safetensors.torch import load

from fewstep._verify import read_bundled
from fewstep.models._registry import register_model
from fewstep.models.digits_data import digits_data
from fewstep.models.exact import GMM, Empirical

DIGITS_SHAPE = (1, 8, 8)
# The digits have 17 grey levels, 0.125 apart in [-1, 1]. EDM's sigma_min = 0.002 is a quarter of
# one level of 8-bit images (0.0078); the same fraction of a digits level is about 0.03.
DIGITS_SIGMA_MIN = 0.03


def digits_gmm(**kw) -> GMM:
    """A 16-component full-covariance Gaussian mixture fitted to the digits by
    ``scripts/fit_digits_gmm.py``; its denoiser is the exact posterior mean of that mixture."""
    p = load(read_bundled("models/data/digits_gmm.safetensors"))
    kw.setdefault("sigma_min", DIGITS_SIGMA_MIN)
    return GMM(p["weights"], p["means"], p["covariances"], shape=DIGITS_SHAPE, name="digits-gmm", **kw)


def digits_empirical(split: str = "all", **kw) -> Empirical:
    """The optimal denoiser of the 1,797-image digits set (or one split of it)."""
    x, _ = digits_data(split)
    kw.setdefault("sigma_min", DIGITS_SIGMA_MIN)
    return Empirical(x.double(), shape=DIGITS_SHAPE, name="digits-empirical", **kw)


register_model("digits-gmm", "exact",
               "Gaussian mixture (16 full-covariance components) fitted to sklearn's 8x8 digits in [-1, 1]", digits_gmm)
register_model("digits-empirical", "exact",
               "the optimal denoiser of the 1,797 sklearn digits in [-1, 1] (memorises the set)", digits_empirical)
