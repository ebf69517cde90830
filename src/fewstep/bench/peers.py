"""Run diffusers' and k-diffusion's own samplers on a fewstep model, on a given grid and initial noise.

``run_peer(peer, sampler, model, x_T, sigmas)`` returns the peer's final sample in sigma space, so it can
be compared with ``solve(model, x_T, sigmas, fewstep_solver)``; ``list_peer_samplers()`` names the
fewstep solver (and options) that runs the same algorithm, or the nearest one where none does.
This backs the cross-check tests, docs/compat.md (``python -m fewstep.bench.compat``) and
``fewstep bench --peers`` (``peer_rows``: each peer sampler runs on the grid its fewstep equivalent, or
nearest solver, would use for the same NFE budget; the NFE it actually used is counted, not assumed).

diffusers schedulers live in their own spaces. Each run builds the scheduler, calls its
``set_timesteps``, then replaces its grid by ``sigmas`` in float64 (diffusers rounds grids to float32),
and drives it with a stand-in model that returns the exact ``D`` of ``model`` in the scheduler's
prediction type (``epsilon`` by default): ``x_t = a x``, ``eps = (x_t - a D) / b``. k-diffusion's
samplers take the fewstep ``Denoiser`` directly (same contract).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.bench.distributed import is_main
from fewstep.bench.harness import device_name, versions
from fewstep.diffusion.denoiser import CountingDenoiser, Denoiser
from fewstep.diffusion.from_diffusers import PREDICTION_TYPES
from fewstep.diffusion.sampling import plan_steps, seeded_noise
from fewstep.diffusion.schedules import SIGMA_CAP, check_sigmas, get_sigmas
from fewstep.evaluation import DataReference, compute_metrics
from fewstep.evaluation.references import reference_samples
from fewstep.models import load_model

Tensor = torch.Tensor


@dataclass(frozen=True)
class PeerSampler:
    """A peer's sampler: what it runs, and the fewstep solver that runs the same algorithm.

    ``fewstep`` is ``None`` when no fewstep solver is the same algorithm; ``nearest`` then names the
    closest one (for side-by-side tables) and ``note`` says how they differ.
    """

    peer: str
    name: str
    target: str
    fewstep: str | None
    options: dict[str, Any] = field(default_factory=dict)
    nearest: str | None = None
    note: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # the peer's own arguments

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "fewstep": self.fewstep, "options": dict(self.options),
                "nearest": self.nearest or self.fewstep, "note": self.note}


def _d(name, target, fewstep, options=None, nearest=None, note="", **kwargs):
    return PeerSampler("diffusers", name, target, fewstep, dict(options or {}), nearest, note, kwargs)


def _k(name, target, fewstep, options=None, note="", **kwargs):
    return PeerSampler("kdiffusion", name, target, fewstep, dict(options or {}), None, note, kwargs)


_MULTI = {"algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True,
          "euler_at_final": False}
PEERS: dict[str, dict[str, PeerSampler]] = {
    "diffusers": {s.name: s for s in [
        _d("ddim", "DDIMScheduler(eta=0)", "ddim"),
        _d("euler", "EulerDiscreteScheduler", "euler"),
        _d("heun", "HeunDiscreteScheduler", "heun"),
        _d("dpmpp_2m", "DPMSolverMultistepScheduler(solver_order=2)", "dpmpp_2m", solver_order=2, **_MULTI),
        _d("dpmpp_3m", "DPMSolverMultistepScheduler(solver_order=3)", "dpmpp_3m", {"coefficients": "official"},
           note="fewstep's default coefficients='exact' is third order; diffusers' is the official second-order one",
           solver_order=3, **_MULTI),
        _d("dpmpp_2s", "DPMSolverSinglestepScheduler(solver_order=2)", "dpmpp_2s", {"r": 0.5},
           note="diffusers evaluates the intermediate point on its own grid: the grid gets the log-SNR midpoints",
           solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint"),
        _d("unipc", "UniPCMultistepScheduler(solver_type='bh2')", "unipc", {"variant": "bh2", "order": 2},
           solver_order=2, solver_type="bh2", lower_order_final=True),
        _d("unipc_bh1", "UniPCMultistepScheduler(solver_type='bh1')", "unipc", {"variant": "bh1", "order": 2},
           note="diffusers returns NaN on a final step to sigma = 0; run_peer takes that step's limit x = D",
           solver_order=2, solver_type="bh1", lower_order_final=True),
        _d("deis", "DEISMultistepScheduler(solver_order=3, logrho)", "deis", {"variable": "log_sigma"},
           note="diffusers interpolates eps polynomially in log sigma (logrho; fewstep's default deis uses VP time, "
                "tAB). diffusers cannot step to sigma = 0 (0 log 0): run_peer takes the limit x = D there",
           solver_order=3, lower_order_final=True),
        _d("ipndm", "IPNDMScheduler", "ipndm", {"order": 4},
           note="IPNDMScheduler takes a v-prediction (its sin/cos parameterisation); run_peer feeds it one"),
    ]},
    "kdiffusion": {s.name: s for s in [
        _k("euler", "sample_euler", "euler"),
        _k("heun", "sample_heun", "heun"),
        _k("dpm_2", "sample_dpm_2", "dpm_solver_2", {"r1": 0.5}),
        _k("dpmpp_2m", "sample_dpmpp_2m", "dpmpp_2m", {"lower_order_final": False}),
        _k("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral(eta=0)", "dpmpp_2s", {"r": 0.5}, eta=0.0),
        _k("lms", "sample_lms(order=4)", "ipndm_v", {"order": 4}, order=4),
    ]},
}


def list_peer_samplers() -> dict[str, dict[str, dict[str, Any]]]:
    """``{peer: {sampler: {target, fewstep, options, nearest, note}}}`` for every peer sampler."""
    return {peer: {name: s.describe() for name, s in table.items()} for peer, table in PEERS.items()}


def get_peer_sampler(peer: str, sampler: str) -> PeerSampler:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}")
    if sampler not in PEERS[peer]:
        raise ValueError(f"unknown {peer} sampler {sampler!r}; choose one of {', '.join(PEERS[peer])}")
    return PEERS[peer][sampler]


def run_peer(peer: str, sampler: str, model: Denoiser, x_T: Tensor, sigmas: Any, *, prediction: str = "epsilon",
             final_limit: bool = True) -> Tensor:
    """Run a peer's own sampler on ``model`` from ``x_T`` (the state at ``sigmas[0]``) along ``sigmas``.

    Args:
        peer: ``"diffusers"`` or ``"kdiffusion"``; ``sampler`` a name from ``list_peer_samplers()[peer]``.
        model: a fewstep ``Denoiser``; x_T: ``[B, ...]`` in sigma space; sigmas: a decreasing grid with a
            finite first entry, ending at 0 or at a positive sigma.
        prediction: what the stand-in model predicts for diffusers schedulers (``epsilon``,
            ``v_prediction`` or ``sample``; ``ipndm`` always gets ``v_prediction``).
        final_limit: for the diffusers samplers that cannot step to sigma = 0 (``unipc_bh1``, ``deis``),
            replace that first-order step by its limit ``x = D``; ``False`` runs them verbatim (NaN).

    Returns:
        The peer's final state in sigma space, in ``x_T``'s dtype (use float64 for cross-checks).
    """
    spec = get_peer_sampler(peer, sampler)
    grid = check_sigmas(torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu())
    if not math.isfinite(float(grid[0])):
        raise ValueError(f"peers need a finite sigmas[0]; got {float(grid[0])}")
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a fewstep Denoiser; got {type(model).__name__}")
    if peer == "kdiffusion":
        fn = getattr(load_kdiffusion_sampling(), spec.target.split("(")[0])
        return fn(model, x_T, grid.to(device=x_T.device, dtype=x_T.dtype), disable=True, **spec.kwargs)
    if prediction not in PREDICTION_TYPES or prediction == "flow_prediction":
        raise ValueError(f"prediction must be one of 'epsilon', 'v_prediction', 'sample'; got {prediction!r}")

    from fewstep.bench import _diffusers_peers  # imports diffusers: only when a diffusers sampler runs

    return _diffusers_peers.run(spec, model, x_T, [float(s) for s in grid], prediction, final_limit)


# ----------------------------------------------------------------------------------------------
# k-diffusion's sampling.py, loaded on its own
# ----------------------------------------------------------------------------------------------

_KDIFFUSION: types.ModuleType | None = None


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """k-diffusion's ``utils.append_dims``: view ``x`` with trailing singleton dims up to ``target_dims``."""
    extra = target_dims - x.ndim
    if extra < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * extra]


def load_kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling.py`` as a module, without importing the ``k_diffusion`` package.

    The package ``__init__`` imports torchvision (through ``utils``), which fewstep never imports.
    ``sampling.py`` needs only ``utils.append_dims`` from it, so it is loaded under a private package
    whose ``utils`` provides that one function. Raises ``ImportError`` (with the reason) when
    k-diffusion or one of the modules ``sampling.py`` imports (scipy, torchsde, torchdiffeq, tqdm) is missing.
    """
    global _KDIFFUSION
    if _KDIFFUSION is not None:
        return _KDIFFUSION
    found = importlib.util.find_spec("k_diffusion")
    if found is None or not found.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    path = next(iter(found.submodule_search_locations)) + "/sampling.py"
    for dep in ("scipy", "torchsde", "torchdiffeq", "tqdm"):
        if importlib.util.find_spec(dep) is None:
            raise ImportError(f"k-diffusion's sampling.py imports {dep}, which is not installed")
    pkg_name = "_fewstep_kdiffusion"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []
    utils = types.ModuleType(f"{pkg_name}.utils")
    utils.append_dims = _append_dims
    sys.modules[pkg_name], sys.modules[f"{pkg_name}.utils"] = pkg, utils
    pkg.utils = utils
    loader_spec = importlib.util.spec_from_file_location(f"{pkg_name}.sampling", path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[loader_spec.name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception:
        del sys.modules[loader_spec.name]
        raise
    _KDIFFUSION = module
    return module


# ----------------------------------------------------------------------------------------------
# benchmark rows
# ----------------------------------------------------------------------------------------------

# What a user of each peer runs with no options: k-diffusion's ``sample_dpmpp_2m`` on its Karras grid, and
# diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)) on the grid it makes for the model's family.
PEER_DEFAULT_SAMPLER = "dpmpp_2m"


def default_grid(peer: str, model: Denoiser, nfe: int) -> Tensor:
    """The grid ``peer``'s default sampler runs on at ``nfe`` (DPM-Solver++(2M): one evaluation per step).

    k-diffusion: ``get_sigmas_karras`` over the model's range (from ``SIGMA_CAP`` when ``sigma_max`` is infinite).
    diffusers: Karras sigmas for a sigma-space model, the ``linspace`` timesteps (its default
    ``timestep_spacing``; the multistep schedulers space ``nfe + 1`` of them and drop ``t = 0``) for a discrete VP
    model, and ``use_flow_sigmas`` (``flow_sigmas``) for a flow model.
    """
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}")
    family = model.process.family
    if peer == "diffusers" and family == "vp_discrete":
        spaced = get_sigmas("discrete", nfe + 1, model, spacing="linspace")  # ..., sigma(t = 0), 0
        return torch.cat([spaced[:-2], spaced[-1:]])
    if peer == "diffusers" and family == "flow":
        return get_sigmas("flow_sigmas", nfe, model)
    top = float(model.sigma_max) if math.isfinite(model.sigma_max) else SIGMA_CAP
    return get_sigmas("karras", nfe, model, sigma_max=top)


def peer_rows(spec, progress: bool = True) -> list[dict[str, Any]]:
    """One row per peer sampler, schedule and NFE of ``spec`` (on the grid of its fewstep equivalent); and, where
    ``spec.solvers`` holds ``default``, one row per peer and NFE for the peer's default (``default_grid``)."""
    from tqdm import tqdm

    if not is_main():
        return []
    rows: list[dict[str, Any]] = []
    todo = [(m, p, s, sc, n) for m in spec.models for p in spec.peers for s in PEERS[p]
            for sc in spec.schedules for n in spec.nfes]
    if "default" in spec.solvers:
        todo += [(m, p, PEER_DEFAULT_SAMPLER, "default", n) for m in spec.models for p in spec.peers
                 for n in spec.nfes]
    common = {"device": device_name(), "versions": versions(), "seeds": len(spec.seeds)}
    loaded: dict[str, tuple] = {}
    for model_name, peer, sampler, schedule, nfe in tqdm(todo, disable=not progress, desc="peers", unit="cfg"):
        if model_name not in loaded:
            m = CountingDenoiser(load_model(model_name))
            loaded[model_name] = (m, DataReference(m.inner), {})
        model, data, refs = loaded[model_name]
        info = PEERS[peer][sampler]
        label = f"{peer}:{sampler}"
        row = {"model": model_name, "solver": label, "label": label, "schedule": schedule, "nfe_budget": nfe,
               "source": peer, "fewstep_equivalent": info.fewstep, **common}
        try:
            if schedule == "default":  # scored against the reference from where the peer's grid starts
                sigmas = default_grid(peer, model, nfe)
                top = float(sigmas[0])
            else:  # scored from the model's own start, as fewstep's rows
                top = model.sigma_max if math.isfinite(model.sigma_max) else SIGMA_CAP
                n = plan_steps(info.fewstep or info.nearest, nfe)
                sigmas = get_sigmas(schedule, n, model, sigma_max=top if top != model.sigma_max else None)
            x_T = float(sigmas[0]) * seeded_noise(spec.seeds, model.shape, dtype=torch.float64)
            with torch.no_grad():
                run_peer(peer, sampler, model, x_T[:2], sigmas)  # warm-up pass (imports, caches)
            model.reset()
            t0 = time.perf_counter()
            with torch.no_grad():
                x = run_peer(peer, sampler, model, x_T, sigmas)
            row["wall_s"] = time.perf_counter() - t0
            row["nfe"] = model.calls
        except Exception as exc:  # a peer that cannot run this configuration is reported, not hidden
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        if "rmse_ref" in spec.metrics and top not in refs:
            refs[top] = reference_samples(model.inner, spec.seeds, sigma_max=top, rtol=spec.extra.get("rtol", 1e-6))[0]
        row.update(compute_metrics(spec.metrics, x.to(torch.float64), refs.get(top), data))
        rows.append(row)
    return rows
