"""MCMC for unnormalised densities (issue 21): targets with exact samplers, samplers batched over chains,
diagnostics and distances to the truth. A family of its own: it builds on the base modules and ``metrics`` only.

Samplers (``SAMPLERS``): ``rwm``, ``mala``, ``ula`` (unadjusted, biased), ``hmc``, ``nuts``, ``elliptical_slice``,
``polar_slice``, and the independent-draw samplers ``rdmc``, ``walk_jump``, ``data_init``; each takes
``(target, chains, draws, warmup, seed, init, ...)`` and returns a ``Result``. ``smc`` estimates ``log Z``.
Targets (``TARGETS``, ``make_target``): ``gaussian``, ``mixture``, ``funnel``, ``banana``, ``student_t``,
``logistic``. See docs/mcmc.md.
"""

from __future__ import annotations

from fewstep.mcmc._core import NonFiniteDensityError, Result
from fewstep.mcmc.diagnostics import ess_bulk, ess_mean, ess_tail, rhat
from fewstep.mcmc.diffusion_mc import rdmc, walk_jump
from fewstep.mcmc.distances import mmd2, mode_weight_error, mode_weights, sliced_wasserstein
from fewstep.mcmc.hamiltonian import hmc, nuts
from fewstep.mcmc.langevin import data_init, ula
from fewstep.mcmc.metropolis import mala, rwm
from fewstep.mcmc.registry import SAMPLERS, TARGETS, make_target, run_sampler
from fewstep.mcmc.slice import elliptical_slice, polar_slice
from fewstep.mcmc.smc import SMCResult, smc
from fewstep.mcmc.summary import summarize
from fewstep.mcmc.targets import (
    Banana,
    Funnel,
    Gaussian,
    GaussianMixture,
    GaussianPrior,
    LogisticRegression,
    StudentT,
    Target,
)

__all__ = [
    "Result", "NonFiniteDensityError", "rwm", "mala", "ula", "hmc", "nuts", "elliptical_slice", "polar_slice",
    "rdmc", "walk_jump", "data_init",
    "rhat", "ess_bulk", "ess_tail", "ess_mean", "mmd2", "sliced_wasserstein", "mode_weights", "mode_weight_error",
    "summarize", "smc", "SMCResult", "SAMPLERS", "TARGETS", "make_target", "run_sampler", "Target", "Gaussian",
    "GaussianMixture",
    "GaussianPrior", "Funnel", "Banana", "StudentT", "LogisticRegression",
]
