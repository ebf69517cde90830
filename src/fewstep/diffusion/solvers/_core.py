"""The shared exponential-integrator core and the solver registry (docs/math.md, "Solvers as exponential
integrators").

Conventions: ``x = x0 + sigma eps``, ``lambda = -log sigma``, a step from ``s`` to ``t`` has
``h = lambda_t - lambda_s > 0``. The exact data-form solution is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda D(lambda) dlambda,

and a Taylor term ``D^(k) (lambda - lambda_s)^k / k!`` contributes ``h^(k+1) phi_{k+1}(-h) D^(k)``.
One engine computes every solver's weights: ``exp_moments`` (the kernel's moments, in closed form through
``phi``) and ``exp_weights`` (the weights of the values at a solver's nodes, the moments solved against
them). Each solver supplies only its nodes and coefficients.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import numpy as np
import torch

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# the exponential-integrator engine: phi-functions, kernel moments, weights
# ----------------------------------------------------------------------------------------------

Form = Literal["data", "noise"]


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
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on ``[-1, 1]`` (cached)."""
    if n not in _GL_CACHE:
        _GL_CACHE[n] = np.polynomial.legendre.leggauss(n)
    return _GL_CACHE[n]


def quad(f: Callable[[np.ndarray], np.ndarray], a: float, b: float, n: int = 16) -> np.ndarray:
    """``int_a^b f(u) du`` by ``n``-point Gauss-Legendre; ``f`` maps the nodes ``[n]`` to values ``[n, ...]``."""
    xg, wg = gauss_legendre(n)
    return 0.5 * (b - a) * np.tensordot(wg, f(0.5 * (b - a) * xg + 0.5 * (b + a)), axes=1)


def exp_moments(n: int, h: float, c: float = 1.0, *, form: Form = "data", scale: float = 1.0) -> np.ndarray:
    """The kernel moments ``m_k = int_0^h K(v) (v / scale)^k dv``, ``k < n``, of the exact step (docs/math.md):

    - ``form="data"``: ``K = c e^{-c (h - v)}``, ``m_k = c k! h^(k+1) phi_{k+1}(-c h) / scale^k``. At
      ``h = inf`` only ``m_0 = 1`` is finite (the others are ``inf``).
    - ``form="noise"``: ``K = c e^{-c v}``, ``m_k = k! P(k+1, c h) / (c scale)^k``, with the regularised
      incomplete gamma function ``P(k+1, x) = x^(k+1) e^-x phi_{k+1}(x) = 1 - e^-x sum_{j<=k} x^j / j!``:
      the first form for ``x <= k + 1`` (where the second cancels), the second above, where it is exact
      and stays finite up to ``h = inf`` (``m_k = k! / (c scale)^k``).

    ``phi`` is a Taylor series for ``|c h| < 1``, so the moments keep full relative accuracy as ``h -> 0``.
    """
    _check_form(form)
    x = c * h
    m = np.empty(n)
    for k in range(n):
        if form == "data":
            m[k] = (1.0 if k == 0 else math.inf) if math.isinf(x) else \
                c * math.factorial(k) * h ** (k + 1) * phi(k + 1, -x) / scale**k
        else:
            if math.isinf(x):
                p = 1.0
            elif x > k + 1:
                p = 1.0 - math.exp(-x) * sum(x**j / math.factorial(j) for j in range(k + 1))
            else:
                p = x ** (k + 1) * math.exp(-x) * phi(k + 1, x)
            m[k] = math.factorial(k) * p / (c * scale) ** k
    return m


def _check_form(form: str) -> None:
    if form not in ("data", "noise"):
        raise ValueError(f"form must be 'data' or 'noise'; got {form!r}")


def exp_weights(nodes: Sequence[float], h: float, c: float = 1.0, *, form: Form = "data",
                var: Callable[[np.ndarray], np.ndarray] | None = None, n_quad: int = 16) -> np.ndarray:
    """The exponential-integrator weights: ``w`` with ``sum_j w_j P(u_j) = int_0^h K(v) P(u(v)) dv`` for every
    polynomial ``P`` of degree ``< len(nodes)``, with ``K`` the kernel of ``form`` (``exp_moments``).

    ``nodes`` are the points ``u_j`` where the solver has model values. By default the polynomial is in
    ``v = lambda - lambda_s`` (``u = v``; past points ``v_j < 0``, a corrector's new point ``v = h``), and the
    weights solve ``sum_j w_j v_j^k = m_k`` with the closed-form moments: the data-form step is
    ``x' = e^{-c h} x + sum_j w_j D_j``, the noise-form one ``x' = x - sigma_s sum_j w_j eps_j`` (``c = 1``).
    ``var(v)``, when given, is another polynomial variable (DEIS's VP time, sigma): the moments of
    ``u(v)`` are then ``n_quad``-point Gauss-Legendre sums in ``y = e^{-c (h - v)}`` (data) or ``e^{-c v}``
    (noise), the variables in which the kernel is uniform. A data-form step with ``h = inf`` has the one
    weight 1 (``x' = D``); more nodes raise ``ValueError`` there, since the higher moments are infinite.
    """
    u = np.asarray(nodes, dtype=np.float64)
    n = u.size
    if u.ndim != 1 or n == 0:
        raise ValueError(f"exp_weights needs a non-empty list of nodes; got {nodes!r}")
    _check_form(form)
    if form == "data" and math.isinf(c * h) and n > 1:
        raise ValueError(f"a data-form step to sigma = 0 (h = inf) has one node (x' = D); got {n} nodes")
    if var is None:  # moments about v = 0, nodes scaled to O(1) for a well-conditioned solve at any h
        shift, scale = 0.0, float(np.abs(u).max()) or 1.0
        m = exp_moments(n, h, c, form=form, scale=scale)
    else:
        shift = u[0]
        scale = float(np.abs(u - shift).max()) or 1.0

        def powers(y):
            v = h + np.log(y) / c if form == "data" else -np.log(y) / c
            return ((var(v) - shift) / scale)[:, None] ** np.arange(n)

        m = quad(powers, math.exp(-c * h), 1.0, n_quad)
    if n == 1:
        return m
    return np.linalg.solve(((u - shift) / scale)[None, :] ** np.arange(n)[:, None], m)


def lagrange_integrals(nodes: Sequence[float], a: float, b: float,
                       to_var: Callable[[np.ndarray], np.ndarray] | None = None, n_quad: int = 16) -> np.ndarray:
    """``w_j = int_a^b l_j(u(sigma)) dsigma`` for the Lagrange basis ``l_j`` on ``nodes`` in the variable
    ``u = to_var(sigma)`` (``sigma`` itself by default, integrated exactly): ``exp_weights`` in noise form,
    whose kernel is uniform in ``sigma``, for a step from ``a`` down to ``b`` (``x' = x + sum_j w_j eps_j``)."""
    u = (lambda sigma: sigma) if to_var is None else to_var
    return -a * exp_weights(nodes, lam(b) - lam(a), form="noise", var=lambda v: u(a * np.exp(-v)), n_quad=n_quad)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

class SolverKind(str, Enum):
    """How a solver uses its evaluations: one per step reusing earlier ones (multistep), several per step
    (singlestep), or a correction: a sampler that changes the trajectory on purpose (e.g. by the state itself),
    so it does not converge to the ODE solution and has no order."""

    MULTISTEP = "multistep"
    SINGLESTEP = "singlestep"
    CORRECTION = "correction"


@dataclass(frozen=True)
class SolverInfo:
    """Registry entry: the solver function and what it promises.

    ``order`` is the convergence order measured on a Karras grid with default options (``None`` for a
    correction, which does not converge to the ODE solution);
    ``evals_per_step`` the model calls of a full step; ``final_evals`` those of a final step to
    sigma = 0 (a singlestep or Heun step ends with one Euler evaluation there). A solver whose cost
    is not a per-step count (Restart) gives ``cost(n_steps, final_zero, options) -> int`` instead,
    which raises ``ValueError`` for a number of steps it cannot take.
    """

    name: str
    fn: Callable[..., Tensor]
    order: int | None
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


def register(name: str, *, order: int | None, paper: str, kind: SolverKind | str = SolverKind.MULTISTEP,
             evals_per_step: int = 1, final_evals: int | None = None, stochastic: bool = False, notes: str = "",
             fn: Callable | None = None, cost: Callable | None = None):
    """Decorator (or call with ``fn=``) adding a solver to the registry; its options come from its signature."""

    def deco(f):
        if (order is None) != (SolverKind(kind) is SolverKind.CORRECTION):
            raise ValueError(f"solver {name!r}: a correction has order None, every other solver an order")
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


def check_nonnegative(name: str, **values: float) -> None:
    bad = {k: v for k, v in values.items() if not (isinstance(v, (int, float)) and v >= 0)}
    if bad:
        raise ValueError(f"solver {name!r} needs {', '.join(values)} >= 0; got "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


def check_choice(name: str, option: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"solver {name!r}: {option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
