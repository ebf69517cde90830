"""The diffusers side of ``run_peer``: build each scheduler, replace its grid, drive it with a stand-in model.

Every scheduler below reads its grid from ``self.sigmas`` (DDIM from ``alphas_cumprod``, IPNDM from
``betas`` / ``alphas``), indexed by its step counter; ``timesteps`` only locate the first step. So
after ``set_timesteps`` the grid is overwritten in float64 and the timesteps by distinct dummies.
VP-space schedulers (DDIM, DPM-Solver, UniPC, DEIS, IPNDM) hold ``x_t = a x``; Euler and Heun hold
fewstep's ``x`` and scale it in ``scale_model_input``.
"""

from __future__ import annotations

import math

import diffusers
import torch

from fewstep.diffusion.conversions import from_x0
from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.from_diffusers import PREDICTION_TYPES
from fewstep.diffusion.processes import vp_coeffs

Tensor = torch.Tensor


def _t64(values) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _a(sigma: float) -> float:
    return float(vp_coeffs(torch.tensor(sigma, dtype=torch.float64))[0])


def _dummy_timesteps(n: int) -> Tensor:
    return torch.arange(n, 0, -1, dtype=torch.float32)


def _ddim(spec, grid, prediction, zero):
    n = len(grid) - 1
    sch = diffusers.DDIMScheduler(num_train_timesteps=n, clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="leading", steps_offset=0, prediction_type=prediction)
    sch.set_timesteps(n)  # timesteps n-1, ..., 0 with step ratio 1: training step j is grid point n-1-j
    sch.alphas_cumprod = (1 / (1 + _t64(grid[:-1]) ** 2)).flip(0)
    sch.final_alpha_cumprod = torch.tensor(1 / (1 + grid[-1] ** 2), dtype=torch.float64)
    return sch, grid[:-1], "vp"


def _euler(spec, grid, prediction, zero):
    sch = diffusers.EulerDiscreteScheduler(prediction_type=prediction)
    sch.set_timesteps(len(grid) - 1)
    sch.sigmas, sch.timesteps = _t64(grid), _dummy_timesteps(len(grid) - 1)
    return sch, grid[:-1], "ve"


def _heun(spec, grid, prediction, zero):
    # [s0, s1, s1, ..., s_N] ending in 0 (the last step is Euler: 2N - 1 evaluations), or
    # [s0, s1, s1, ..., s_N, s_N] ending above 0 (the last step is corrected too: 2N evaluations).
    inner = grid[1:-1] if zero else grid[1:]
    sigmas = [grid[0]] + [s for s in inner for _ in (0, 1)] + ([0.0] if zero else [])
    evals = len(sigmas) - 1
    sch = diffusers.HeunDiscreteScheduler(prediction_type=prediction)
    sch.set_timesteps(len(grid) - 1)
    sch.sigmas, sch.timesteps = _t64(sigmas), _dummy_timesteps(evals)
    return sch, sigmas[:evals], "ve"


def _multistep(cls_name):
    def build(spec, grid, prediction, zero):
        cls = getattr(diffusers, cls_name)
        kwargs = dict(spec.kwargs)
        if cls_name != "DEISMultistepScheduler":
            kwargs["final_sigmas_type"] = "zero" if zero else "sigma_min"
        sch = cls(prediction_type=prediction, **kwargs)
        sch.set_timesteps(len(grid) - 1)
        sch.sigmas, sch.timesteps = _t64(grid), _dummy_timesteps(len(grid) - 1)
        return sch, grid[:-1], "vp"

    return build


def _singlestep(spec, grid, prediction, zero):
    # DPM-Solver++(2S) evaluates its intermediate point on the grid: insert the log-SNR midpoints, so
    # that every second-order pair has r = 1/2. A final step to 0 stays first order.
    sigmas = []
    for s, s_next in zip(grid[:-1], grid[1:]):
        sigmas += [s] if s_next == 0 else [s, math.sqrt(s * s_next)]
    sigmas.append(grid[-1])
    n = len(sigmas) - 1
    sch = diffusers.DPMSolverSinglestepScheduler(prediction_type=prediction, lower_order_final=zero,
                                                 final_sigmas_type="zero" if zero else "sigma_min", **spec.kwargs)
    sch.set_timesteps(n)
    expected = [1, 2] * (n // 2) + [1] * (n % 2)
    if list(sch.order_list) != expected:
        raise RuntimeError(f"DPMSolverSinglestepScheduler chose orders {sch.order_list}, expected {expected}")
    sch.sigmas, sch.timesteps = _t64(sigmas), _dummy_timesteps(n)
    return sch, sigmas[:-1], "vp"


def _ipndm(spec, grid, prediction, zero):
    n = len(grid) - 1
    sch = diffusers.IPNDMScheduler()
    sch.set_timesteps(n)
    a, b = vp_coeffs(_t64(grid))
    sch.alphas, sch.betas, sch.timesteps = a, b, _dummy_timesteps(n)  # its "betas" are the VP sigmas
    return sch, grid[:-1], "vp"


_BUILDERS = {
    "ddim": _ddim, "euler": _euler, "heun": _heun, "dpmpp_2m": _multistep("DPMSolverMultistepScheduler"),
    "dpmpp_3m": _multistep("DPMSolverMultistepScheduler"), "dpmpp_2s": _singlestep,
    "unipc": _multistep("UniPCMultistepScheduler"), "unipc_bh1": _multistep("UniPCMultistepScheduler"),
    "deis": _multistep("DEISMultistepScheduler"), "ipndm": _ipndm,
}


def stand_in_output(model: Denoiser, xt: Tensor, sigma: float, prediction: str) -> Tensor:
    """What a diffusers model of type ``prediction`` outputs at the VP model-space state ``xt``
    when its denoiser is exactly ``model``: ``x = xt / a``, ``D = model(x, sigma)``, then convert."""
    s = torch.tensor(sigma, dtype=torch.float64)
    a, b = (float(c) for c in vp_coeffs(s))
    x0 = model(xt / a, sigma)
    return from_x0(PREDICTION_TYPES[prediction], x0, xt, torch.tensor(a, dtype=xt.dtype),
                   torch.tensor(b, dtype=xt.dtype))


def run(spec, model: Denoiser, x_T: Tensor, grid: list[float], prediction: str, final_limit: bool) -> Tensor:
    zero = grid[-1] == 0
    limit = final_limit and zero and spec.name in ("unipc_bh1", "deis")
    if limit and spec.name == "deis" and len(grid) - 1 >= 15:
        raise ValueError("diffusers' DEIS takes a higher-order step to sigma = 0 when it has 15 or more steps, "
                         "and its coefficients are NaN there (0 log 0); give a grid ending at a positive sigma")
    if spec.name == "ipndm":
        prediction = "v_prediction"
    sch, eval_sigmas, space = _BUILDERS[spec.name](spec, grid, prediction, zero)
    state = x_T if space == "ve" else _a(grid[0]) * x_T
    last = len(sch.timesteps) - 1
    for k, t in enumerate(sch.timesteps):
        xin = sch.scale_model_input(state, t)
        s = eval_sigmas[k]
        if limit and k == last:  # the first-order step to sigma = 0 has the limit x = D
            return model(xin / _a(s), s)
        out = stand_in_output(model, xin, s, prediction)
        state = sch.step(out, t, state, return_dict=False)[0]
    return state if space == "ve" else state / _a(grid[-1])
