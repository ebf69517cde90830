"""Cross-checks against diffusers' and k-diffusion's own samplers: the same exact model, the same noise,
the same sigma grid, float64. Where the algorithm is the same, fewstep agrees to 1e-5 relative."""

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.peers import PEERS, list_peer_samplers, load_kdiffusion_sampling, run_peer
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import karras
from fewstep.diffusion.solvers import SOLVERS
from fewstep.models.exact import Gauss

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

MODEL = fewstep.load_model("gmm2d")
X_T = 80 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
GRIDS = {"zero": karras(9, 0.01, 80.0).tolist() + [0.0], "min": karras(10, 0.01, 80.0).tolist()}
FLOAT32_STATE = {("diffusers", "euler"), ("diffusers", "dpmpp_2m"), ("diffusers", "dpmpp_3m")}
EQUIVALENT = [(p, n) for p, table in PEERS.items() for n, s in table.items() if s.fewstep is not None]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _need(peer):
    if peer == "kdiffusion":
        try:
            load_kdiffusion_sampling()
        except ImportError as exc:
            pytest.skip(f"k-diffusion's sampling.py cannot be loaded: {exc}")


@pytest.mark.parametrize("final", list(GRIDS))
@pytest.mark.parametrize("peer,name", EQUIVALENT, ids=[f"{p}-{n}" for p, n in EQUIVALENT])
def test_peer_agrees_with_fewstep(peer, name, final):
    _need(peer)
    spec = PEERS[peer][name]
    grid = GRIDS[final]
    ours = solve(MODEL, X_T, grid, spec.fewstep, **spec.options)
    theirs = run_peer(peer, name, MODEL, X_T, grid)
    assert torch.isfinite(ours).all()
    # the contract is 1e-5; diffusers' Euler and DPMSolverMultistep round their state to float32 in step()
    tol = 1e-5 if (peer, name) in FLOAT32_STATE else 1e-11
    assert rel(theirs, ours) < tol, (peer, name, final, rel(theirs, ours))


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_3m", "unipc"])
def test_diffusers_prediction_types(name, prediction):
    spec = PEERS["diffusers"][name]
    grid = GRIDS["zero"]
    ours = solve(MODEL, X_T, grid, spec.fewstep, **spec.options)
    assert rel(run_peer("diffusers", name, MODEL, X_T, grid, prediction=prediction), ours) < 1e-5


def test_unipc_bh1_final_step_to_zero():
    """diffusers' bh1 divides by B(h) = -h with h = inf on the last step: NaN. fewstep's bh1 is finite there,
    and more accurate than DDIM on the same grid (the peer agrees with it where it is finite: see above)."""
    grid = GRIDS["zero"]
    verbatim = run_peer("diffusers", "unipc_bh1", MODEL, X_T, grid, final_limit=False)
    assert torch.isnan(verbatim).all()
    ours = solve(MODEL, X_T, grid, "unipc", variant="bh1")
    assert torch.isfinite(ours).all()
    gauss = Gauss(dim=2, mean=torch.tensor([0.5, -1.0]), std=torch.tensor([0.5, 2.0]))
    exact = gauss.ode_solution(X_T, 80.0, 0.0)
    fine = karras(40, 0.01, 80.0).tolist() + [0.0]
    err_bh1 = rel(solve(gauss, X_T, fine, "unipc", variant="bh1"), exact)
    assert err_bh1 < rel(solve(gauss, X_T, fine, "ddim"), exact) / 2


def test_diffusers_deis_is_deis_in_log_sigma_and_fewstep_also_steps_to_zero():
    """diffusers' DEIS (logrho) is fewstep's deis(variable='log_sigma') (test_peer_agrees_with_fewstep), not the
    default tAB. diffusers cannot take a higher-order step to sigma = 0 (its coefficients are 0 log 0); fewstep's
    closed-form weights can, and the result converges to the exact ODE solution at third order."""
    for grid in GRIDS.values():
        assert rel(run_peer("diffusers", "deis", MODEL, X_T, grid), solve(MODEL, X_T, grid, "deis")) > 1e-4
    long_grid = karras(16, 0.01, 80.0).tolist() + [0.0]
    with pytest.raises(ValueError, match="15 or more steps"):
        run_peer("diffusers", "deis", MODEL, X_T, long_grid)
    gauss = Gauss(dim=2, mean=torch.tensor([0.5, -1.0]), std=torch.tensor([0.5, 2.0]))
    exact = gauss.ode_solution(X_T, 80.0, 0.0)
    errs = [rel(solve(gauss, X_T, karras(n, 0.01, 80.0).tolist() + [0.0], "deis", variable="log_sigma",
                      lower_order_final=False), exact) for n in (32, 64)]
    assert all(math.isfinite(e) for e in errs) and errs[1] < errs[0] / 4, errs


def test_official_3m_is_second_order_and_exact_3m_third_order():
    """The peers' 3M (= coefficients='official') converges at order 2; fewstep's default at order 3."""
    gauss = Gauss(dim=3, mean=torch.tensor([0.5, -1.0, 0.0]), std=torch.tensor([0.5, 1.0, 2.0]))
    x = 80 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = gauss.ode_solution(x, 80.0, 0.002)
    Ns = [64, 128, 256]
    errs = {"diffusers": [], "exact": []}
    for N in Ns:
        grid = karras(N + 1, 0.002, 80.0).tolist()
        errs["diffusers"].append(float((run_peer("diffusers", "dpmpp_3m", gauss, x, grid) - ref).abs().max()))
        errs["exact"].append(float((solve(gauss, x, grid, "dpmpp_3m", lower_order_final=False) - ref).abs().max()))
    slope = {k: -np.polyfit(np.log(Ns), np.log(v), 1)[0] for k, v in errs.items()}
    assert abs(slope["diffusers"] - 2) < 0.3 and abs(slope["exact"] - 3) < 0.3, slope
    assert errs["exact"][-1] < errs["diffusers"][-1]


def test_kdiffusion_loads_without_torchvision():
    import sys

    _need("kdiffusion")
    module = load_kdiffusion_sampling()
    assert hasattr(module, "sample_dpmpp_2m") and "torchvision" not in sys.modules


def test_listing_and_errors():
    listing = list_peer_samplers()
    assert set(listing) == {"diffusers", "kdiffusion"}
    for table in listing.values():
        for info in table.values():
            assert (info["fewstep"] or info["nearest"]) in SOLVERS and (info["fewstep"] or info["note"])
    with pytest.raises(ValueError, match="unknown peer 'comfy'.*diffusers"):
        run_peer("comfy", "euler", MODEL, X_T, GRIDS["zero"])
    with pytest.raises(ValueError, match="unknown diffusers sampler 'lms'.*ddim"):
        run_peer("diffusers", "lms", MODEL, X_T, GRIDS["zero"])
    with pytest.raises(ValueError, match="finite sigmas"):
        run_peer("diffusers", "euler", MODEL, X_T, [math.inf, 1.0, 0.0])
    with pytest.raises(ValueError, match="prediction must be one of"):
        run_peer("diffusers", "euler", MODEL, X_T, GRIDS["zero"], prediction="eps")
    with pytest.raises(TypeError, match="Denoiser"):
        run_peer("kdiffusion", "euler", lambda x, s: x, X_T, GRIDS["zero"])


@pytest.mark.parametrize("name", ["gmm2d", "digits-vp-eps", "digits-flow"])
def test_peer_default_grids_are_the_peers_own(name):
    """k-diffusion's default is Karras over the model's range (from SIGMA_CAP on a flow model); diffusers' is the
    grid DPMSolverMultistepScheduler makes for the family (Karras is not its default: linspace timesteps for a
    discrete VP model, use_flow_sigmas for a flow model)."""
    from fewstep.bench.peers import default_grid
    from fewstep.diffusion.schedules import SIGMA_CAP, get_sigmas

    model = fewstep.load_model(name)
    top = model.sigma_max if math.isfinite(model.sigma_max) else SIGMA_CAP
    torch.testing.assert_close(default_grid("kdiffusion", model, 5), get_sigmas("karras", 5, model, sigma_max=top))
    grid = default_grid("diffusers", model, 5)
    assert grid.numel() == 6 and grid[-1] == 0 and math.isfinite(float(grid[0]))
    family = model.process.family
    if family == "vp_discrete":
        diffusers = pytest.importorskip("diffusers")
        sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
        sch.set_timesteps(5)
        torch.testing.assert_close(grid[:-1], torch.from_numpy(
            ((1 - sch.alphas_cumprod[sch.timesteps]) / sch.alphas_cumprod[sch.timesteps]).sqrt().double().numpy()),
            rtol=1e-5, atol=0)
    elif family == "flow":
        torch.testing.assert_close(grid, get_sigmas("flow_sigmas", 5, model))
    else:
        torch.testing.assert_close(grid, get_sigmas("karras", 5, model))
    with pytest.raises(ValueError, match="unknown peer"):
        default_grid("comfy", model, 5)
