"""k-diffusion's own sampler names in fewstep.integrations.kdiffusion: same signatures, same results (float64, an
exact model, the same noise), noise from the global RNG or the caller's noise_sampler, sigmas as tensors."""

import inspect

import pytest
import torch

import fewstep
from fewstep.bench.peers import load_kdiffusion_sampling
from fewstep.diffusion.noise import make_noise
from fewstep.diffusion.schedules import karras
from fewstep.integrations import kdiffusion

try:
    K = load_kdiffusion_sampling()
except ImportError as exc:  # pragma: no cover - k-diffusion is a test dependency
    pytest.skip(f"k-diffusion's sampling.py cannot be loaded: {exc}", allow_module_level=True)

MODEL = fewstep.load_model("gauss", dim=4)
SIGMAS = torch.cat([karras(10, 0.02, 40.0), torch.zeros(1, dtype=torch.float64)])
X = 40 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
K_NAMES = sorted(n for n in dir(K) if n.startswith("sample_") and callable(getattr(K, n)))
RANGE = {"sigma_min": 0.02, "sigma_max": 40.0}  # sample_dpm_fast / sample_dpm_adaptive take a range, not a grid


class Draws:
    """A noise sampler of independent draws from its own generator (k-diffusion's default, but seeded)."""

    def __init__(self, seed=5):
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = []

    def __call__(self, sigma, sigma_next):
        self.calls.append((sigma, sigma_next))
        return torch.randn(X.shape, generator=self.generator, dtype=torch.float64)


def assert_close(ours, theirs, tol=1e-12):
    err = float((ours - theirs).abs().max()) / max(1.0, float(theirs.abs().max()))
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


@pytest.fixture
def float64_default():
    """k-diffusion's DPMSolver builds its lambdas with torch.tensor(sigma) and linspace: float64 only by default."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def both(name, noise=None, seed=None, **kwargs):
    """Run fewstep's and k-diffusion's ``name`` on the same call; ``noise`` makes a fresh sampler for each,
    ``seed`` seeds the global RNG before each."""
    args = (MODEL, X, RANGE["sigma_min"], RANGE["sigma_max"]) if name in ("sample_dpm_fast", "sample_dpm_adaptive") \
        else (MODEL, X, SIGMAS)
    out = []
    for module in (kdiffusion, K):
        if noise is not None:
            kwargs["noise_sampler"] = noise()
        if seed is not None:
            torch.manual_seed(seed)
        out.append(getattr(module, name)(*args, disable=True, **kwargs))
    return out


def test_every_k_diffusion_sampler_exists_with_k_diffusions_signature():
    assert len(K_NAMES) == 13
    assert set(K_NAMES) == set(kdiffusion.KDIFFUSION_SAMPLERS) <= set(kdiffusion.list_samplers())
    for name in K_NAMES:
        assert inspect.signature(getattr(kdiffusion, name)) == inspect.signature(getattr(K, name)), name


DETERMINISTIC = [
    ("sample_euler", {}), ("sample_euler", {"s_churn": 0.0, "s_tmin": 0.1, "s_noise": 1.0}), ("sample_heun", {}),
    ("sample_dpm_2", {}), ("sample_dpm_2_ancestral", {"eta": 0.0}), ("sample_lms", {}), ("sample_lms", {"order": 2}),
    ("sample_lms", {"order": 6}), ("sample_dpmpp_2s_ancestral", {"eta": 0.0}), ("sample_dpmpp_2m", {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}), ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}), ("sample_dpmpp_sde", {"eta": 0.0, "r": 0.3}),
]


@pytest.mark.parametrize(("name", "kwargs"), DETERMINISTIC)
def test_deterministic_samplers_match_k_diffusion(name, kwargs):
    calls = ([], [])
    ours, theirs = both(name, **kwargs, callback=None)
    assert_close(ours, theirs)
    getattr(kdiffusion, name)(MODEL, X, SIGMAS, disable=True, callback=calls[0].append, **kwargs)
    getattr(K, name)(MODEL, X, SIGMAS, disable=True, callback=calls[1].append, **kwargs)
    assert len(calls[0]) == len(calls[1]) == len(SIGMAS) - 1
    for a, b in zip(*calls):
        assert sorted(a) == sorted(b) and a["i"] == b["i"]
        for key in ("sigma", "sigma_hat"):
            assert torch.is_tensor(a[key]) and a[key].shape == () and a[key].dtype == SIGMAS.dtype
            assert float(a[key]) == float(b[key])
        assert_close(a["x"], b["x"])
        assert_close(a["denoised"], b["denoised"])


STOCHASTIC = [
    ("sample_euler_ancestral", {}), ("sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.8}),
    ("sample_dpm_2_ancestral", {}), ("sample_dpmpp_2s_ancestral", {}), ("sample_dpmpp_2s_ancestral", {"eta": 0.5}),
    ("sample_dpmpp_sde", {}), ("sample_dpmpp_sde", {"eta": 0.5, "r": 0.3}), ("sample_dpmpp_2m_sde", {}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.6}), ("sample_dpmpp_3m_sde", {}),
    ("sample_dpmpp_3m_sde", {"eta": 0.4, "s_noise": 0.9}),
]


@pytest.mark.parametrize(("name", "kwargs"), STOCHASTIC)
def test_stochastic_samplers_match_k_diffusion_given_the_same_noise_sampler(name, kwargs):
    """Independent draws (each call a new one) and a Brownian path: k-diffusion's calls, in its order."""
    ours, theirs = both(name, noise=Draws, **kwargs)
    assert_close(ours, theirs)
    ours, theirs = both(name, noise=lambda: make_noise("brownian", range(3), (4,), torch.float64), **kwargs)
    assert_close(ours, theirs, 1e-11)  # dpmpp_sde's inner sigma differs in the last bit: the path moves ~1e-13


def test_the_noise_sampler_is_called_with_tensor_sigmas():
    """It used to raise; now it is called once per step that ends above 0, with k-diffusion's arguments."""
    ours = Draws()
    kdiffusion.sample_euler_ancestral(MODEL, X, SIGMAS, disable=True, noise_sampler=ours)
    theirs = Draws()
    K.sample_euler_ancestral(MODEL, X, SIGMAS, disable=True, noise_sampler=theirs)
    assert len(ours.calls) == len(theirs.calls) == len(SIGMAS) - 2
    for (a, a_next), (b, b_next) in zip(ours.calls, theirs.calls):
        assert torch.is_tensor(a) and float(a) == float(b) and float(a_next) == float(b_next)


GLOBAL_RNG = [  # k-diffusion's default is torch.randn_like(x): the same global seed gives k-diffusion's own sample
    ("sample_euler", {"s_churn": 1.0}), ("sample_heun", {"s_churn": 1.0}),
    ("sample_dpm_2", {"s_churn": 2.0, "s_noise": 1.1}), ("sample_euler_ancestral", {}),
    ("sample_dpm_2_ancestral", {}), ("sample_dpmpp_2s_ancestral", {"eta": 0.7}),
    ("sample_dpm_fast", {"n": 10, "eta": 1.0}), ("sample_dpm_adaptive", {"eta": 0.5}),
]


@pytest.mark.parametrize(("name", "kwargs"), GLOBAL_RNG)
def test_default_noise_is_k_diffusions_global_randn(name, kwargs, float64_default):
    ours, theirs = both(name, seed=3, **kwargs)
    assert_close(ours, theirs)
    other, _ = both(name, seed=4, **kwargs)
    assert not torch.allclose(ours, other)


@pytest.mark.parametrize("name", ["sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"])
def test_default_brownian_noise_is_seeded_by_the_global_rng(name):
    """k-diffusion seeds its Brownian tree with torch.randint; fewstep's Brownian paths are seeded the same way
    (torch.manual_seed(1) and (2) used to give the same sample)."""
    def run(seed):
        torch.manual_seed(seed)
        return getattr(kdiffusion, name)(MODEL, X, SIGMAS, disable=True)

    first = run(1)
    torch.testing.assert_close(first, run(1), rtol=0, atol=0)
    assert not torch.allclose(first, run(2))


@pytest.mark.parametrize(("name", "kwargs"), [
    ("sample_dpm_fast", {"n": 1}), ("sample_dpm_fast", {"n": 2}), ("sample_dpm_fast", {"n": 3}),
    ("sample_dpm_fast", {"n": 10}), ("sample_dpm_adaptive", {}), ("sample_dpm_adaptive", {"order": 2, "rtol": 0.01}),
    ("sample_dpm_adaptive", {"pcoeff": 0.3, "dcoeff": 0.1, "rtol": 0.001, "h_init": 0.2}),
])
def test_dpm_solver_fast_and_adaptive_match_k_diffusion(name, kwargs, float64_default):
    """The steps match to 1e-12 (dpm_fast). The adaptive error estimate is the difference of two nearly equal
    solutions, so its rounding is ``|x| 1e-16 / |x_low - x_high|`` relative, ~4e-9 on a first step with E = 2e-5
    (k-diffusion's own estimate has it too); the chosen steps then move by ~1e-10, hence 1e-8 there."""
    tol = 1e-8 if name == "sample_dpm_adaptive" else 1e-12
    calls = ([], [])
    ours, theirs = both(name, **kwargs)
    assert_close(ours, theirs, tol)
    getattr(kdiffusion, name)(MODEL, X, **RANGE, disable=True, callback=calls[0].append, **kwargs)
    getattr(K, name)(MODEL, X, **RANGE, disable=True, callback=calls[1].append, **kwargs)
    assert len(calls[0]) == len(calls[1]) > 0
    for a, b in zip(*calls):
        assert sorted(a) == sorted(b) and a["i"] == b["i"]
        assert torch.is_tensor(a["sigma"]) and torch.is_tensor(a["sigma_hat"])
        assert_close(a["sigma"], b["sigma"], tol)
        assert_close(a["x"], b["x"], tol)


def test_dpm_adaptive_reports_its_steps_and_counts_evaluations_it_made(float64_default):
    (x, ours), (_, theirs) = both("sample_dpm_adaptive", return_info=True, rtol=0.01)
    assert {k: ours[k] for k in ("steps", "n_accept", "n_reject")} == \
        {k: theirs[k] for k in ("steps", "n_accept", "n_reject")}
    assert ours["n_reject"] > 0  # a retry reuses the evaluation at its start; k-diffusion repeats it
    assert ours["nfe"] == theirs["nfe"] - ours["n_reject"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n .* positive integer"):
        kdiffusion.sample_dpm_fast(MODEL, X, 0.02, 40.0, 0, disable=True)
    with pytest.raises(ValueError, match="sigma_min and sigma_max"):
        kdiffusion.sample_dpm_fast(MODEL, X, 0.0, 40.0, 5, disable=True)
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        kdiffusion.sample_dpm_adaptive(MODEL, X, 0.02, 40.0, order=4, disable=True)
    with pytest.raises(ValueError, match="reverse sampling"):
        kdiffusion.sample_dpm_adaptive(MODEL, X, 40.0, 0.02, eta=1.0, disable=True)
    with pytest.raises(ValueError, match="solver_type must be 'heun' or 'midpoint'"):
        kdiffusion.sample_dpmpp_2m_sde(MODEL, X, SIGMAS, solver_type="taylor", disable=True)
    with pytest.raises(ValueError, match="order must be a positive integer"):
        kdiffusion.sample_lms(MODEL, X, SIGMAS, order=0, disable=True)
    with pytest.raises(ValueError, match="s_churn >= 0"):
        kdiffusion.sample_euler(MODEL, X, SIGMAS, s_churn=-1.0, disable=True)
