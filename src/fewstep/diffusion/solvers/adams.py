"""Adams-Bashforth-type noise-form solvers: DEIS (tAB), iPNDM and its variable-step version."""

from __future__ import annotations

import math

import numpy as np

from fewstep.diffusion.solvers._core import check_order, emit, lagrange_integrals, multistep_order, register

# Fixed Adams-Bashforth coefficients for equal steps (iPNDM, Zhang & Chen 2022, Sec. 5).
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def vp_time(sigma: np.ndarray, beta_min: float = 0.1, beta_max: float = 20.0) -> np.ndarray:
    """Time of the linear-beta VP SDE at which ``sigma(t) = sigma`` (DEIS's polynomial variable)."""
    L = np.log1p(np.asarray(sigma, dtype=np.float64) ** 2)
    db = beta_max - beta_min
    return 2 * L / (beta_min + np.sqrt(beta_min**2 + 2 * db * L))


def _adams(D, x, sigmas, callback, order, lower_order_final, weights_fn):
    """Shared loop: ``x' = x + sum_j w_j eps_{i-j}`` with weights from ``weights_fn(past sigmas, s, s')``."""
    n = len(sigmas) - 1
    eps_hist: list = []
    sig_hist: list[float] = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        eps_hist = ([(x - d) / s] + eps_hist)[:order]
        sig_hist = ([s] + sig_hist)[:order]
        p = multistep_order(order, i, n, s_next, lower_order_final, zero_first_order=False)
        w = weights_fn(sig_hist[:p], s, s_next)
        x = x + sum(float(wj) * e for wj, e in zip(w, eps_hist[:p]))
    return x


def log_sigma_weights(past, s: float, s_next: float) -> np.ndarray:
    """``w_j = int_s^{s'} l_j(log sigma) dsigma`` for the Lagrange basis ``l_j`` on the past ``log sigma``, in
    closed form, also for ``s' = 0``.

    With ``u = log sigma - log s`` (scaled by ``c``, the largest ``|u_j|``), the moments
    ``M_k = int_s^{s'} (u / c)^k dsigma`` follow from the antiderivative
    ``F_k(sigma) = sigma sum_{i<=k} (-1)^(k-i) k!/i! u^i``, which vanishes at ``sigma = 0``; the weights solve
    the Vandermonde system ``sum_j w_j (u_j / c)^k = M_k``. This is diffusers' ``DEISMultistepScheduler``
    (``solver_type="logrho"``), whose antiderivatives are the same integrals written per order.
    """
    sig = np.asarray(past, dtype=np.float64)
    u = np.log(sig / s)
    n = u.size
    c = float(np.abs(u).max()) or 1.0

    def antiderivative(sigma: float) -> np.ndarray:
        if sigma == 0:
            return np.zeros(n)
        v = math.log(sigma / s) / c
        return np.array([sigma * sum((-1) ** (k - i) * math.factorial(k) / math.factorial(i) * v**i / c ** (k - i)
                                     for i in range(k + 1)) for k in range(n)])

    m = antiderivative(s_next) - antiderivative(s)
    if n == 1:
        return m
    return np.linalg.solve((u / c)[None, :] ** np.arange(n)[:, None], m)


DEIS_VARIABLES = ("vp_time", "log_sigma")


@register("deis", order=3, paper="Zhang & Chen, DEIS, arXiv 2204.13902 (tAB; the log-sigma basis is diffusers' logrho)",
          notes="order = number of eps values used; the polynomial is in linear-beta VP time (variable='vp_time') "
                "or in log sigma (variable='log_sigma', diffusers' DEISMultistepScheduler)")
def deis(D, x, sigmas, *, callback=None, order: int = 3, lower_order_final: bool = True, variable: str = "vp_time"):
    """Adams in sigma on eps: ``C_ij = int_{s_i}^{s_i+1} l_j(u(s)) ds``, with ``l_j`` the Lagrange basis on the past
    values of ``u``: the linear-beta VP time (tAB, the paper's choice) or ``log sigma`` (diffusers' ``logrho``)."""
    check_order("deis", order, 3)
    if variable not in DEIS_VARIABLES:
        raise ValueError(f"deis variable must be one of {', '.join(map(repr, DEIS_VARIABLES))}; got {variable!r}")

    def weights(past, s, s_next):
        if variable == "log_sigma":
            return log_sigma_weights(past, s, s_next)
        return lagrange_integrals(vp_time(np.array(past)), s, s_next, to_var=vp_time, n_quad=24)

    return _adams(D, x, sigmas, callback, order, lower_order_final, weights)


@register("ipndm", order=2,
          paper="Zhang & Chen, DEIS, arXiv 2204.13902 (iPNDM); EDM-form as in Zhou et al., arXiv 2312.00094",
          notes="fixed equal-step coefficients: on a Karras grid orders >= 2 converge at order 2 only")
def ipndm(D, x, sigmas, *, callback=None, order: int = 4):
    """``x' = x + (s' - s) sum_j c_j eps_{i-j}`` with the fixed Adams-Bashforth ``c`` of order ``min(order, i+1)``.

    The coefficients assume equal steps. On a smoothly varying grid (Karras) the mismatch adds a
    local error ``O(h^3)``, so the measured order is 2 for every ``order >= 2``.
    """
    check_order("ipndm", order, 4)
    return _adams(D, x, sigmas, callback, order, False,
                  lambda past, s, s_next: [(s_next - s) * c for c in _AB[len(past)]])


@register("ipndm_v", order=4, paper="Zhang & Chen, DEIS, arXiv 2204.13902 (iPNDM with variable steps, rhoAB)",
          notes="exact Lagrange integrals in sigma, so the order holds on any grid")
def ipndm_v(D, x, sigmas, *, callback=None, order: int = 4, lower_order_final: bool = False):
    """Variable-step Adams-Bashforth in sigma: ``w_j = int_{s_i}^{s_i+1} l_j(s) ds`` on past sigmas."""
    check_order("ipndm_v", order, 4)
    return _adams(D, x, sigmas, callback, order, lower_order_final,
                  lambda past, s, s_next: lagrange_integrals(past, s, s_next, n_quad=4))
