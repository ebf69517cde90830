"""Steering and inference-time scaling (docs/steering.md): spend more model evaluations on samples a reward favours.

A family of its own beside ``fewstep.diffusion``: every method runs a registered solver through the denoiser
contract (``fewstep.diffusion.sampling.solve``) and counts its model evaluations.

- Rewards (``fewstep.steer.rewards``): ``digit_logprob``, ``digit_confidence``, ``stroke_mass``, ``linear``,
  ``component_logpost``, any callable (``as_reward``), and ``make_reward("NAME[:options]")``.
- Search (Ma et al., arXiv 2501.09732): ``best_of_n``, ``noise_search``, ``path_search``.
- Particles: ``fk_steer`` (Singhal et al., arXiv 2501.06848), ``svdd`` (Li et al., arXiv 2408.08252).
- Minority guidance (Um et al., arXiv 2301.12334): ``minority_score``, ``fit_minority_classifier``,
  ``MinorityGuidance`` (a model wrapper for any solver).
- Compositional generation with MCMC correctors (Du et al., arXiv 2302.11552): ``Product`` (summed scores),
  ``compose_sample`` (ULA / MALA / HMC at each noise level), ``exact_log_density``.
- Exact answers on Gaussian mixtures: ``fewstep.steer.exact``.
"""

from __future__ import annotations

from typing import Any

from fewstep.steer._particles import SteerResult
from fewstep.steer.compose import CORRECTORS, Product, compose_sample, exact_log_density
from fewstep.steer.minority import MinorityClassifier, MinorityGuidance, fit_minority_classifier, minority_score
from fewstep.steer.resampling import RESAMPLERS, ess, multinomial, systematic
from fewstep.steer.rewards import (
    REWARD_NAMES,
    Reward,
    RewardError,
    as_reward,
    component_logpost,
    digit_confidence,
    digit_logprob,
    linear,
    make_reward,
    stroke_mass,
)
from fewstep.steer.search import best_of_n, noise_search, path_search
from fewstep.steer.smc import POTENTIALS, fk_steer, svdd

# name -> (function, what it needs and costs); the CLI, the benchmark and the tests read this one table.
METHODS: dict[str, tuple[Any, dict[str, Any]]] = {
    "best_of_n": (best_of_n, {"paper": "Ma et al., arXiv 2501.09732 (random search)", "needs_gradient": False,
                              "needs_stochastic": False, "size": "n", "targets_tilt": False}),
    "noise_search": (noise_search, {"paper": "Ma et al., arXiv 2501.09732 (zero-order search)",
                                    "needs_gradient": False, "needs_stochastic": False, "size": "candidates",
                                    "targets_tilt": False}),
    "path_search": (path_search, {"paper": "Ma et al., arXiv 2501.09732 (search over paths)", "needs_gradient": False,
                                  "needs_stochastic": False, "size": "width", "targets_tilt": False}),
    "fk": (fk_steer, {"paper": "Singhal et al., arXiv 2501.06848", "needs_gradient": False,
                      "needs_stochastic": False, "size": "particles", "targets_tilt": True}),
    "svdd": (svdd, {"paper": "Li et al., arXiv 2408.08252", "needs_gradient": False, "needs_stochastic": True,
                    "size": "particles", "targets_tilt": True}),
}


def list_methods() -> dict[str, dict[str, Any]]:
    """Every steering method with its paper, whether it needs reward gradients or a stochastic solver, the name of
    its size option, and whether it targets the tilted distribution ``p(x) exp(r(x)/temperature)``."""
    return {name: dict(info) for name, (_, info) in METHODS.items()}


__all__ = ["CORRECTORS", "METHODS", "POTENTIALS", "RESAMPLERS", "REWARD_NAMES", "MinorityClassifier",
           "MinorityGuidance", "Product", "Reward", "RewardError", "SteerResult", "as_reward", "best_of_n",
           "component_logpost", "compose_sample", "digit_confidence", "digit_logprob", "ess", "exact_log_density",
           "fit_minority_classifier", "fk_steer", "linear", "list_methods", "make_reward", "minority_score",
           "multinomial", "noise_search", "path_search", "stroke_mass", "svdd", "systematic"]
