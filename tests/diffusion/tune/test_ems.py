"""DPM-Solver-v3 and its empirical model statistics (EMS): the closed form on Gaussian data, the identity
with DPM-Solver++, exactness of the first-order step when the EMS are exact, and a gain on digits-gmm."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import karras
from fewstep.diffusion.solvers.dpm_v3 import EMS, as_ems
from fewstep.diffusion.tune import _measure as M
from fewstep.diffusion.tune import _tuning as T
from fewstep.diffusion.tune.ems import CONFIGS, STATISTICS, compute_ems, gauss_ems, tune
from fewstep.models.exact import Gauss, ring_gmm

GAUSS = Gauss(dim=3, mean=torch.tensor([0.5, -1.0, 2.0]), std=torch.tensor([0.5, 1.0, 2.0]))
X_T = 80 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _setup(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FEWSTEP_CACHE", str(tmp_path_factory.mktemp("cache")))  # references shared by this module's tests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these are many small evaluations; a second thread only adds overhead
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.mark.parametrize("derivative", ["fd", "autograd"])
def test_gauss_ems_match_the_closed_form(derivative):
    """l = sigma^2/(c + sigma^2) exactly (every Rademacher probe gives the diagonal of a diagonal
    Jacobian); b = 2 l (1 - l) mu up to the grid derivative of l; s is not identified and shrinks to 0."""
    est = compute_ems(GAUSS, n_samples=64, n_grid=60, derivative=derivative)
    exact = gauss_ems(GAUSS, est.lam.numpy())
    assert (est.l - exact.l).abs().max() < (1e-9 if derivative == "fd" else 1e-13)
    assert (est.b - exact.b).abs().max() < 2e-2 * exact.b.abs().max()
    # s multiplies f = -l mu; its contribution to df/dlambda is negligible next to b
    f = -exact.l * GAUSS.mean[None]
    assert (est.s * f).abs().max() < 1e-3 * exact.b.abs().max()
    assert est.s.abs()[: 40].max() < 1e-3  # away from the smallest sigmas, s is 0 to round-off
    if derivative == "fd":  # a model that is not Gaussian has s != 0, bounded by the ridge (|s| <= 5)
        gmm = compute_ems(ring_gmm(), n_samples=64, n_grid=20)
        assert 1.0 < gmm.s.abs().max() <= 5.0


def test_first_order_v3_is_exact_when_the_ems_are():
    """With the closed-form EMS, g is constant along every trajectory, so even 5 first-order steps
    land on the exact ODE solution, up to the O(dlambda^2) interpolation of l, s, b. The same holds
    for any s when b = f' - s f; a wrong b breaks it."""
    ref = GAUSS.ode_solution(X_T, 80.0, 0.002)
    grid = karras(6, 0.002, 80.0)
    lam = np.linspace(-math.log(80), -math.log(0.002), 401)
    exact = gauss_ems(GAUSS, lam)
    l, mu = exact.l.numpy(), GAUSS.mean.numpy()[None]
    s = 0.3 * np.sin(lam)[:, None] * np.ones_like(l)
    other_s = EMS(lam, l, s, exact.b.numpy() + s * l * mu)
    wrong_b = EMS(lam, l, s, exact.b.numpy())
    err = {name: float((solve(GAUSS, X_T, grid, "dpm_solver_v3", ems=e, order=1, corrector=False) - ref).abs().max())
           for name, e in [("exact", exact), ("other_s", other_s), ("wrong_b", wrong_b), ("plain", None)]}
    assert err["exact"] < 2e-4 and err["other_s"] < 3e-4, err
    assert err["wrong_b"] > 0.1 and err["plain"] > 0.5, err


class _Quadratic(Denoiser):
    """D depends on sigma only, so every solver sees the same history and a step is
    ``x' = (s'/s) x + increment``, with an increment that depends only on the outputs."""

    shape = (2,)

    def denoise(self, x, sigma, cond):
        lam = -torch.log(sigma)[:, None]
        return torch.tensor([0.3, -0.2], dtype=x.dtype) + 0.2 * lam + 0.05 * lam**2 * torch.tensor([1.0, -2.0]) + 0 * x


def test_v3_on_identity_statistics_is_dpm_solver_pp():
    model = ring_gmm()
    x = 80 * torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n in (4, 6, 11):
        s = karras(n, 0.002, 80.0).tolist() + [0.0]
        for lof in (True, False):
            a = solve(model, x, s, "dpmpp_2m", solver_type="taylor", lower_order_final=lof)
            for pseudo in (False, True):  # one divided difference is the derivative at order 2
                b = solve(model, x, s, "dpm_solver_v3", order=2, corrector=False, predictor_pseudo=pseudo,
                          lower_order_final=lof)
                torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    # third order: dpmpp_3m warms up with the midpoint 2M, so compare the increments of the 3rd-order steps
    q, s = _Quadratic(), karras(9, 0.01, 20.0).tolist()
    x0 = torch.ones(1, 2, dtype=torch.float64)
    traces = {}
    for name, kw in (("dpmpp_3m", {}), ("dpm_solver_v3", {"corrector": False})):
        seen = []
        end = solve(q, x0, s, name, lower_order_final=False, callback=lambda d, seen=seen: seen.append(d["x"]), **kw)
        traces[name] = seen + [end]
    for i in range(2, len(s) - 1):
        inc = [t[i + 1] - s[i + 1] / s[i] * t[i] for t in traces.values()]
        torch.testing.assert_close(inc[1], inc[0], rtol=1e-11, atol=1e-12)


def test_fitted_ems_beat_dpm_solver_pp_on_digits_gmm():
    """At NFE 8 on digits-gmm, v3 with EMS from 256 data samples on a 40-point grid has a lower RMSE
    to the reference than DPM-Solver++(2M) and than v3 on l = 1, s = b = 0, on 24 fresh seeds."""
    model = fewstep.load_model("digits-gmm")
    grid = M.grid(model, "dpm_solver_v3", 8)
    stats = compute_ems(model, n_samples=256, n_grid=40, sigma_min=grid[-2], sigma_max=grid[0])
    seeds = list(range(500, 524))
    ref = T.tuning_references(model, seeds, grid[0])
    err = {"dpmpp_2m": M.rmse(M.run(model, seeds, grid, "dpmpp_2m"), ref),
           "v3_plain": M.rmse(M.run(model, seeds, grid, "dpm_solver_v3", {"order": 2}), ref),
           "v3_ems": M.rmse(M.run(model, seeds, grid, "dpm_solver_v3", {"order": 2, "ems": stats}), ref)}
    assert err["v3_ems"] < 0.8 * min(err["dpmpp_2m"], err["v3_plain"]), err


def test_ems_storage_and_a_recipe_that_samples(tmp_path):
    stats = compute_ems(ring_gmm(), n_samples=32, n_grid=10)
    back = EMS.load(stats.save(tmp_path / "e.safetensors"))
    for k in ("lam", "l", "s", "b"):
        assert torch.equal(getattr(back, k), getattr(stats, k))
    assert as_ems(stats.to_dict()).l.equal(stats.l) and back.meta["derivative"] == "fd"
    model = ring_gmm()
    r = tune(model, nfe=5, trajectories=4, eval_seeds=range(6), progress=False, n_samples=32, n_grid=20)
    assert r.solver == "dpm_solver_v3" and r.method == "ems" and isinstance(r.solver_options["ems"], dict)
    chosen = r.info["objective"]["chosen"]
    assert {k: r.solver_options[k] for k in chosen} == chosen
    assert set(r.quality) >= {"rmse_ref", "untuned", "eval_seeds"}
    again = Recipe.from_json(r.to_json())
    x = fewstep.sample(model, recipe=again, seeds=range(3))
    y = fewstep.sample(model, solver="dpm_solver_v3", nfe=5, schedule="explicit", seeds=range(3),
                       schedule_options={"sigmas": list(r.sigmas)}, solver_options=r.solver_options)
    torch.testing.assert_close(x, y)
    # the recipe keeps the statistics of its best trial (the others set to 0)
    trials = r.info["objective"]["rmse_tune_seeds"]
    assert len(trials) == len(STATISTICS) * len(CONFIGS) * len(r.info["options"]["schedules"])
    best = min(trials, key=lambda t: t[-1])
    kept = r.info["objective"]["statistics"]
    assert best[:3] == [r.info["objective"]["schedule"], kept, chosen]
    assert r.quality["untuned"]["schedule"] == r.info["objective"]["schedule"]  # DPM-Solver++ on the same grid
    stored = as_ems(r.solver_options["ems"])
    assert (kept == "lsb" or not stored.b.any()) and ("s" in kept or not stored.s.any())
    # a second NFE reuses the cached statistics; with ems_path the recipe names them by content, not by the path
    one = {"trajectories": 4, "eval_seeds": None, "progress": False, "n_samples": 32, "n_grid": 20,
           "statistics": ["lsb"]}
    assert tune(model, nfe=6, **one).solver_options["ems"] == tune(model, nfe=5, **one).solver_options["ems"]
    big = tune(model, nfe=5, trajectories=4, eval_seeds=None, progress=False, ems=stats,
               ems_path=tmp_path / "big.safetensors")
    ref = big.solver_options["ems"]
    assert ref.startswith("sha256:") and (tmp_path / "big.safetensors").is_file()
    assert torch.equal(as_ems(ref).l, EMS.load(tmp_path / "big.safetensors").l)
    assert Recipe.from_json(big.to_json()).solver_options["ems"] == ref  # a recipe may name a cache entry
    blob = next((Path(os.environ["FEWSTEP_CACHE"]) / "ems").glob(ref.split(":")[1] + "*"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")  # an edited cache entry is detected, not used
    with pytest.raises(ValueError, match="damaged"):
        as_ems(ref)
    blob.unlink()  # a cleared cache says how to rebuild
    with pytest.raises(ValueError, match="not in the cache.*fewstep tune --method ems"):
        as_ems(ref)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "edit", "foreign"])
def test_the_ems_cache_is_verified_and_recomputed_with_a_warning(tmp_path, monkeypatch, damage):
    from fewstep.diffusion.tune.ems import _cached

    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    model, opts = ring_gmm(), {"data": "auto", "n_samples": 16, "n_grid": 6, "derivative": "fd", "pooled": False}
    first, path = _cached(model, 0.01, 10.0, False, opts)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "garbage":
        path.write_bytes(b"x" * 100)
    elif damage == "edit":  # valid safetensors, one value changed: the checksum inside catches it
        edited = EMS(first.lam, first.l + 0.5, first.s, first.b, meta=first.meta)
        path.write_bytes(edited.to_bytes())
    else:  # a valid entry of other arguments copied over this one
        _, other = _cached(model, 0.02, 10.0, False, opts)
        path.write_bytes(other.read_bytes())
    with pytest.warns(UserWarning, match="not usable"):
        again, _ = _cached(model, 0.01, 10.0, False, opts)
    assert torch.equal(again.l, first.l) and torch.equal(again.b, first.b)
    assert not list(path.parent.glob("*.tmp"))


def test_bad_input_raises():
    lam = np.linspace(-4, 6, 5)
    one = np.ones((5, 2))
    with pytest.raises(ValueError, match="uniform"):
        EMS(lam ** 3, one, 0 * one, 0 * one)
    with pytest.raises(ValueError, match="rows"):
        EMS(lam, one[:4], 0 * one, 0 * one)
    three = np.ones((5, 3))
    with pytest.raises(ValueError, match="outside the EMS range"):  # covers sigma in [e^-6, e^4 = 54.6]
        solve(GAUSS, X_T, [80.0, 1.0, 0.0], "dpm_solver_v3", ems=EMS(lam, three, 0 * three, 0 * three))
    with pytest.raises(ValueError, match="values per lambda"):
        solve(GAUSS, X_T, [50.0, 1.0, 0.0], "dpm_solver_v3", ems=EMS(lam, one, 0 * one, 0 * one))
    with pytest.raises(ValueError, match="order 1..3"):
        solve(GAUSS, X_T, [80.0, 1.0, 0.0], "dpm_solver_v3", order=4)
    with pytest.raises(ValueError, match="keys"):
        as_ems({"l": [1.0]})
    with pytest.raises(ValueError, match="derivative"):
        compute_ems(GAUSS, derivative="exact")
    with pytest.raises(ValueError, match="data must be"):
        compute_ems(GAUSS, data="internet")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        compute_ems(GAUSS, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="stochastic"):
        tune(GAUSS, solver="dpmpp_2m_sde", nfe=5, progress=False)
    with pytest.raises(ValueError, match="seeds must differ"):
        tune(GAUSS, nfe=5, seeds=range(4), eval_seeds=range(3), progress=False)
    for bad in ("lsb", [], ["lsb", "sb"]):
        with pytest.raises(ValueError, match="statistics must be"):
            tune(GAUSS, nfe=5, statistics=bad, progress=False)
