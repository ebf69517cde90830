"""The one list of samplers and bundled targets: the CLI, the tests and the docs read it.

``SAMPLERS``: name -> ``(function, SamplerInfo)``; ``TARGETS``: name -> ``(factory, TargetInfo)``, where a
factory's keyword arguments (with their defaults) are the options a target takes, e.g. ``mixture:dim=16,modes=4``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from fewstep.mcmc import diffusion_mc, hamiltonian, langevin, metropolis, slice, targets


@dataclass(frozen=True)
class SamplerInfo:
    gradient: bool  # uses gradients of the log-density
    adapts: bool  # tunes a step size (and a diagonal mass) in warm-up
    needs_prior: bool  # needs a Gaussian prior (elliptical slice)
    paper: str
    independent: bool = False  # each draw is an independent run (no warm-up, no init)


@dataclass(frozen=True)
class TargetInfo:
    exact: bool  # has an exact sampler
    summary: str


SAMPLERS = {
    "rwm": (metropolis.rwm, SamplerInfo(False, True, False, "Metropolis et al. 1953; Roberts, Gelman, Gilks 1997")),
    "mala": (metropolis.mala, SamplerInfo(True, True, False, "Roberts and Tweedie 1996")),
    "ula": (langevin.ula, SamplerInfo(True, False, False, "Roberts and Tweedie 1996; arXiv 2109.03839")),
    "hmc": (hamiltonian.hmc, SamplerInfo(True, True, False, "Duane et al. 1987; arXiv 1206.1901")),
    "nuts": (hamiltonian.nuts, SamplerInfo(True, True, False, "arXiv 1111.4246; arXiv 1701.02434")),
    "elliptical_slice": (slice.elliptical_slice, SamplerInfo(False, False, True, "arXiv 1001.0175")),
    "polar_slice": (slice.polar_slice, SamplerInfo(False, False, False, "arXiv 2302.03945")),
    "rdmc": (diffusion_mc.rdmc, SamplerInfo(True, False, False, "arXiv 2307.02037", independent=True)),
    "walk_jump": (diffusion_mc.walk_jump, SamplerInfo(True, False, False, "arXiv 2305.19473", independent=True)),
    "data_init": (langevin.data_init, SamplerInfo(True, False, False, "arXiv 2310.01762", independent=True)),
}

TARGETS = {
    "gaussian": (targets.ill_conditioned_gaussian, TargetInfo(True, "Gaussian, eigenvalues 1/condition..1")),
    "mixture": (targets.separated_mixture, TargetInfo(True, "Gaussian mixture, separated modes, weights 1:2:..:K")),
    "funnel": (targets.Funnel, TargetInfo(True, "Neal's funnel")),
    "banana": (targets.Banana, TargetInfo(True, "Rosenbrock density (Goodman and Weare 2010)")),
    "student_t": (targets.StudentT, TargetInfo(True, "multivariate Student-t")),
    "logistic": (targets.LogisticRegression, TargetInfo(False, "Bayesian logistic regression, breast cancer data")),
}


def target_options(name: str) -> dict[str, object]:
    """The options of target ``name`` with their defaults."""
    factory = TARGETS[name][0]
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()}


def sampler_options(name: str) -> dict[str, object]:
    """The keyword options of sampler ``name`` beyond the run's own (target, chains, draws, warmup, seed, init)."""
    skip = {"target", "chains", "draws", "warmup", "seed", "init", "prior", "center", "data"}
    return {p.name: p.default for p in inspect.signature(SAMPLERS[name][0]).parameters.values() if p.name not in skip}


def make_target(name: str, **options) -> targets.Target:
    """Build bundled target ``name``; unknown names and options are refused with the allowed ones."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    allowed = target_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(f"target {name!r} has no option {key!r}; its options: {', '.join(allowed) or 'none'}")
    return TARGETS[name][0](**options)


def run_sampler(name: str, target, **kwargs):
    """Run sampler ``name`` on ``target`` (keywords as the sampler function takes them)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name][0](target, **kwargs)
