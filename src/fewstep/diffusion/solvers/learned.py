"""``learned``: a one-evaluation-per-step linear solver with stored coefficients and evaluation times.

Every deterministic multistep solver here that makes one model call per step is linear in its start
``x_0`` and its model outputs. With ``D_j = D(y_j, sigma_hat_j)`` the output at the ``j``-th evaluation,
its run is

    y_i = a_i x_0 + sum_{j < i} c_ij D_j     (i = 0 .. N-1; the state where the model is called)
    x_N = a_N x_0 + sum_{j < N} c_Nj D_j      (the sample),

with ``a`` and ``c`` functions of the grid. ``linear_form`` reads them off any registered solver by
running it on basis vectors; the solver ``learned`` runs the form with stored ``a``, ``c`` and
evaluation times ``sigma_hat``, which ``fewstep.diffusion.tune.ld3`` trains. With USF's data-mean start
(``first_x0``, Liu et al., arXiv 2312.07243) ``D_0`` is a stored vector instead of a model call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fewstep.diffusion.solvers._core import emit, get_solver, register
from fewstep.diffusion.solvers.basic import ddim
from fewstep.diffusion.solvers.usf import first_x0_cost, mean_start

Tensor = torch.Tensor
__all__ = ["learned", "linear_form", "run_form"]
_PAPER = "Tong et al., LD3, arXiv 2405.15506; Shaul et al., Bespoke Solvers, arXiv 2310.19075"


def _check_form(n: int, x_coefs, d_coefs, eval_sigmas, first: bool) -> None:
    given = [v is not None for v in (x_coefs, d_coefs, eval_sigmas)]
    if not all(given):
        raise ValueError("solver 'learned' needs x_coefs, d_coefs and eval_sigmas together (from "
                         "`fewstep tune --method ld3`), or none of them and no first_x0 (then it is DDIM)")
    if len(x_coefs) != n + 1:
        raise ValueError(f"x_coefs needs {n + 1} values for a grid of {n} steps; got {len(x_coefs)}")
    if len(d_coefs) != n + 1 or any(len(row) != i for i, row in enumerate(d_coefs)):
        raise ValueError(f"d_coefs needs {n + 1} rows of lengths 0, 1, ..., {n} for a grid of {n} steps; got "
                         f"lengths {[len(row) for row in d_coefs]}")
    if len(eval_sigmas) != n - first:
        what = "one per model call; first_x0 stands in for the first" if first else "one per model call"
        raise ValueError(f"eval_sigmas needs {n - first} values ({what}); got {len(eval_sigmas)}")
    flat = [float(v) for v in x_coefs] + [float(v) for row in d_coefs for v in row]
    if not all(math.isfinite(v) for v in flat):
        raise ValueError("x_coefs and d_coefs must be finite")
    if not all(0 < float(s) < math.inf for s in eval_sigmas):
        raise ValueError(f"eval_sigmas must be positive and finite; got {[float(s) for s in eval_sigmas]}")


def run_form(D, x: Tensor, x_coefs, d_coefs, eval_sigmas, sigmas=None, callback=None, first=None) -> Tensor:
    """The linear form's run (floats for sampling, tensors when training); ``first``, when given, is the
    first output (USF's data-mean start) in place of a model call; ``sigmas`` only label callbacks."""
    outs: list[Tensor] = [] if first is None else [first]
    for i, s_hat in enumerate(eval_sigmas, start=len(outs)):
        y = x_coefs[i] * x
        for c, d in zip(d_coefs[i], outs):
            y = y + c * d
        d = D(y, s_hat)
        emit(callback, i, y, s_hat if sigmas is None else sigmas[i], d, s_hat)
        outs.append(d)
    out = x_coefs[-1] * x
    for c, d in zip(d_coefs[-1], outs):
        out = out + c * d
    return out


@register("learned", order=1, cost=first_x0_cost,
          paper=_PAPER,
          notes="a one-evaluation-per-step linear solver with stored coefficients and evaluation times from "
                "fewstep.diffusion.tune.ld3; first_x0 replaces the first evaluation (N steps cost N - 1); "
                "without coefficients it is DDIM")
def learned(D, x, sigmas, *, callback=None, x_coefs=None, d_coefs=None, eval_sigmas=None, first_x0=None):
    """``y_i = a_i x_0 + sum_j c_ij D_j``, ``D_i = D(y_i, sigma_hat_i)``, ``x = a_N x_0 + sum_j c_Nj D_j``;
    with ``first_x0`` (one value per data coordinate) ``D_0`` is that vector instead of a model call."""
    if x_coefs is None and d_coefs is None and eval_sigmas is None and first_x0 is None:
        return ddim(D, x, sigmas, callback=callback)
    _check_form(len(sigmas) - 1, x_coefs, d_coefs, eval_sigmas, first_x0 is not None)
    first = None if first_x0 is None else mean_start(first_x0, x, "learned")
    return run_form(D, x, [float(v) for v in x_coefs], [[float(v) for v in r] for r in d_coefs],
                    [float(s) for s in eval_sigmas], sigmas, callback, first)


def linear_form(solver: str, sigmas: Sequence[float], options: Mapping[str, Any] | None = None) -> dict[str, list]:
    """``{"x_coefs", "d_coefs", "eval_sigmas"}`` of ``solver`` on ``sigmas``: the solver runs on a state
    of basis vectors (``x_0 = e_0``, the ``j``-th model output ``e_{j+1}``), so every state it builds
    holds its coefficients. Raises ``ValueError`` for a solver that does not call the model once per
    step, or whose states are not of the form above."""
    info = get_solver(solver)
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    if n < 1 or not math.isfinite(s[0]):
        raise ValueError(f"linear_form needs a grid with a finite start and at least one step; got {s}")
    k = n + 1
    calls: list[tuple[Tensor, float]] = []

    def probe(y, sigma):
        if len(calls) == n:
            raise ValueError(f"solver {solver!r} calls the model more than once per step ({n} steps); "
                             "ld3 learns one-evaluation-per-step solvers")
        calls.append((y.detach().clone(), float(sigma)))
        e = torch.zeros(1, k, dtype=torch.float64)
        e[0, len(calls)] = 1.0
        return e

    x0 = torch.zeros(1, k, dtype=torch.float64)
    x0[0, 0] = 1.0
    out = info.fn(probe, x0, s, **dict(options or {}))
    if len(calls) != n:
        raise ValueError(f"solver {solver!r} called the model {len(calls)} times in {n} steps; ld3 learns "
                         "one-evaluation-per-step solvers")
    rows = [y[0] for y, _ in calls] + [out[0]]
    for i, row in enumerate(rows):
        if bool((row[1 + i:] != 0).any()):
            raise ValueError(f"solver {solver!r} is not causal in its model outputs at evaluation {i}")
    return {"x_coefs": [float(r[0]) for r in rows], "d_coefs": [[float(v) for v in r[1:1 + i]] for i, r in
                                                                enumerate(rows)],
            "eval_sigmas": [sg for _, sg in calls]}
