"""DPM-Solver-v3 (Zheng et al., arXiv 2310.13268): a multistep predictor-corrector on empirical model
statistics (EMS), written in sigma space.

With ``lambda = -log sigma`` the PF-ODE is ``dx/dlambda = -(x - D) = -sigma eps``. Split
``sigma eps = l x + f`` with a per-dimension ``l(lambda)`` and write ``L = int l``, ``S = int s``:

    x_t = e^{L_s - L_t} x_s - int_{lambda_s}^{lambda_t} e^{L(lambda) - L_t} f(lambda) dlambda.

The change of variable ``g = e^{S_s - S} f - beta``, with
``beta(lambda) = int_{lambda_s}^{lambda} e^{S_s - S(r)} b(r) dr``, makes ``g`` constant wherever
``df/dlambda = s f + b`` holds along trajectories, which is what the EMS ``(s, b)`` are fitted to.
Expanding ``g`` about ``lambda_s`` (``A = (L + S) - (L + S)_s``):

    x_t = e^{L_s - L_t} [x_s - sum_k J_k g^(k) / k! - J_beta],
    J_k = int e^A (lambda - lambda_s)^k dlambda,   J_beta = int e^A beta dlambda.

This is the official code's update (its cumulative ``L, S, B, I, C`` arrays) without its trapezoid
rule: ``l, s, b`` are piecewise linear on the EMS grid, so ``L`` and ``S`` are exact piecewise
quadratics and the remaining integrals use Gauss-Legendre on every grid cell. With ``l = 1`` and
``s = b = 0`` we get ``f = -D`` and exactly DPM-Solver++ (2M in its ``taylor`` form, 3M with the exact
third-order coefficient; the paper's App. A.2 as cited by the official README).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewstep.cache import get_blob, is_blob_ref
from fewstep.diffusion.solvers._core import check_order, ddim_step, emit, gauss_legendre, lam, multistep_order, register

Tensor = torch.Tensor
_GL_NODES = 8
_MAX_WIDTH = 0.5  # longest lambda interval one Gauss-Legendre rule covers; keeps e^A resolved to ~1e-15
_KEYS = ("lambda", "l", "s", "b")


class EMS:
    """Empirical model statistics ``l, s, b`` on a uniform, increasing ``lambda = -log sigma`` grid.

    Args:
        lam: the grid ``[G]``.
        l, s, b: ``[G, D]`` (anything that reshapes to it), where ``D`` is the number of values per
            sample, or 1 for statistics shared by all dimensions.
        meta: free-form string metadata (model hash, sample counts), saved with the arrays.
    """

    def __init__(self, lam: Any, l: Any, s: Any, b: Any, meta: dict[str, str] | None = None):
        grid = torch.as_tensor(lam, dtype=torch.float64).flatten()
        if grid.numel() < 2 or not torch.isfinite(grid).all():
            raise ValueError(f"the EMS lambda grid needs at least 2 finite points; got {grid.numel()}")
        step = grid[1:] - grid[:-1]
        if not (step > 0).all() or float((step - step.mean()).abs().max()) > 1e-6 * float(step.mean()):
            raise ValueError("the EMS lambda grid must be uniform and increasing")
        arrays = {}
        for name, value in (("l", l), ("s", s), ("b", b)):
            v = torch.as_tensor(value, dtype=torch.float64)
            v = v.reshape(grid.numel(), -1) if v.numel() and v.shape[0] == grid.numel() else None
            if v is None:
                raise ValueError(f"EMS {name!r} must have {grid.numel()} rows (one per lambda); got shape "
                                 f"{tuple(torch.as_tensor(value).shape)}")
            if not torch.isfinite(v).all():
                raise ValueError(f"EMS {name!r} contains NaN or Inf")
            arrays[name] = v.contiguous()
        if len({v.shape for v in arrays.values()}) != 1:
            raise ValueError(f"EMS l, s, b must have equal shapes; got {[tuple(v.shape) for v in arrays.values()]}")
        self.lam, self.l, self.s, self.b = grid.contiguous(), arrays["l"], arrays["s"], arrays["b"]
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}
        self.dlam = float(grid[-1] - grid[0]) / (grid.numel() - 1)
        # numpy views for the step coefficients (many tiny arrays), with the exact cumulative integrals
        # of the piecewise-linear l and s at the grid nodes, and a cache of step coefficients
        self._arr = {k: getattr(self, k).numpy() for k in ("lam", "l", "s", "b")}
        for k in ("l", "s"):
            v = self._arr[k]
            self._arr["cum_" + k] = np.concatenate([np.zeros((1, v.shape[1])),
                                                    np.cumsum(0.5 * self.dlam * (v[1:] + v[:-1]), 0)])
        self._has_b = bool(np.any(self._arr["b"] != 0))
        self._cache: dict = {}

    # -- construction and storage ----------------------------------------------------------------

    @classmethod
    def identity(cls, lam_min: float = -30.0, lam_max: float = 30.0) -> EMS:
        """``l = 1, s = b = 0``: DPM-Solver-v3 becomes DPM-Solver++ (the official "degenerated" mode)."""
        ones = torch.ones(2, 1, dtype=torch.float64)
        return cls([lam_min, lam_max], ones, 0 * ones, 0 * ones, meta={"kind": "identity"})

    @property
    def dim(self) -> int:
        return self.l.shape[1]

    @property
    def sigma_range(self) -> tuple[float, float]:
        return math.exp(-float(self.lam[-1])), math.exp(-float(self.lam[0]))

    def save(self, path: str | Path) -> Path:
        """Write the arrays (float64) and metadata as safetensors."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(dict(zip(_KEYS, (self.lam, self.l, self.s, self.b))), str(path), metadata=self.meta)
        return path

    def to_bytes(self) -> bytes:
        """The safetensors bytes of ``save`` (for the content-addressed cache)."""
        from safetensors.torch import save

        return save(dict(zip(_KEYS, (self.lam, self.l, self.s, self.b))), metadata=self.meta)

    @classmethod
    def from_bytes(cls, blob: bytes) -> EMS:
        from safetensors.torch import load

        arrays = load(blob)
        missing = set(_KEYS) - set(arrays)
        if missing:
            raise ValueError(f"not EMS data: it lacks {sorted(missing)}")
        n = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
        return cls(arrays["lambda"], arrays["l"], arrays["s"], arrays["b"], meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> EMS:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"no EMS file at {p}")
        return _load_cached(str(p.resolve()), p.stat().st_mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        """The arrays as nested lists (for small EMS stored inline in a recipe)."""
        return {"lambda": self.lam.tolist(), "l": self.l.tolist(), "s": self.s.tolist(), "b": self.b.tolist()}

    # -- piecewise-linear statistics and their integrals ---------------------------------------------

    def _cell(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid = self._arr["lam"]
        lo, hi = float(grid[0]), float(grid[-1])
        tol = 1e-9 * (1.0 + abs(lo) + abs(hi))
        if q.min() < lo - tol or q.max() > hi + tol:
            s_lo, s_hi = self.sigma_range
            bad = next(v for v in q.tolist() if not lo - tol <= v <= hi + tol)
            raise ValueError(f"sigma {math.exp(-bad):.6g} lies outside the EMS range [{s_lo:.6g}, {s_hi:.6g}]; "
                             "compute EMS over the sampling range (fewstep.diffusion.tune.ems.compute_ems)")
        k = np.clip(np.floor((q - lo) / self.dlam).astype(np.int64), 0, grid.size - 2)
        return k, q - grid[k]

    def value(self, name: str, q: np.ndarray) -> np.ndarray:
        """``l``, ``s`` or ``b`` at the points ``q`` ``[Q]`` -> ``[Q, D]``."""
        v = self._arr[name]
        k, u = self._cell(np.asarray(q, dtype=np.float64))
        return v[k] + (v[k + 1] - v[k]) * (u / self.dlam)[:, None]

    def _LS(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``L`` and ``S`` at ``q``: exact integrals of the piecewise-linear ``l`` and ``s``."""
        a = self._arr
        k, u = self._cell(q)
        return tuple(c[k] + v[k] * u[:, None] + (v[k + 1] - v[k]) * (u * u / (2 * self.dlam))[:, None]
                     for v, c in ((a["l"], a["cum_l"]), (a["s"], a["cum_s"])))

    def _rule(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Legendre nodes and weights ``[P - 1, n]`` on each interval between sorted ``pts``."""
        xg, wg = gauss_legendre(_GL_NODES)
        left, right = pts[:-1, None], pts[1:, None]
        return 0.5 * (right - left) * xg + 0.5 * (right + left), 0.5 * (right - left) * wg

    def _breaks(self, a: float, b: float) -> np.ndarray:
        """``a < b`` split at the grid nodes, with no piece longer than ``_MAX_WIDTH``."""
        grid = self._arr["lam"]
        pts = [a, *grid[(grid > a) & (grid < b)].tolist(), b]
        out = [a]
        for p0, p1 in zip(pts[:-1], pts[1:]):
            m = max(1, math.ceil((p1 - p0) / _MAX_WIDTH))
            out += [p0 + (p1 - p0) * j / m for j in range(1, m + 1)]
        return np.asarray(out)

    def _beta(self, lam_s: float, S_s: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``beta(q) = int_{lambda_s}^{q} e^{S_s - S(r)} b(r) dr`` for the points ``q`` ``[Q]`` -> ``[Q, D]``."""
        lo, hi = min(float(q.min()), lam_s), max(float(q.max()), lam_s)
        if hi == lo or not self._has_b:
            return np.zeros((q.size, self.dim))
        pts = np.unique(np.concatenate([self._breaks(lo, hi), q, [lam_s]]))
        nodes, w = self._rule(pts)
        flat = nodes.reshape(-1)
        integrand = np.exp(S_s - self._LS(flat)[1]) * self.value("b", flat)
        piece = (w.reshape(-1, 1) * integrand).reshape(*w.shape, -1).sum(1)
        F = np.concatenate([np.zeros((1, self.dim)), np.cumsum(piece, 0)])
        return F[np.searchsorted(pts, q)] - F[np.searchsorted(pts, [lam_s])]

    def step(self, lam_s: float, lam_t: float, lam_others: list[float], n: int) -> dict[str, np.ndarray]:
        """The batch-independent coefficients of one step from ``lam_s`` to ``lam_t > lam_s`` (cached).

        Returns ``decay = e^{L_s - L_t}`` ``[D]``, ``J`` ``[n + 1, D]``, ``J_beta`` ``[D]``, and for the
        other points ``eS = e^{S_s - S_j}`` and ``beta`` ``[len(lam_others), D]``.
        """
        key = (lam_s, lam_t, tuple(lam_others), n)
        if key in self._cache:
            return self._cache[key]
        (L_s, L_t), (S_s, _) = self._LS(np.array([lam_s, lam_t]))
        nodes, w = self._rule(self._breaks(lam_s, lam_t))
        q, w = nodes.reshape(-1), w.reshape(-1)
        Lq, Sq = self._LS(q)
        eA = w[:, None] * np.exp(Lq + Sq - (L_s + S_s))
        P = (q - lam_s)[:, None]
        out = {"decay": np.exp(L_s - L_t), "J": np.stack([(eA * P**k).sum(0) for k in range(n + 1)]),
               "J_beta": (eA * self._beta(lam_s, S_s, q)).sum(0)}
        if lam_others:
            o = np.asarray(lam_others, dtype=np.float64)
            out["eS"] = np.exp(S_s - self._LS(o)[1])
            out["beta"] = self._beta(lam_s, S_s, o)
        if len(self._cache) >= 256:
            self._cache.clear()
        self._cache[key] = out
        return out


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> EMS:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        missing = set(_KEYS) - set(fh.keys())
        if missing:
            raise ValueError(f"{path} is not an EMS file: it lacks {sorted(missing)}")
        arrays = {k: fh.get_tensor(k) for k in _KEYS}
        meta = fh.metadata() or {}
    return EMS(arrays["lambda"], arrays["l"], arrays["s"], arrays["b"], meta=meta)


def as_ems(ems: EMS | str | Path | dict | None) -> EMS:
    """An ``EMS`` from itself, a safetensors path, a dict of lists (``to_dict``), or ``None`` (identity)."""
    if ems is None:
        return _IDENTITY
    if isinstance(ems, EMS):
        return ems
    if is_blob_ref(ems):  # what recipes store: content-addressed statistics in fewstep's cache
        return EMS.from_bytes(get_blob("ems", ems, rebuild="rerun the `fewstep tune --method ems` that made the "
                                                             "recipe, or give ems= a file or inline statistics"))
    if isinstance(ems, (str, Path)):
        return EMS.load(ems)
    if isinstance(ems, dict):
        if set(ems) != set(_KEYS):
            raise ValueError(f"an inline EMS needs exactly the keys {list(_KEYS)}; got {sorted(ems)}")
        return EMS(ems["lambda"], ems["l"], ems["s"], ems["b"])
    raise TypeError(f"ems must be an EMS, a path to a .safetensors file, a dict or None; got {type(ems).__name__}")


_IDENTITY = EMS.identity()


def _taylor_weights(lams: list[float], n: int, pseudo: bool) -> np.ndarray:
    """``M`` with ``g^(k) / k! = sum_j M[k-1, j] g_j`` (k = 1..n) from values at ``lams`` (anchor first):
    the derivatives of the interpolating polynomial at the anchor (a Vandermonde solve), or with
    ``pseudo`` the divided differences ``g[lambda_0..lambda_k]`` (the paper's pseudo-order)."""
    t = np.asarray(lams[: n + 1], dtype=np.float64)
    M = np.zeros((n, n + 1))
    if pseudo:
        for k in range(1, n + 1):
            for j in range(k + 1):
                M[k - 1, j] = 1.0 / np.prod([t[j] - t[m] for m in range(k + 1) if m != j])
        return M
    Rinv = np.linalg.inv(np.array([[(tj - t[0]) ** k for k in range(1, n + 1)] for tj in t[1:]]))
    M[:, 1:] = Rinv
    M[:, 0] = -Rinv.sum(1)
    return M


def _update(stats: EMS, view, x_s: Tensor, lam_t: float, pts: list[tuple[float, Tensor]], order: int,
            pseudo: bool) -> Tensor:
    """One v3 step of ``order`` from ``x_s`` at the anchor ``pts[0] = (lambda_s, f_s)`` to ``lam_t``."""
    n = order - 1
    lam_s = pts[0][0]
    others = pts[1:n + 1]
    c = stats.step(lam_s, lam_t, [p[0] for p in others], n)
    g = [pts[0][1]] + [view(c["eS"][j]) * f - view(c["beta"][j]) for j, (_, f) in enumerate(others)]
    acc = x_s - view(c["J"][0]) * g[0] - view(c["J_beta"])
    if n:
        M = _taylor_weights([lam_s] + [p[0] for p in others], n, pseudo)
        for k in range(1, n + 1):
            acc = acc - view(c["J"][k]) * sum(float(M[k - 1, j]) * gj for j, gj in enumerate(g))
    return view(c["decay"]) * acc


def _broadcaster(stats: EMS, x: Tensor):
    per_sample = math.prod(x.shape[1:])
    if stats.dim not in (1, per_sample):
        raise ValueError(f"the EMS have {stats.dim} values per lambda, but a sample has {per_sample}; "
                         "compute them for this model (or pool them to 1)")
    shape = (1,) * (x.ndim - 1) if stats.dim == 1 else tuple(x.shape[1:])
    return lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(shape)


@register("dpm_solver_v3", order=3,
          paper="Zheng et al., DPM-Solver-v3, arXiv 2310.13268",
          notes="needs EMS from fewstep.diffusion.tune.ems (ems=None is DPM-Solver++); the corrector is free")
def dpm_solver_v3(D, x, sigmas, *, callback=None, ems=None, order: int = 3, predictor_pseudo: bool = False,
                  corrector: bool = True, corrector_pseudo: bool = False, lower_order_final: bool = True):
    """DPM-Solver-v3, multistep, orders 1-3, with the official predictor-corrector schedule.

    At each new point the corrector (if on) redoes the last step with the fresh evaluation, at the
    order of that step's predictor (plus one with ``corrector_pseudo``, which then uses divided
    differences), and keeps ``f = sigma eps - l x`` of the fresh evaluation, so it costs no NFE.
    ``predictor_pseudo`` estimates the predictor's derivatives by divided differences (the paper's
    pseudo-order, meant for about 5 NFE). The step to sigma = 0 is ``x = D``.

    Args:
        ems: an ``EMS``, a path to its safetensors file, a cache reference ``"sha256:<hex>"`` (what recipes
            store), an inline dict, or ``None`` (``l = 1, s = b = 0``).
    """
    check_order("dpm_solver_v3", order, 3)
    stats = as_ems(ems)
    view = _broadcaster(stats, x)
    n = len(sigmas) - 1
    hist: list[tuple[float, Tensor]] = []  # (lambda, f) of earlier points, newest last
    x_prev, p_prev = x, 0
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        lam_s = lam(s)
        one_minus_l = 1 - view(stats.value("l", np.array([lam_s]))[0])
        f = one_minus_l * x - d  # sigma eps - l x, with sigma eps = x - D
        c = p_prev + int(corrector_pseudo)
        if corrector and i > 0 and c > 1:
            pts = [hist[-1], (lam_s, f)] + hist[-2::-1]
            x = _update(stats, view, x_prev, lam_s, pts, c, corrector_pseudo)
            d = one_minus_l * x - f  # the cached model output follows the corrected state
        emit(callback, i, x, s, d)
        p = multistep_order(order, i, n, s_next, lower_order_final)
        if s_next == 0:
            x_next = ddim_step(x, s, s_next, d)
        else:
            x_next = _update(stats, view, x, lam(s_next), [(lam_s, f)] + hist[::-1], p, predictor_pseudo)
        hist = (hist + [(lam_s, f)])[-3:]
        x_prev, p_prev, x = x, p, x_next
    return x
