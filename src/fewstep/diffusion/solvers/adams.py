"""Adams-Bashforth-type noise-form solvers: DEIS (tAB), iPNDM and its variable-step version."""

from __future__ import annotations

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


@register("deis", order=3, paper="Zhang & Chen, DEIS, arXiv 2204.13902 (tAB)",
          notes="order = number of eps values used; the polynomial is in linear-beta VP time")
def deis(D, x, sigmas, *, callback=None, order: int = 3, lower_order_final: bool = True):
    """tAB: ``C_ij = int_{s_i}^{s_i+1} l_j(t(s)) ds``, with ``l_j`` the Lagrange basis on past VP times."""
    check_order("deis", order, 3)

    def weights(past, s, s_next):
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
