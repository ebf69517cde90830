"""``usf``: a solver whose every step is chosen separately, the search space of S3.

Liu et al., *A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models*
(USF), arXiv 2312.07243. Step ``i`` has its own Taylor order, prediction type and corrector flag:

- ``prediction="data"``: ``x' = (s'/s) x + s' int_{1/s}^{1/s'} D(lambda(u)) du`` (``u = e^lambda``), with
  ``D`` the Lagrange interpolant in ``lambda`` of the last ``order`` model outputs;
- ``prediction="noise"``: ``x' = x + int_s^{s'} eps(lambda(sigma)) dsigma`` with ``eps = (x - D) / sigma``
  interpolated the same way.

Both are the exact integrals of the interpolant (``_core.exp_weights``, data and noise form); order 1
is DDIM in both forms. The corrector is USF's free pseudo-corrector (UniC's idea, arXiv 2302.04867): the
evaluation at the predicted state, which the next step needs anyway, is added as one more node and
the step is recomputed from the same start. USF's relaxed derivative estimate scales the terms beyond
first order by a per-step ``1 + relax``. A data-form step to sigma = 0 is first order
(``x' = D``), as in every data-form solver here. ``N`` steps cost ``N`` evaluations, or ``N - 1`` with
USF's ``average_x0`` starting point (``first_x0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fewstep.diffusion.solvers._core import ddim_step, emit, exp_weights, lam, register

PREDICTIONS = ("data", "noise")
MAX_ORDER = 3


def step(x, s: float, s_next: float, nodes: Sequence[tuple[float, object, object]], prediction: str,
         relax: float = 0.0):
    """One step from ``(x, s)`` to ``s'`` with the interpolant in ``lambda`` through ``nodes = [(lambda, D, eps), ...]``
    (the first node is the current point), integrated exactly by ``exp_weights``: data form
    ``x' = (s'/s) x + sum_j w_j D_j``, noise form ``x' = x - s sum_j w_j eps_j``. The part beyond the DDIM
    step is scaled by ``1 + relax``."""
    first = ddim_step(x, s, s_next, nodes[0][1])
    if len(nodes) == 1:
        return first
    v = [lm - nodes[0][0] for lm, _, _ in nodes]
    h = lam(s_next) - nodes[0][0]
    if prediction == "data":
        full = (s_next / s) * x + sum(float(wj) * d for wj, (_, d, _) in zip(exp_weights(v, h), nodes))
    else:
        full = x + sum(float(-s * wj) * eps for wj, (_, _, eps) in zip(exp_weights(v, h, form="noise"), nodes))
    return full if relax == 0 else first + (1 + relax) * (full - first)


def check_plan(n_steps: int, orders, predictions, correctors, relax=None):
    """The per-step lists (defaults: order 2, data prediction, corrector on, no relaxation), validated."""
    orders = [2] * n_steps if orders is None else list(orders)
    predictions = ["data"] * n_steps if predictions is None else list(predictions)
    correctors = [True] * n_steps if correctors is None else list(correctors)
    relax = [0.0] * n_steps if relax is None else list(relax)
    for name, v in (("orders", orders), ("predictions", predictions), ("correctors", correctors), ("relax", relax)):
        if len(v) != n_steps:
            raise ValueError(f"usf option {name} needs one entry per step ({n_steps}); got {len(v)}: {v}")
    bad = [o for o in orders if not isinstance(o, int) or isinstance(o, bool) or not 1 <= o <= MAX_ORDER]
    if bad:
        raise ValueError(f"usf orders must be integers in 1..{MAX_ORDER}; got {orders}")
    if any(p not in PREDICTIONS for p in predictions):
        raise ValueError(f"usf predictions must each be one of {PREDICTIONS}; got {predictions}")
    if any(not isinstance(c, bool) for c in correctors):
        raise ValueError(f"usf correctors must be booleans; got {correctors}")
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not -1 <= r <= 1 for r in relax):
        raise ValueError(f"usf relax values must be numbers in [-1, 1]; got {relax}")
    return orders, predictions, correctors, [float(r) for r in relax]


def first_x0_cost(n_steps: int, final_zero: bool, options) -> int:
    """``N`` steps cost ``N`` evaluations, or ``N - 1`` when ``first_x0`` stands in for the first."""
    return n_steps - (options.get("first_x0") is not None)


def mean_start(first_x0, x: torch.Tensor, solver: str) -> torch.Tensor:
    """USF's ``average_x0``: the flat list ``first_x0`` (one value per data coordinate) as the model
    output for every sample of ``x``."""
    d = torch.as_tensor(first_x0, dtype=x.dtype, device=x.device)
    if d.numel() != x[0].numel():
        raise ValueError(f"{solver} first_x0 needs {x[0].numel()} values (one per data coordinate); got {d.numel()}")
    return d.reshape(x.shape[1:]).expand_as(x)


@register("usf", order=3, cost=first_x0_cost,
          paper="Liu et al., USF / S3, arXiv 2312.07243 (per-step solver schedule)",
          notes="per-step order 1-3, data/noise prediction, free corrector and derivative relaxation; first_x0 "
                "replaces the first evaluation (N steps cost N - 1); found by `fewstep tune --method s3`")
def usf(D, x, sigmas, *, callback=None, orders=None, predictions=None, correctors=None, relax=None,
        first_x0=None):
    """Per-step exponential-integrator solver: step ``i`` uses ``orders[i]`` nodes (fewer while the
    history is short), ``predictions[i]``, when ``correctors[i]`` the free corrector, and scales its
    higher-order terms by ``1 + relax[i]`` (USF's relaxed derivative estimate; 0 = the exact interpolant).

    ``first_x0`` (a flat list with one value per data coordinate, e.g. the data mean) is USF's
    ``average_x0`` starting point: it stands in for ``D`` at ``sigmas[0]``, saving that evaluation.
    """
    n = len(sigmas) - 1
    orders, predictions, correctors, relax = check_plan(n, orders, predictions, correctors, relax)
    if first_x0 is None:
        d = D(x, sigmas[0])
    else:
        d = mean_start(first_x0, x, "usf")
    eps = (x - d) / sigmas[0]
    hist: list = []  # (lambda, D, eps) of earlier points, newest first
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        emit(callback, i, x, s, d)
        pred = predictions[i]
        p = 1 if (s_next == 0 and pred == "data") else min(orders[i], len(hist) + 1)
        nodes = [(lam(s), d, eps)] + hist[: p - 1]
        x_pred = step(x, s, s_next, nodes, pred, relax[i])
        d_next = eps_next = None
        if i < n - 1:
            d_next = D(x_pred, s_next)
            eps_next = (x_pred - d_next) / s_next
        if correctors[i] and d_next is not None:
            x_new = step(x, s, s_next, nodes + [(lam(s_next), d_next, eps_next)], pred, relax[i])
        else:
            x_new = x_pred
        hist = ([(lam(s), d, eps)] + hist)[: MAX_ORDER - 1]
        x, d, eps = x_new, d_next, eps_next
    return x
