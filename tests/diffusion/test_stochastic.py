"""Stochastic samplers: weak convergence on an exact Gaussian, identities with the deterministic solvers,
agreement with k-diffusion on the same noise, seeds independent of the batch, Brownian consistency
across NFE, honest Restart NFE, the noise samplers themselves, and bad options."""

import inspect
import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.noise import BrownianNoise, GaussianNoise, make_noise
from fewstep.diffusion.sampling import plan_steps, solve
from fewstep.diffusion.schedules import get_sigmas, karras
from fewstep.diffusion.solvers import SOLVERS
from fewstep.models.exact import Gauss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small (<= 40000 values); one thread avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


GAUSS = Gauss(dim=2, mean=torch.tensor([0.5, -1.0]), std=torch.tensor([0.5, 1.5]))
STOCHASTIC = sorted(name for name, info in SOLVERS.items() if info.stochastic)
X_T = 80 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
GRID = karras(11, 0.002, 80.0).tolist() + [0.0]


def plan_steps_cost(name, nfe):
    """The smallest budget >= nfe that ``name`` can spend (Restart cannot run on a one-step grid)."""
    while True:
        try:
            plan_steps(name, nfe)
            return nfe
        except ValueError:
            nfe += 1


# ----------------------------------------------------------------------------------------------
# weak convergence: mean and covariance against N(mu, diag(s^2))
# ----------------------------------------------------------------------------------------------

N_WEAK = 20000
FLOOR = 2 * (math.sqrt(2 / N_WEAK) + math.sqrt(6 / N_WEAK))  # twice the Monte Carlo noise of the error below
X_WEAK = 80 * torch.randn(N_WEAK, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def weak_error(name, nfe):
    """Scale-free ``|mean - mu| / s`` and ``||C / (s s^T) - I||_F`` of ``N_WEAK`` samples at budget ``nfe``."""
    x = solve(GAUSS, X_WEAK, get_sigmas("karras", plan_steps(name, nfe), GAUSS), name, noise_seeds=range(N_WEAK))
    s = GAUSS.std
    mean_err = float(((x.mean(0) - GAUSS.mean) / s).norm())
    cov_err = float((torch.cov(x.T) / torch.outer(s, s) - torch.eye(2, dtype=x.dtype)).norm())
    return mean_err, cov_err


@pytest.mark.parametrize("name", STOCHASTIC)
def test_weak_error_falls_as_nfe_grows(name):
    """Sample mean and covariance approach the data's: the error falls from NFE 10 to 20 to 40 (Restart:
    from its shortest budget, 11) until it reaches the Monte Carlo floor (about 0.01 for the mean and
    0.017 for the covariance with 20000 samples), and at NFE 40 it is below half of that at NFE 10.
    NFE 5 is printed only: multistep SDE solvers of order >= 2 (and the ODE dpmpp_3m) are still
    pre-asymptotic there on a Karras grid from sigma = 80. The mean is exact up to Monte Carlo noise
    for every sampler (the samplers are affine on Gaussian data); the trend is the covariance's."""
    nfes = sorted({plan_steps_cost(name, n) for n in (5, 10, 20, 40)})
    errs = {n: weak_error(name, n) for n in nfes}
    print(f"\n{name:17s} " + "  ".join(f"NFE {n}: mean {m:.3f} cov {c:.3f}" for n, (m, c) in errs.items()))
    total = [sum(errs[n]) for n in nfes if n >= plan_steps_cost(name, 10)]
    assert all(b < a or b < FLOOR for a, b in zip(total, total[1:])), (name, errs)
    assert total[-1] < 0.5 * total[0] and total[0] > 2 * FLOOR, (name, errs)


# ----------------------------------------------------------------------------------------------
# identities
# ----------------------------------------------------------------------------------------------

DETERMINISTIC_LIMITS = [
    ("euler_ancestral", {"eta": 0.0}, "ddim", {}),
    ("heun_churn", {"S_churn": 0.0}, "heun", {}),
    ("heun_churn", {"S_min": 100.0, "S_max": 200.0}, "heun", {}),
    ("dpmpp_sde", {"eta": 0.0}, "dpmpp_2s", {}),
    ("dpmpp_2m_sde", {"eta": 0.0}, "dpmpp_2m", {}),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "taylor"}, "dpmpp_2m", {"solver_type": "taylor"}),
    ("dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m", {}),
    ("dpmpp_3m_sde", {"eta": 0.0, "coefficients": "official"}, "dpmpp_3m", {"coefficients": "official"}),
    ("sa_solver", {"tau": 0.0, "predictor_order": 1, "corrector_order": 0}, "ddim", {}),
    ("sa_solver", {"tau": 0.0, "predictor_order": 2, "corrector_order": 0}, "dpmpp_2m", {"solver_type": "taylor"}),
    ("er_sde", {"order": 1, "noise_scale": "ode"}, "ddim", {}),
    ("restart", {"restarts": []}, "heun", {}),
]


@pytest.mark.parametrize("name,opts,ref,ref_opts", DETERMINISTIC_LIMITS, ids=lambda v: str(v))
def test_deterministic_limits(name, opts, ref, ref_opts):
    torch.testing.assert_close(solve(GAUSS, X_T, GRID, name, **opts), solve(GAUSS, X_T, GRID, ref, **ref_opts),
                               rtol=1e-12, atol=1e-12)


def test_ddpm_posterior_step_is_ancestral_euler_er_sde_and_first_order_sa_solver():
    """DDPM with beta~ = DDIM eta = 1 = ER-SDE-1 with phi = sigma^2 = SA-Solver-1 with tau = 1 (same noise)."""
    for noise_type in ("gaussian", "brownian"):
        ref = solve(GAUSS, X_T, GRID, "ddpm", noise_type=noise_type)
        for name, opts in [("euler_ancestral", {"eta": 1.0}), ("er_sde", {"order": 1, "noise_scale": "sde"}),
                           ("sa_solver", {"predictor_order": 1, "corrector_order": 0, "tau": 1.0})]:
            torch.testing.assert_close(solve(GAUSS, X_T, GRID, name, noise_type=noise_type, **opts), ref,
                                       rtol=1e-10, atol=1e-10)
    large = solve(GAUSS, X_T, GRID, "ddpm", variance="fixed_large")
    assert not torch.allclose(large, ref)


@pytest.mark.parametrize("name,opts,order", [
    ("er_sde", {"order": 1}, 1), ("er_sde", {"order": 2}, 2), ("er_sde", {"order": 3, "coefficients": "official"}, 2),
    ("sa_solver", {"predictor_order": 2, "corrector_order": 0}, 2),
    ("sa_solver", {"predictor_order": 3, "corrector_order": 0}, 3),
    ("sa_solver", {"predictor_order": 2, "corrector_order": 3}, 3),
])
def test_order_of_the_deterministic_limit(name, opts, order):
    """With the noise off (ER-SDE phi = sigma, SA-Solver tau = 0) the solvers are ODE solvers of the
    papers' orders (docs/math.md: N in 32..256, Karras grid, float64)."""
    opts = {**opts, **({"noise_scale": "ode"} if name == "er_sde" else {"tau": 0.0})}
    x4 = 80 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g4 = Gauss(dim=4, mean=torch.tensor([0.5, -1.0, 0.0, 2.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.7]))
    ref = g4.ode_solution(x4, 80.0, 0.002)
    Ns = [32, 64, 128, 256]
    errs = [float((solve(g4, x4, karras(N + 1, 0.002, 80.0), name, **opts) - ref).abs().max()) for N in Ns]
    p = -np.polyfit(np.log(Ns), np.log(errs), 1)[0]
    assert abs(p - order) <= 0.25, (name, opts, p)


def test_er_sde_exact_third_order_beats_the_official_coefficients():
    """The official code's chord slope makes ER-SDE-3 second order; Newton's form restores the third."""
    ref = GAUSS.ode_solution(X_T, 80.0, 0.002)
    err = {c: float((solve(GAUSS, X_T, karras(129, 0.002, 80.0), "er_sde", noise_scale="ode", coefficients=c)
                     - ref).abs().max()) for c in ("exact", "official")}
    assert err["exact"] < 0.1 * err["official"], err


def test_same_noise_as_k_diffusion():
    """fewstep and k-diffusion's samplers agree given the same noise sampler (dpmpp_sde: its stage
    noise is the Brownian increment of the sub-interval, which k-diffusion draws directly)."""
    from fewstep.bench.peers import load_kdiffusion_sampling

    try:
        k = load_kdiffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))
    sig = torch.tensor(GRID, dtype=torch.float64)
    cases = [("euler_ancestral", {"eta": 1.0}, k.sample_euler_ancestral, {"eta": 1.0}, "gaussian"),
             ("euler_ancestral", {"eta": 0.5}, k.sample_euler_ancestral, {"eta": 0.5}, "brownian"),
             ("dpmpp_2m_sde", {}, k.sample_dpmpp_2m_sde, {}, "gaussian"),
             ("dpmpp_2m_sde", {"solver_type": "taylor", "eta": 0.7}, k.sample_dpmpp_2m_sde,
              {"solver_type": "heun", "eta": 0.7}, "brownian"),
             ("dpmpp_sde", {}, k.sample_dpmpp_sde, {}, "brownian")]
    for name, opts, fn, k_opts, noise_type in cases:
        ours = solve(GAUSS, X_T, GRID, name, noise_type=noise_type, **opts)
        theirs = fn(GAUSS, X_T, sig, disable=True, noise_sampler=make_noise(noise_type, range(16), (2,), torch.float64),
                    **k_opts)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name} {opts}: {m}")


# ----------------------------------------------------------------------------------------------
# seeds, batches and Brownian consistency
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_seed_gives_the_same_sample_at_every_batch_size(name):
    nfe = plan_steps_cost(name, 12)
    for noise_type in ("gaussian", "brownian"):
        small = fewstep.sample(GAUSS, solver=name, nfe=nfe, seeds=[5, 6], noise_type=noise_type, dtype=torch.float64)
        big = fewstep.sample(GAUSS, solver=name, nfe=nfe, seed=3, batch=5, noise_type=noise_type, dtype=torch.float64)
        torch.testing.assert_close(small, big[2:4], rtol=1e-12, atol=1e-12)
        other = fewstep.sample(GAUSS, solver=name, nfe=nfe, seeds=[7, 8], noise_type=noise_type, dtype=torch.float64)
        assert not torch.allclose(small, other)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_brownian_noise_keeps_samples_consistent_across_nfe(name):
    """Same seeds at NFE 40 and 80 (different Karras grids): the Brownian path is shared, so the two
    samples are much closer than two samples whose noise seeds differ. (At NFE 20 Restart's main pass
    has only 6 Heun steps, whose ODE error dominates the difference.)"""
    n = 400
    x_T = 80 * torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(nfe, seeds):
        s = get_sigmas("karras", plan_steps(name, nfe), GAUSS)
        return solve(GAUSS, x_T, s, name, noise_type="brownian", noise_seeds=seeds)

    coarse = run(40, range(n))
    same = float((coarse - run(80, range(n))).norm(dim=1).mean())
    independent = float((coarse - run(80, range(n, 2 * n))).norm(dim=1).mean())
    assert same < 0.5 * independent, (name, same, independent)


# ----------------------------------------------------------------------------------------------
# Restart's NFE
# ----------------------------------------------------------------------------------------------

IMAGENET = [[4, 1, 19.35, 40.79], [4, 1, 1.09, 1.92], [4, 5, 0.59, 1.09], [4, 5, 0.30, 0.59], [6, 6, 0.06, 0.30]]


@pytest.mark.parametrize("restarts,n_steps,final", [
    (None, 2, "zero"), (None, 7, "zero"), (None, 1, "min"), (None, 5, "min"),
    ([[2, 3, 0.5, 2.0], [5, 1, 0.05, 0.2], [3, 2, 0.06, 0.4]], 6, "zero"),  # all three snap to sigma = 0.085
    (IMAGENET, 36, "zero"),  # the README's ImageNet-64 run: NFE 203
])
def test_restart_counts_its_evaluations_honestly(restarts, n_steps, final):
    opts = {} if restarts is None else {"restarts": restarts}
    c = CountingDenoiser(GAUSS)
    solve(c, X_T, get_sigmas("karras", n_steps, GAUSS, final=final), "restart", **opts)
    intervals = SOLVERS["restart"].options["restarts"] if restarts is None else restarts
    main = 2 * n_steps - (final == "zero")
    assert c.calls == main + sum(K * 2 * (N_r - 1) for N_r, K, _, _ in intervals)
    assert c.calls == SOLVERS["restart"].evals(n_steps, final == "zero", opts)
    if restarts is IMAGENET:
        assert c.calls == 203
    for nfe in (c.calls, c.calls + 1):  # the budget is respected and, when it fits, spent
        k = CountingDenoiser(GAUSS)
        fewstep.sample(k, solver="restart", nfe=nfe, schedule_options={"final": final}, batch=2, solver_options=opts)
        assert k.calls <= nfe and (k.calls == nfe or nfe > c.calls)


# ----------------------------------------------------------------------------------------------
# the noise samplers
# ----------------------------------------------------------------------------------------------

def test_gaussian_noise_is_standard_normal_per_sample_and_fresh_at_each_call():
    g = GaussianNoise(range(100000), (2,), torch.float64)
    z1, z2 = g(1.0, 0.5), g(1.0, 0.5)
    for z in (z1, z2):
        assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.02 and abs(float((z**4).mean()) - 3) < 0.1
    assert abs(float(np.corrcoef(z1.flatten(), z2.flatten())[0, 1])) < 0.01
    sub = GaussianNoise(range(10, 13), (2,), torch.float64)
    torch.testing.assert_close(sub(5.0, 1.0), z1[10:13], rtol=0, atol=0)


def test_brownian_increments_add_up_and_are_independent_standard_normals():
    b = BrownianNoise(range(20000), (1,), torch.float64)
    ts = [80.0, 13.0, 1.7, 0.3, 0.01, 0.0]
    z = {(a, c): b(a, c) for a, c in zip(ts[:-1], ts[1:])}
    whole = b(80.0, 0.0) * math.sqrt(80.0)
    torch.testing.assert_close(sum(v * math.sqrt(a - c) for (a, c), v in z.items()), whole, rtol=1e-9, atol=1e-9)
    inc = torch.cat(list(z.values()), 1)
    assert (inc.mean(0).abs() < 0.03).all() and ((inc.var(0) - 1).abs() < 0.05).all()
    corr = np.corrcoef(inc.T.numpy()) - np.eye(len(z))
    assert np.abs(corr).max() < 0.04
    # any W(t) is regenerated from the seed alone, whatever the order of the queries
    fresh = BrownianNoise(range(5, 9), (1,), torch.float64)
    for t in (0.01, 13.0, 0.3, 1.7):
        np.testing.assert_array_equal(fresh.W(t), b.W(t)[5:9])
    assert not torch.equal(b.spawn(0)(1.0, 0.5), b.spawn(1)(1.0, 0.5))


def test_deterministic_solvers_receive_no_noise():
    takes_noise = {name for name, info in SOLVERS.items()
                   if not info.stochastic and "noise" in inspect.signature(info.fn).parameters}
    assert takes_noise == {"heun"}  # its churn options; the driver passes it no noise, so churn needs heun_churn
    with pytest.raises(ValueError, match="heun_churn"):
        solve(GAUSS, X_T, GRID, "heun", S_churn=10.0)
    torch.testing.assert_close(solve(GAUSS, X_T, GRID, "heun"), solve(GAUSS, X_T, GRID, "heun", S_churn=0.0))


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts,match", [
    ("euler_ancestral", {"eta": -1.0}, "eta.*>= 0.*got eta=-1.0"),
    ("ddpm", {"variance": "large"}, "variance must be one of 'fixed_small', 'fixed_large'; got 'large'"),
    ("heun_churn", {"S_churn": -1.0}, "S_churn >= 0"),
    ("dpmpp_sde", {"r": 1.5}, "0 < r < 1; got r=1.5"),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, "solver_type must be one of 'midpoint', 'taylor'; got 'heun'"),
    ("dpmpp_3m_sde", {"coefficients": "k"}, "coefficients must be one of 'exact', 'official'"),
    ("sa_solver", {"predictor_order": 5}, "order 1..4; got 5"),
    ("sa_solver", {"corrector_order": -1}, "corrector_order 0..4"),
    ("sa_solver", {"tau": -0.5}, "tau >= 0"),
    ("er_sde", {"order": 4}, "order 1..3; got 4"),
    ("er_sde", {"noise_scale": "vp"}, "noise_scale must be one of 'ode', 'sde', 'sde_5'; got 'vp'"),
    ("restart", {"restarts": [[1, 1, 0.1, 0.2]]}, "N_restart >= 2.*got \\[1, 1, 0.1, 0.2\\]"),
    ("restart", {"restarts": [[3, 1, 0.5, 0.2]]}, "t_min < t_max"),
    ("restart", {"restarts": [[3, 1, 5.0, 5.5]]}, "snaps t_min to the grid's sigma"),
    ("restart", {"restart_gamma": 0.5}, "restart_gamma <= sqrt\\(2\\) - 1"),
    ("dpmpp_2m_sde", {"eta": 0.5, "etaa": 1.0}, "unknown option.*etaa.*valid options: eta=1.0"),
])
def test_bad_options_raise_value_error(name, opts, match):
    with pytest.raises(ValueError, match=match):
        solve(GAUSS, X_T, GRID, name, **opts)


@pytest.mark.parametrize("name", sorted(n for n, info in SOLVERS.items() if info.stochastic))
def test_solve_takes_the_noise_itself(name):
    """A caller with its own generator (the diffusers scheduler) passes ``noise(sigma, sigma_next)``: the seeded
    noise given that way is the same run as ``noise_seeds``, and a given sampler is what the solver draws from."""
    seeds = list(range(100, 116))
    drawn = make_noise("gaussian", seeds, X_T.shape[1:], X_T.dtype)
    assert torch.equal(solve(GAUSS, X_T, GRID, name, noise=drawn), solve(GAUSS, X_T, GRID, name, noise_seeds=seeds))
    asked = []

    class Quiet:
        def __call__(self, sigma, sigma_next):
            asked.append((sigma, sigma_next))
            return torch.zeros_like(X_T)

        def spawn(self, index):  # Restart draws each restart from its own stream
            return self

    solve(GAUSS, X_T, GRID, name, noise=Quiet())
    assert asked and all(GRID[0] >= a > b >= 0 for a, b in asked)


def test_bad_noise_arguments_raise_value_error():
    with pytest.raises(ValueError, match="noise_type 'pink'; choose one of gaussian, brownian"):
        fewstep.sample(GAUSS, solver="ddpm", nfe=5, noise_type="pink")
    with pytest.raises(ValueError, match="noise must be a callable noise\\(sigma, sigma_next\\), given without "
                                         "noise_seeds or noise_type; got"):
        solve(GAUSS, X_T, GRID, "ddpm", noise=lambda s, t: 0, noise_seeds=list(range(16)))
    with pytest.raises(ValueError, match="noise must be a callable"):
        solve(GAUSS, X_T, GRID, "ddpm", noise="brownian")
    with pytest.raises(ValueError, match="noise_seeds has 2 seeds for a batch of 16"):
        solve(GAUSS, X_T, GRID, "ddpm", noise_seeds=[1, 2])
    with pytest.raises(ValueError, match="too small for solver 'restart': its shortest run costs 11"):
        fewstep.sample(GAUSS, solver="restart", nfe=10)
    with pytest.raises(ValueError, match="two different sigmas"):
        BrownianNoise([0], (1,))(1.0, 1.0)
    with pytest.raises(ValueError, match="integers"):
        GaussianNoise([0.5], (1,))
