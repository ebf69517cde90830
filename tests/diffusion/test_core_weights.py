"""The exponential-integrator engine (``solvers._core.exp_moments`` / ``exp_weights``), proved with math:
its weights integrate every polynomial through the nodes exactly (against independent quadrature), keep
full accuracy as ``h -> 0`` and at ``h = inf`` (against exact series in ``decimal``), reproduce the formulas
the solvers used before they shared it, and the solvers built on one step function agree exactly."""

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P

from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import karras
from fewstep.diffusion.solvers._core import exp_moments, exp_weights, lagrange_integrals, phi
from fewstep.diffusion.solvers.adams import vp_time
from fewstep.diffusion.solvers.dpm import dpmpp_2m_step, dpmpp_3m_step
from fewstep.diffusion.solvers.unipc import unipc_coefficients
from fewstep.models.exact import Gauss

HS = [1e-6, 0.3, 5.0, 50.0, math.inf]
KERNELS = [("data", 1.0), ("data", 1.7), ("noise", 1.0), ("noise", 1.7)]


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------

def quadrature_moments(n: int, h: float, c: float, form: str) -> np.ndarray:
    """``int_0^h K(v) v^k dv`` by composite 20-point Gauss-Legendre (pieces no longer than ``1/c``), or by
    40-point Gauss-Laguerre at ``h = inf`` (noise form; exact for these polynomials)."""
    if math.isinf(h):
        u, w = np.polynomial.laguerre.laggauss(40)
        return np.array([np.dot(w, (u / c) ** k) for k in range(n)])
    xg, wg = np.polynomial.legendre.leggauss(20)
    edges = np.linspace(0.0, h, max(1, math.ceil(c * h)) + 1)
    m = np.zeros(n)
    for a, b in zip(edges[:-1], edges[1:]):
        v = 0.5 * (b - a) * xg + 0.5 * (b + a)
        kernel = c * np.exp(-c * (h - v)) if form == "data" else c * np.exp(-c * v)
        m += [0.5 * (b - a) * np.dot(wg, kernel * v**k) for k in range(n)]
    return m


def exact_moments(n: int, h: float, c: float, form: str) -> list[Decimal]:
    """The moments from their series in 120-digit decimal arithmetic (no cancellation survives at that
    precision): data ``c k! h^(k+1) sum_j (-c h)^j / (j+k+1)!``, noise ``k!/c^k e^-x sum_{j>k} x^j / j!``."""
    with localcontext() as ctx:
        ctx.prec = 120
        hd, cd = Decimal(h), Decimal(c)
        x = cd * hd
        out = []
        for k in range(n):
            total, j = Decimal(0), 0
            if form == "data":
                while True:
                    term = (-x) ** j / math.factorial(j + k + 1)
                    total += term
                    if j > 10 and abs(term) < Decimal(10) ** -100 * abs(total):
                        break
                    j += 1
                out.append(cd * math.factorial(k) * hd ** (k + 1) * total)
            else:
                j = k + 1
                while True:
                    term = x**j / math.factorial(j)
                    total += term
                    if j > x + 10 and term < Decimal(10) ** -100 * total:
                        break
                    j += 1
                out.append(math.factorial(k) / cd**k * (-x).exp() * total)
        return out


def exact_weights(nodes, moments) -> list[Fraction]:
    """``sum_j w_j v_j^k = m_k`` solved in exact rational arithmetic."""
    n = len(nodes)
    A = [[Fraction(v) ** k for v in nodes] + [Fraction(moments[k])] for k in range(n)]
    for col in range(n):
        piv = next(r for r in range(col, n) if A[r][col] != 0)
        A[col], A[piv] = A[piv], A[col]
        for r in range(n):
            if r != col and A[r][col] != 0:
                f = A[r][col] / A[col][col]
                A[r] = [a - f * b for a, b in zip(A[r], A[col])]
    return [A[j][n] / A[j][j] for j in range(n)]


def node_sets(h: float) -> list[list[float]]:
    """Multistep nodes (past points, unequal steps), and, for a finite ``h``, nodes scaled with the step
    and a corrector's set (the new point ``v = h`` first)."""
    sets = [[0.0], [0.0, -0.7], [0.0, -0.7, -1.5], [0.0, -0.7, -1.5, -2.6]]
    if math.isfinite(h):
        sets += [[0.0, -0.8 * h, -1.7 * h], [h, 0.0, -0.9 * h], [h, 0.0, -1.1 * h, -2.0 * h]]
    return sets


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form,c", KERNELS)
@pytest.mark.parametrize("h", HS)
def test_weights_integrate_polynomials_through_the_nodes_exactly(form, c, h):
    rng = np.random.default_rng(0)
    for nodes in node_sets(h):
        n = len(nodes)
        if form == "data" and math.isinf(h) and n > 1:
            continue  # infinite moments; the refusal is tested below
        w = exp_weights(nodes, h, c, form=form)
        if form == "data" and math.isinf(h):
            assert w.tolist() == [1.0]  # x' = D
            continue
        L = max(abs(v) for v in nodes) or 1.0
        M = quadrature_moments(n, h, c, form) / L ** np.arange(n)
        for degree in range(n):
            a = rng.uniform(-1, 1, degree + 1)  # P(v) = sum_k a_k (v/L)^k
            terms = [wj * P.polyval(v / L, a) for wj, v in zip(w, nodes)]
            want = float(np.dot(a, M[: degree + 1]))
            # extrapolating far (h = 50 on unit-spaced past nodes) makes the terms large and cancelling; the
            # sum is then exact up to rounding of the terms, not of the result
            tol = 1e-12 * float(np.dot(np.abs(a), np.abs(M[: degree + 1]))) + 1e-15 * sum(map(abs, terms))
            assert abs(sum(terms) - want) <= tol, (nodes, degree, sum(terms), want)
        if math.isfinite(h):  # and the weights themselves, against exact rational ones
            exact = [float(v) for v in exact_weights(nodes, exact_moments(n, h, c, form))]
            np.testing.assert_allclose(w, exact, rtol=0, atol=1e-13 * max(map(abs, exact)))


@pytest.mark.parametrize("form,c", KERNELS)
@pytest.mark.parametrize("h", [1e-8, *HS])
def test_moments_match_exact_series_at_every_h(form, c, h):
    """Full relative accuracy from ``h = 1e-8`` (the phi Taylor series) to ``h = inf`` (noise: ``k!/c^k``)."""
    if form == "data" and math.isinf(h):
        assert exp_moments(3, h, c).tolist() == [1.0, math.inf, math.inf]
        return
    got = exp_moments(4, h, c, form=form)
    want = [k_fact / c**k for k, k_fact in enumerate([1, 1, 2, 6])] if math.isinf(h) else \
        [float(m) for m in exact_moments(4, h, c, form)]
    np.testing.assert_allclose(got, want, rtol=2e-15, atol=0)


@pytest.mark.parametrize("form,c", KERNELS)
@pytest.mark.parametrize("h", [1e-8, 1e-6, 1e-4, 1e-2, 0.3])
def test_small_steps_keep_full_accuracy(form, c, h):
    """Weights on nodes that shrink with ``h`` (a multistep and a corrector set) against exact rational
    weights: no cancellation as ``h -> 0``. The naive recursion ``phi_3 = (phi_2 - 1/2) / z`` that 3M used
    loses ``~1/h^2`` of its accuracy there, so the test would catch it."""
    for nodes in ([0.0, -0.8 * h, -1.7 * h], [h, 0.0, -0.9 * h], [0.0, -1.3 * h, -2.1 * h, -3.4 * h]):
        want = [float(w) for w in exact_weights(nodes, exact_moments(len(nodes), h, c, form))]
        np.testing.assert_allclose(exp_weights(nodes, h, c, form=form), want, rtol=1e-13, atol=0)
    H = c * h
    phi_3 = float(exact_moments(3, h, c, "data")[2]) / (2 * c * h**3)  # phi_3(-c h)
    naive = -((math.expm1(-H) / H + 1) / H - 0.5) / H
    if h <= 1e-4:
        assert abs(naive / phi_3 - 1) > 1e-9
    assert phi(3, -H) == pytest.approx(phi_3, rel=1e-15)


def test_one_node_and_infinite_steps():
    h = 0.8
    assert exp_weights([0.0], h)[0] == pytest.approx(-math.expm1(-h), rel=1e-15)  # DDIM / DPM-Solver-1
    assert exp_weights([0.0], h, 1.7)[0] == pytest.approx(-math.expm1(-1.7 * h), rel=1e-15)  # SDE family
    assert exp_weights([0.0], h, form="noise")[0] == pytest.approx(-math.expm1(-h), rel=1e-15)  # Euler in sigma
    assert exp_weights([0.0], math.inf).tolist() == [1.0]
    np.testing.assert_allclose(exp_weights([0.0, -1.0, -2.0], math.inf, form="noise"), [3.5, -4.0, 1.5], rtol=1e-14)
    with pytest.raises(ValueError, match="one node"):
        exp_weights([0.0, -1.0], math.inf)
    with pytest.raises(ValueError, match="form"):
        exp_weights([0.0], h, form="eps")
    with pytest.raises(ValueError, match="non-empty"):
        exp_weights([], h)


def test_a_change_of_variable_is_the_same_integral():
    """``var`` integrates the polynomial in another variable by Gauss-Legendre: with ``u = v`` it gives the
    closed-form weights, and with ``u = sigma`` (iPNDM-v) the exact integral of the polynomial in sigma."""
    for form, h in (("data", 0.7), ("noise", 0.7), ("noise", 2.5)):
        nodes = [0.0, -0.6, -1.3]
        np.testing.assert_allclose(exp_weights(nodes, h, form=form, var=lambda v: v, n_quad=40),
                                   exp_weights(nodes, h, form=form), rtol=1e-12)
    s, s_next, past = 3.0, 1.2, [3.0, 5.5, 9.0]
    want = []
    for j in range(3):
        lj = P.polyfromroots(np.delete(past, j)) / np.prod([past[j] - p for k, p in enumerate(past) if k != j])
        integral = P.polyint(lj)
        want.append(P.polyval(s_next, integral) - P.polyval(s, integral))
    np.testing.assert_allclose(lagrange_integrals(past, s, s_next, n_quad=4), want, rtol=1e-13)
    np.testing.assert_allclose(lagrange_integrals(past, s, 0.0, n_quad=4)[0],
                               -P.polyval(s, P.polyint(P.polyfromroots(past[1:]) / ((s - 5.5) * (s - 9.0)))),
                               rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# the formulas the solvers used before the engine
# ----------------------------------------------------------------------------------------------

def _old_exp_weights(nodes, h, c):
    """SA-Solver's former ``sde.exp_weights``: a plain Vandermonde solve of the data-form moments."""
    m = [c * math.factorial(k) * h ** (k + 1) * phi(k + 1, -c * h) for k in range(len(nodes))]
    return np.linalg.solve(np.vander(np.asarray(nodes, dtype=np.float64), increasing=True).T, np.asarray(m))


def _old_unipc_coefficients(rks, h, variant):
    """UniPC's former coefficients: ``b_k = -h phi_{k+1}(-h) k! / B(h)`` solved against ``R[k, m] = r_m^k``."""
    p, hh = len(rks), -h
    B = hh if variant == "bh1" else math.expm1(hh)
    b = np.array([hh * phi(k + 1, hh) * math.factorial(k) / B for k in range(1, p + 1)])
    R = np.array([[r**k for r in rks] for k in range(p)])
    if p == 1:
        return B, np.zeros(0), np.array([0.5])
    a = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    return B, a, np.linalg.solve(R, b)


def _old_lagrange_integrals(nodes, a, b, to_var, n_quad):
    """DEIS's and iPNDM-v's former weights: the Lagrange basis integrated by Gauss-Legendre in sigma."""
    xg, wg = np.polynomial.legendre.leggauss(n_quad)
    s = 0.5 * (b - a) * xg + 0.5 * (b + a)
    v = s if to_var is None else to_var(s)
    nv = np.asarray(nodes, dtype=np.float64)
    out = []
    for j in range(len(nv)):
        lj = np.prod([(v - nv[m]) / (nv[j] - nv[m]) for m in range(len(nv)) if m != j], axis=0)
        out.append(0.5 * (b - a) * np.dot(wg, np.ones_like(v) * lj))
    return np.array(out)


def _old_usf_weights(taus, h, s, prediction):
    """USF's former weights: the Lagrange basis in powers of ``v`` times the moments."""
    taus = np.asarray(taus, dtype=np.float64)
    m = [math.factorial(k) * h ** (k + 1) * phi(k + 1, -h) if prediction == "data" else
         -s * math.factorial(k) * (1.0 if math.isinf(h) else h ** (k + 1) * math.exp(-h) * phi(k + 1, h))
         for k in range(len(taus))]
    return np.array([np.dot(P.polyfromroots(np.delete(taus, j)) / np.prod(taus[j] - np.delete(taus, j)), m)
                     for j in range(len(taus))])


def _steps(rng, n):
    return [float(v) for v in rng.uniform(0.1, 2.5, n)]


def test_sa_solver_weights_are_the_old_exp_weights():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, (h,), c = rng.integers(1, 5), _steps(rng, 1), float(rng.choice([1.0, 1.7, 2.0]))
        nodes = [0.0] + list(-np.cumsum(_steps(rng, n - 1)))
        corrector = [h] + nodes[: n - 1]
        for v in (nodes, corrector):
            np.testing.assert_allclose(exp_weights(v, h, c), _old_exp_weights(v, h, c), rtol=1e-13, atol=1e-15)


def test_unipc_coefficients_reproduce_the_papers_b():
    rng = np.random.default_rng(2)
    for _ in range(200):
        p, (h,) = rng.integers(1, 4), _steps(rng, 1)
        rks = list(-np.cumsum(_steps(rng, p - 1)) / h) + [1.0]
        for variant in ("bh1", "bh2"):
            B, a, c = unipc_coefficients(rks, h, variant)
            B0, a0, c0 = _old_unipc_coefficients(rks, h, variant)
            assert B == B0 and a.shape == a0.shape and c.shape == c0.shape
            np.testing.assert_allclose(a, a0, rtol=1e-13)
            np.testing.assert_allclose(c, c0, rtol=1e-13)
            # b_k is the k-th moment in units of h^k over -B(h)
            b = [(-h) * phi(k + 1, -h) * math.factorial(k) / B for k in range(1, p + 1)]
            np.testing.assert_allclose(exp_moments(p + 1, h, scale=h)[1:] / -B, b, rtol=1e-14)


def test_dpmpp_steps_reproduce_the_old_expm1_phi_formulas():
    """2M midpoint ``-E(-H)/2 d1``, 2M taylor ``(E(-H)/H + 1) d1`` and 3M ``phi_2 d1 - c3 phi_3 d2`` with
    ``H = (1 + eta) h``, as ``_dpmpp_multistep`` wrote them; exact 3M is the three-node ``exp_weights`` step."""
    E = math.expm1
    rng = np.random.default_rng(3)
    for _ in range(200):
        s = float(rng.uniform(0.5, 20))
        h, h_last, h_last2 = _steps(rng, 3)
        eta = float(rng.choice([0.0, 0.5, 1.0]))
        s_next, H = s * math.exp(-h), (1 + eta) * h
        x, d, d_prev, d_prev2 = (float(v) for v in rng.normal(size=4) * [s, 1, 1, 1])
        base = (s_next / s) * math.exp(-eta * h) * x - E(-H) * d
        r0, r1 = h_last / h, h_last2 / h
        d1_0, d1_1 = (d - d_prev) / r0, (d_prev - d_prev2) / r1
        old = {"midpoint": base - E(-H) / 2 * d1_0, "taylor": base + (E(-H) / H + 1) * d1_0}
        for solver_type, want in old.items():
            got = dpmpp_2m_step(x, s, s_next, d, d_prev, h_last, solver_type, eta)
            assert got == pytest.approx(want, rel=1e-13, abs=1e-13 * s)
        assert dpmpp_2m_step(x, s, s_next, d, None, None, eta=eta) == pytest.approx(base, rel=1e-13, abs=1e-13 * s)
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = E(-H) / H + 1
        phi_3 = phi_2 / H - 0.5
        for c3 in (2.0, 1.0):
            got = dpmpp_3m_step(x, s, s_next, d, d_prev, d_prev2, h_last, h_last2, c3, eta)
            assert got == pytest.approx(base + phi_2 * d1 - c3 * phi_3 * d2, rel=1e-12, abs=1e-12 * s)
        w = exp_weights([0.0, -h_last, -h_last - h_last2], h, 1 + eta)
        exact = (s_next / s) * math.exp(-eta * h) * x + w @ [d, d_prev, d_prev2]
        got = dpmpp_3m_step(x, s, s_next, d, d_prev, d_prev2, h_last, h_last2, 2.0, eta)
        assert got == pytest.approx(exact, rel=1e-12, abs=1e-12 * s)


def test_deis_ipndm_v_and_usf_weights_are_the_old_ones():
    rng = np.random.default_rng(4)
    for _ in range(100):
        n = int(rng.integers(1, 4))
        past = sorted(rng.uniform(0.01, 80, n), reverse=True)
        s = past[0]
        for s_next in (s * float(rng.uniform(0.05, 0.9)), 0.0):
            t = vp_time(np.array(past))
            np.testing.assert_allclose(lagrange_integrals(t, s, s_next, to_var=vp_time, n_quad=24),
                                       _old_lagrange_integrals(t, s, s_next, vp_time, 24), rtol=1e-12, atol=1e-14 * s)
            np.testing.assert_allclose(lagrange_integrals(past, s, s_next, n_quad=4),
                                       _old_lagrange_integrals(past, s, s_next, None, 4), rtol=1e-12, atol=1e-14 * s)
            h = math.log(s / s_next) if s_next > 0 else math.inf
            taus = [0.0] + list(-np.cumsum(_steps(rng, n - 1)))
            np.testing.assert_allclose(-s * exp_weights(taus, h, form="noise"),
                                       _old_usf_weights(taus, h, s, "noise"), rtol=1e-12, atol=1e-15 * s)
            if s_next > 0:
                np.testing.assert_allclose(exp_weights(taus, h), _old_usf_weights(taus, h, s, "data"), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# solvers that share one step function
# ----------------------------------------------------------------------------------------------

GAUSS = Gauss(dim=3, mean=torch.tensor([0.5, -1.0, 0.0]), std=torch.tensor([0.5, 1.0, 2.0]))
X_T = 80 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
GRID = karras(8, 0.01, 80.0).tolist() + [0.0]


@pytest.mark.parametrize("iia,base", [("iia_ddim", "ddim"), ("iia_dpmpp_2m", "dpmpp_2m"), ("iia_heun", "heun")])
def test_iia_without_coefficients_is_its_base_solver_exactly(iia, base):
    """IIA's base step calls the solver's own step function, so without coefficients it is bit-identical."""
    assert torch.equal(solve(GAUSS, X_T, GRID, iia), solve(GAUSS, X_T, GRID, base))


def test_sa_solver_without_noise_is_dpmpp_2m_taylor():
    """tau = 0, two predictor nodes, no corrector: Adams-Bashforth in lambda = the exact 2M (taylor) step."""
    sa = solve(GAUSS, X_T, GRID, "sa_solver", tau=0.0, predictor_order=2, corrector_order=0)
    taylor = solve(GAUSS, X_T, GRID, "dpmpp_2m", solver_type="taylor", lower_order_final=False)
    torch.testing.assert_close(sa, taylor, rtol=1e-12, atol=1e-12)


def test_dpmpp_sde_solvers_without_noise_are_the_ode_solvers():
    for sde, ode in (("dpmpp_2m_sde", "dpmpp_2m"), ("dpmpp_3m_sde", "dpmpp_3m")):
        assert torch.equal(solve(GAUSS, X_T, GRID, sde, eta=0.0), solve(GAUSS, X_T, GRID, ode))
