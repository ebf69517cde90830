"""DC-Solver (Zhao et al., arXiv 2409.03755): dynamic compensation of multistep solvers, fitted per step,
and the cascade polynomial regression (CPR) that predicts the ratios for unseen NFE or guidance
scales. The ratios and CPR coefficients are fitted by ``fewstep.diffusion.tune.dc``.

Before each step from grid point ``i >= 2``, the newest model output ``D_i`` is replaced by the
Lagrange interpolant of the last three outputs ``(D_{i-2}, D_{i-1}, D_i)``, evaluated at
``lambda* = rho_i lambda_i + (1 - rho_i) lambda_{i-1}``; the replaced value also enters the history of
later steps, as in the official code. ``rho = 1`` leaves the solver unchanged. For UniPC the
output at ``i`` was evaluated at the predictor point while the state is the corrected one;
compensation absorbs that misalignment. fewstep interpolates in ``lambda = -log sigma`` (the official
code uses the model's own time ``t``; with a fitted ``rho`` the two differ only in the meaning of rho).

The solvers wrap the evaluator the driver passes, so ``unipc`` and ``dpmpp_2m`` run unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fewstep.diffusion.solvers._core import lam, register
from fewstep.diffusion.solvers.adams import ipndm
from fewstep.diffusion.solvers.dpm import dpmpp_2m
from fewstep.diffusion.solvers.unipc import unipc

__all__ = ["cpr_features", "cpr_ratios", "unipc_dc", "dpmpp_2m_dc", "ipndm_dc"]

BASES = {"unipc_dc": "unipc", "dpmpp_2m_dc": "dpmpp_2m", "ipndm_dc": "ipndm"}
_PAPER = "Zhao et al., DC-Solver, arXiv 2409.03755"


class _Compensated:
    """The evaluator a DC solver sees: outputs at grid points ``i >= 2`` are compensated."""

    def __init__(self, D, sigmas: Sequence[float], ratios: list[float]):
        self.D, self.ratios = D, ratios
        self.index = {float(s): i for i, s in enumerate(sigmas)}
        self.hist: list[tuple[float, Any]] = []  # (lambda, output) of the two previous points

    def __call__(self, x, sigma):
        out = self.D(x, sigma)
        i, lam_i = self.index.get(float(sigma)), lam(sigma)
        if i is not None and i >= 2 and len(self.hist) == 2 and self.ratios[i] != 1.0:
            rho = self.ratios[i]
            nodes = [self.hist[0][0], self.hist[1][0], lam_i]
            star = rho * lam_i + (1 - rho) * nodes[1]
            w = [math.prod((star - nodes[m]) / (nodes[j] - nodes[m]) for m in range(3) if m != j) for j in range(3)]
            out = w[0] * self.hist[0][1] + w[1] * self.hist[1][1] + w[2] * out
        self.hist = (self.hist + [(lam_i, out)])[-2:]
        return out


def _ratios(sigmas, dc_ratios, cpr, guidance_scale) -> list[float]:
    n = len(sigmas) - 1
    if dc_ratios is not None and cpr is not None:
        raise ValueError("give dc_ratios or cpr, not both")
    if cpr is not None:
        return cpr_ratios(cpr, n, guidance_scale)
    if dc_ratios is None:
        return [1.0] * n
    r = [float(v) for v in dc_ratios]
    if len(r) != n or not all(math.isfinite(v) for v in r):
        raise ValueError(f"dc_ratios needs {n} finite values (one per step of this grid); got {list(dc_ratios)!r}")
    if any(v != 1.0 for v in r[:2]):
        raise ValueError(f"compensation needs three outputs, so dc_ratios[0] and dc_ratios[1] must be 1; got {r[:2]}")
    return r


@register("unipc_dc", order=3,
          paper=f"{_PAPER}, on UniPC (arXiv 2302.04867)",
          notes="fitted by fewstep.diffusion.tune.dc; without them it is unipc")
def unipc_dc(D, x, sigmas, *, callback=None, order: int = 2, variant: str = "bh2", corrector: bool = True,
             lower_order_final: bool = True, dc_ratios=None, cpr=None, guidance_scale: float = 1.0):
    """UniPC with dynamic compensation: ``dc_ratios`` (one per step) or ``cpr`` coefficients, which
    predict them from the number of steps and ``guidance_scale``."""
    comp = _Compensated(D, sigmas, _ratios(sigmas, dc_ratios, cpr, guidance_scale))
    return unipc(comp, x, sigmas, callback=callback, order=order, variant=variant, corrector=corrector,
                 lower_order_final=lower_order_final)


@register("dpmpp_2m_dc", order=2,
          paper=f"{_PAPER}, as a plug-in for DPM-Solver++(2M) (arXiv 2211.01095)",
          notes="fitted by fewstep.diffusion.tune.dc; without them it is dpmpp_2m")
def dpmpp_2m_dc(D, x, sigmas, *, callback=None, lower_order_final: bool = True, solver_type: str = "midpoint",
                dc_ratios=None, cpr=None, guidance_scale: float = 1.0):
    """DPM-Solver++(2M) with dynamic compensation (a predictor-only solver)."""
    comp = _Compensated(D, sigmas, _ratios(sigmas, dc_ratios, cpr, guidance_scale))
    return dpmpp_2m(comp, x, sigmas, callback=callback, lower_order_final=lower_order_final, solver_type=solver_type)


@register("ipndm_dc", order=2, paper=f"{_PAPER}, as a plug-in for iPNDM (arXiv 2204.13902)",
          notes="fitted by fewstep.diffusion.tune.dc; without them it is ipndm")
def ipndm_dc(D, x, sigmas, *, callback=None, order: int = 4, dc_ratios=None, cpr=None, guidance_scale: float = 1.0):
    """iPNDM with dynamic compensation (a predictor-only solver)."""
    comp = _Compensated(D, sigmas, _ratios(sigmas, dc_ratios, cpr, guidance_scale))
    return ipndm(comp, x, sigmas, callback=callback, order=order)


# ----------------------------------------------------------------------------------------------
# cascade polynomial regression
# ----------------------------------------------------------------------------------------------

def cpr_features(i: int, n_steps: int, guidance: float) -> np.ndarray:
    """CPR terms ``u^a g^b v^c`` (a, b, c in 0..2): ``u = (i + 1) / N``, ``g = cfg / 12``, ``v = N / 50``."""
    u, g, v = (i + 1) / n_steps, guidance / 12.0, n_steps / 50.0
    return np.array([u**a * g**b * v**c for a in range(3) for b in range(3) for c in range(3)])


def cpr_ratios(coefficients: Sequence[float], n_steps: int, guidance_scale: float = 1.0) -> list[float]:
    """The ratios CPR predicts for ``n_steps`` steps at ``guidance_scale`` (1 for the first two steps)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape != (27,) or not np.isfinite(c).all():
        raise ValueError(f"cpr needs 27 finite coefficients (from fit_cpr); got {len(c.reshape(-1))}")
    return [1.0 if i < 2 else float(cpr_features(i, n_steps, guidance_scale) @ c) for i in range(n_steps)]
