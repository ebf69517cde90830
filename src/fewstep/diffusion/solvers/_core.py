"""The shared exponential-integrator core, the solver registry and the driver (MATH.md).

Conventions: ``x = x0 + sigma eps``, ``lambda = -log sigma``, a step from ``s`` to ``t`` has
``h = lambda_t - lambda_s > 0``. The exact data-form solution is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda D(lambda) dlambda,

and a Taylor term ``D^(k) (lambda - lambda_s)^k / k!`` contributes ``h^(k+1) phi_{k+1}(-h) D^(k)``.
Each solver supplies only its coefficients.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# phi-functions and quadrature
# ----------------------------------------------------------------------------------------------

def phi(k: int, z: float) -> float:
    """``phi_k(z)``: ``phi_0 = e^z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``; stable for small ``|z|``
    (Taylor series ``sum_j z^j / (j+k)!``) and exact at ``z = -inf`` (``phi_k = 0`` for ``k >= 1``)."""
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        return sum(z**j / math.factorial(j + k) for j in range(30))
    if math.isinf(z):
        return 0.0
    p = math.expm1(z) / z
    for j in range(1, k):
        p = (p - 1.0 / math.factorial(j)) / z
    return p


def lam(sigma: float) -> float:
    """Log time ``lambda = -log sigma`` (``inf`` at sigma = 0)."""
    return -math.log(sigma) if sigma > 0 else math.inf


_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _GL_CACHE:
        _GL_CACHE[n] = np.polynomial.legendre.leggauss(n)
    return _GL_CACHE[n]


def lagrange_integrals(nodes: Sequence[float], a: float, b: float,
                       to_var: Callable[[np.ndarray], np.ndarray] | None = None, n_quad: int = 16) -> np.ndarray:
    """``w_j = int_a^b l_j(v(s)) ds`` for the Lagrange basis ``l_j`` on ``nodes`` (in the variable v).

    With ``to_var = None`` the variable is ``s`` itself and the polynomial integrand is integrated
    exactly. Otherwise ``v(s)`` is a smooth change of variable (DEIS's VP time).
    """
    xg, wg = gauss_legendre(n_quad)
    s = 0.5 * (b - a) * xg + 0.5 * (b + a)
    v = s if to_var is None else to_var(s)
    nv = np.asarray(nodes, dtype=np.float64)
    out = np.empty(len(nv))
    for j in range(len(nv)):
        lj = np.ones_like(v)
        for m in range(len(nv)):
            if m != j:
                lj = lj * (v - nv[m]) / (nv[j] - nv[m])
        out[j] = 0.5 * (b - a) * np.dot(wg, lj)
    return out


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

class SolverKind(str, Enum):
    """How a solver uses its evaluations: one per step reusing earlier ones (multistep), several per step
    (singlestep), or a step that depends on the state itself (state_adaptive: not a linear map of outputs)."""

    MULTISTEP = "multistep"
    SINGLESTEP = "singlestep"
    STATE_ADAPTIVE = "state_adaptive"


@dataclass(frozen=True)
class SolverInfo:
    """Registry entry: the solver function and what it promises.

    ``order`` is the convergence order measured on a Karras grid with default options;
    ``evals_per_step`` the model calls of a full step; ``final_evals`` those of a final step to
    sigma = 0 (a singlestep or Heun step ends with one Euler evaluation there). A solver whose cost
    is not a per-step count (Restart) gives ``cost(n_steps, final_zero, options) -> int`` instead,
    which raises ``ValueError`` for a number of steps it cannot take.
    """

    name: str
    fn: Callable[..., Tensor]
    order: int
    evals_per_step: int
    final_evals: int
    paper: str
    kind: SolverKind
    stochastic: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    cost: Callable[[int, bool, Mapping[str, Any]], int] | None = None

    def evals(self, n_steps: int, final_zero: bool, options: Mapping[str, Any] | None = None) -> int:
        """Model calls of ``n_steps`` steps with ``options`` (before AFS savings and denoise-to-zero)."""
        if n_steps < 1:
            return 0
        if self.cost is not None:
            return self.cost(n_steps, final_zero, {**self.options, **(options or {})})
        last = self.final_evals if final_zero else self.evals_per_step
        return self.evals_per_step * (n_steps - 1) + last

    def describe(self) -> dict[str, Any]:
        return {"order": self.order, "evals_per_step": self.evals_per_step, "final_evals": self.final_evals,
                "kind": self.kind.value, "stochastic": self.stochastic, "paper": self.paper,
                "options": dict(self.options), "notes": self.notes}


SOLVERS: dict[str, SolverInfo] = {}


def solver_options(fn: Callable) -> dict[str, Any]:
    """A solver's options and their defaults: its keyword-only parameters, less ``callback`` and the injected
    ``noise``. The registry reads them from here, so the signature is their one source."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name not in ("callback", "noise")}


def register(name: str, *, order: int, paper: str, kind: SolverKind | str = SolverKind.MULTISTEP,
             evals_per_step: int = 1, final_evals: int | None = None, stochastic: bool = False, notes: str = "",
             fn: Callable | None = None, cost: Callable | None = None):
    """Decorator (or call with ``fn=``) adding a solver to the registry; its options come from its signature."""

    def deco(f):
        SOLVERS[name] = SolverInfo(name, f, order, evals_per_step,
                                   evals_per_step if final_evals is None else final_evals,
                                   paper, SolverKind(kind), stochastic, solver_options(f), notes, cost)
        return f

    return deco(fn) if fn is not None else deco


def get_solver(name: str) -> SolverInfo:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


# ----------------------------------------------------------------------------------------------
# step plumbing shared by the solvers
# ----------------------------------------------------------------------------------------------

def multistep_order(order: int, i: int, n_steps: int, sigma_next: float, lower_order_final: bool,
                    final_threshold: int | None = 15, zero_first_order: bool = True) -> int:
    """Warm-up orders ``1, 2, ...``; lower orders on the last steps when ``lower_order_final`` and
    the run has fewer than ``final_threshold`` steps (diffusers' rule; ``None`` = always); a final
    step to sigma = 0 is first order (``x' = D`` exactly) for data-form solvers, whose higher-order
    terms are singular at ``h = inf``; noise-form solvers pass ``zero_first_order=False``."""
    p = min(order, i + 1)
    if lower_order_final and (final_threshold is None or n_steps < final_threshold):
        p = min(p, n_steps - i)
    return 1 if (sigma_next == 0 and zero_first_order) else p


def ddim_step(x: Tensor, s: float, s_next: float, D: Tensor) -> Tensor:
    """First-order exponential integrator: ``x' = (s'/s) x - expm1(-h) D`` (= DDIM = Euler in sigma)."""
    if s_next == 0:
        return D
    r = s_next / s
    return r * x + (1 - r) * D


def emit(callback: Callable | None, i: int, x: Tensor, s: float, D: Tensor, sigma_hat: float | None = None) -> None:
    """Report step ``i``; ``sigma_hat`` is the raised noise level where a solver evaluated (EDM churn)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": s, "sigma_hat": s if sigma_hat is None else sigma_hat, "denoised": D})


def check_order(name: str, order: int, max_order: int) -> int:
    if not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"solver {name!r} supports order 1..{max_order}; got {order!r}")
    return order
