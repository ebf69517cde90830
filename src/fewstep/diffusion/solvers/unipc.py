"""UniPC: the unified predictor (UniP) and the corrector (UniC) that reuses the next evaluation."""

from __future__ import annotations

import math

import numpy as np

from fewstep.diffusion.solvers._core import check_order, ddim_step, emit, exp_weights, lam, multistep_order, register


def unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[float, np.ndarray, np.ndarray]:
    """``B(h)``, the predictor weights ``a`` and the corrector weights ``c`` (Zhao et al., Sec. 3).

    ``rks`` are ``r_m = (lambda_m - lambda_s) / h`` of the past points followed by ``1``. The paper's
    conditions ``sum_m c_m r_m^(k-1) = -h phi_{k+1}(-h) k! / B(h)`` (``k = 1..p``) say that ``-B c_m / r_m``
    is the weight ``w_m`` of ``D_m`` in the exact data-form step through ``D_s`` and the ``D_m``, so
    ``c_m = -w_m r_m / B`` with ``w = exp_weights`` (the predictor: the same without the new point ``r = 1``).
    As in the official code, order-2 prediction and order-1 correction use the weight 1/2.
    """
    B = -h if variant == "bh1" else math.expm1(-h)
    r = np.asarray(rks, dtype=np.float64)
    nodes = np.concatenate([[0.0], r * h])
    c = np.array([0.5]) if r.size == 1 else -exp_weights(nodes, h)[1:] * r / B
    if r.size <= 2:
        a = np.array([0.5])[: r.size - 1]
    else:
        a = -exp_weights(nodes[:-1], h)[1:] * r[:-1] / B
    return B, a, c


@register("unipc", order=3,
          paper="Zhao et al., UniPC, arXiv 2302.04867 (UniP-p predictor, UniC-p corrector, data prediction)",
          notes="UniP-p with UniC reaches order p+1; the corrector reuses the next step's evaluation")
def unipc(D, x, sigmas, *, callback=None, order: int = 2, variant: str = "bh2", corrector: bool = True,
          lower_order_final: bool = True):
    """UniPC in data-prediction form (sigma space), orders 1-3, variants ``bh1`` / ``bh2``.

    Predictor: ``x~ = x_bar - B(h) sum_m a_m dD_m`` with ``x_bar = (s'/s) x - expm1(-h) D_s`` and
    ``dD_m = (D_m - D_s) / r_m``. Corrector: ``x^c = x_bar - B(h) [sum_m c_m dD_m + c_p (D(x~, s') - D_s)]``.
    The state becomes ``x^c`` while ``D(x~, s')`` is reused as the next step's model value. The last
    step has no corrector, so ``N`` steps cost ``N`` evaluations. The default variant is ``bh2``:
    ``bh1`` with the official fixed order-2 weight 1/2 extrapolates by ``h/2`` and degrades on the
    large first steps of a Karras grid (measured in docs/benchmarks.md).
    """
    check_order("unipc", order, 3)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2'; got {variant!r}")
    n = len(sigmas) - 1
    d = D(x, sigmas[0])
    lams: list[float] = []  # lambdas and model values of the two earlier points, newest first
    ds: list = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        emit(callback, i, x, s, d)
        p = multistep_order(order, i, n, s_next, lower_order_final, final_threshold=None)
        last = i == n - 1
        if s_next == 0:
            x, d_next = ddim_step(x, s, s_next, d), None
        else:
            h = lam(s_next) - lam(s)
            rks = [(lm - lam(s)) / h for lm in lams[: p - 1]] + [1.0]
            B, a, c = unipc_coefficients(rks, h, variant)
            dDs = [(dm - d) / r for dm, r in zip(ds[: p - 1], rks)]
            x_bar = ddim_step(x, s, s_next, d)
            x_pred = x_bar - B * sum(am * dm for am, dm in zip(a, dDs)) if p > 1 else x_bar
            d_next = None if last else D(x_pred, s_next)
            if corrector and d_next is not None:
                corr = sum(cm * dm for cm, dm in zip(c[:-1], dDs)) + c[-1] * (d_next - d)
                x = x_bar - B * corr
            else:
                x = x_pred
        lams, ds = ([lam(s)] + lams)[:2], ([d] + ds)[:2]
        d = d_next
    return x
