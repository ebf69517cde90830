"""``FewstepScheduler``: any deterministic fewstep solver and schedule behind diffusers' scheduler protocol.

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="unipc", schedule="karras")

The pipeline's state is the model-space ``x_t`` (so ``scale_model_input`` is the identity and
``init_noise_sigma = b(sigma_0)``); the solver's state is fewstep's ``x = x_t / a``. Each ``step`` takes
one model output, converts it to ``D`` with the same ``DiffusersSpec`` as ``from_diffusers``, and lets
the solver run to its next evaluation (see ``_stepper`` and docs/design.md). ``timesteps`` lists one
entry per model evaluation, so a Heun or singlestep solver is called ``order`` times per step, as
diffusers' ``HeunDiscreteScheduler`` is. For the same noise the pipeline gives what
``fewstep.sample(from_diffusers(model, config), noise=...)`` gives.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.from_diffusers import DiffusersSpec, is_flow_config, spec_from_config
from fewstep.diffusion.sampling import _check_solver_options
from fewstep.diffusion.schedules import check_sigmas, get_sigmas, list_schedules
from fewstep.diffusion.solvers import get_solver
from fewstep.integrations._stepper import Evaluation, Finished, Request, SolverRun, plan_evaluations

Tensor = torch.Tensor


@dataclass
class FewstepSchedulerOutput(BaseOutput):
    """``prev_sample``: the state for the next model call (or the final sample), in model space;
    ``pred_original_sample``: the ``D`` of this model output."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a registered deterministic fewstep solver.

    Args:
        solver: a deterministic solver from ``fewstep.list_solvers()``; ``solver_options`` its options.
        schedule: a name from ``fewstep.list_schedules()``; by default ``discrete`` with the config's
            ``timestep_spacing`` for VP models and ``time_uniform`` (diffusers' shifted grid) for flow models.
        schedule_options: options of the schedule (e.g. ``{"rho": 7}``).
        final: ``"zero"`` ends the grid at sigma = 0, ``"min"`` at the model's sigma_min
            (then ``denoise_to_zero`` adds one evaluation that returns ``D``).
        float64: keep the solver state in float64 (the model still runs in its own dtype).
        sigma_min, sigma_max: override the model's sigma range for the schedule.
        The remaining arguments are the usual diffusers config keys (betas, ``prediction_type``,
        ``rescale_betas_zero_snr``, ``clip_sample``, ``thresholding``, flow ``shift``, ...), read by
        ``fewstep.diffusion.from_diffusers.spec_from_config``.
    """

    _compatibles: list = []

    @register_to_config
    def __init__(self, solver: str = "dpmpp_2m", solver_options: dict | None = None, schedule: str | None = None,
                 schedule_options: dict | None = None, final: str = "zero", denoise_to_zero: bool = False,
                 float64: bool = False, sigma_min: float | None = None, sigma_max: float | None = None,
                 num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: list | None = None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", steps_offset: int = 0, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential", base_shift: float = 0.5,
                 max_shift: float = 1.15, base_image_seq_len: int = 256, max_image_seq_len: int = 4096):
        info = get_solver(solver)
        if info.stochastic:
            raise ValueError(f"FewstepScheduler runs deterministic solvers; {solver!r} is stochastic")
        _check_solver_options(info, dict(solver_options or {}))
        if schedule is not None and schedule not in list_schedules():
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(list_schedules())}")
        if final not in ("zero", "min"):
            raise ValueError(f"final must be 'zero' or 'min'; got {final!r}")
        self.order = info.evals_per_step
        self._spec = None if use_dynamic_shifting else spec_from_config(self.config)
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._plan: list[Evaluation] | None = None
        self._grid: list[float] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._reset_run()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``; a flow config (``FlowMatch*``, ``use_flow_sigmas``) becomes
        ``prediction_type="flow_prediction"`` and its ``flow_shift`` becomes ``shift``."""
        cfg = dict(config or {})
        if is_flow_config(cfg):
            cfg["prediction_type"] = "flow_prediction"
            if "flow_shift" in cfg and "shift" not in cfg:
                cfg["shift"] = cfg["flow_shift"]
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- diffusers protocol -------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """``b(sigma_0)``: the pipeline draws ``x_t = b eps``, i.e. fewstep's ``x = sigma_0 eps`` (1 at sigma = inf)."""
        spec = self._spec or spec_from_config(self.config, mu=0.0)
        s0 = self._grid[0] if self._grid else spec.process.sigma_max
        return 1.0 if math.isinf(s0) else float(spec.process.coeffs(torch.tensor(s0, dtype=torch.float64))[1])

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img); it must start a step."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The identity: the pipeline's state is already the model input ``x_t``."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[float] | None = None, sigmas: list[float] | None = None,
                      mu: float | None = None) -> None:
        """Build the grid and list one timestep per model evaluation.

        Exactly one of ``num_inference_steps`` (the number of solver steps), ``timesteps`` (model
        timesteps, one per step; the grid ends at 0) or ``sigmas`` is given. ``sigmas`` follow
        diffusers' conventions: for VP configs the sigma-space grid including its final value (as
        ``EulerDiscreteScheduler``); for flow configs one flow time ``t`` per step, shifted, then 0.
        ``mu`` is the dynamic shift of flow configs with ``use_dynamic_shifting=True``.
        """
        given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1 and not (given[0] and sigmas is not None and sum(given) == 2):
            raise ValueError("pass exactly one of num_inference_steps, timesteps or sigmas; got "
                             f"num_inference_steps={num_inference_steps!r}, timesteps={timesteps is not None}, "
                             f"sigmas={sigmas is not None}")
        cfg = self.config
        spec = spec_from_config(cfg, mu=mu) if cfg.use_dynamic_shifting else self._spec
        if sigmas is not None:
            grid = self._grid_from_sigmas(spec, sigmas, num_inference_steps)
        elif timesteps is not None:
            s = spec.sigma_of_time(torch.as_tensor(list(timesteps), dtype=torch.float64))
            grid = check_sigmas(torch.cat([s, s.new_zeros(1)]))
        else:
            grid = self._default_grid(spec, num_inference_steps)
        self._spec, self._grid = spec, [float(v) for v in grid]
        options = dict(cfg.solver_options or {})
        self._plan = plan_evaluations(cfg.solver, self._grid, options, denoise_to_zero=cfg.denoise_to_zero)
        self.num_inference_steps = len(self._grid) - 1
        eval_sigmas = torch.tensor([e.sigma for e in self._plan], dtype=torch.float64)
        self.timesteps = spec.model_time(eval_sigmas).to(device=device, dtype=torch.float32)
        self.sigmas = torch.tensor(self._grid, dtype=torch.float64)
        self._step_index = self._begin_index = None
        self._reset_run()

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True) -> FewstepSchedulerOutput | tuple:
        """Feed one model output to the solver and return the state of its next evaluation.

        ``generator`` is accepted for pipelines that pass one and is unused (the solvers are deterministic).
        If ``sample`` is not the state this scheduler returned last (a pipeline that blends latents,
        such as inpainting), the solver restarts from ``sample`` at this grid point with its warm-up orders.
        """
        if self._plan is None:
            raise ValueError("call set_timesteps(...) before step(...)")
        if self._step_index is None:
            self._init_step_index(timestep)
        k = self._step_index
        if k >= len(self._plan):
            raise ValueError(f"all {len(self._plan)} evaluations of this schedule are done; call set_timesteps again")
        ev = self._plan[k]
        dtype = torch.float64 if self.config.float64 else torch.promote_types(sample.dtype, torch.float32)
        sigma = torch.full((sample.shape[0],), ev.sigma, dtype=torch.float64, device=sample.device)
        if self._request is None or not self._is_handed_out(sample):
            xt = sample.to(dtype)
            self._start(ev, self._spec.state(xt, sigma))
        else:
            xt = self._xt
        if self._request.sigma != ev.sigma:
            raise RuntimeError(f"the solver asked for sigma = {self._request.sigma}, the plan for {ev.sigma}")
        try:
            denoised = self._spec.to_x0(model_output.to(dtype), xt, sigma)
            result = self._run.send(denoised)
        except BaseException:
            self._reset_run()  # a NaN model output (ModelOutputError) or a bad value ends this run
            raise
        self._step_index += 1
        if isinstance(result, Request):
            self._request = result
            nxt = torch.full_like(sigma, result.sigma)
            self._xt = self._spec.model_input(result.x, nxt)
            prev = self._handed = self._xt.to(sample.dtype)
        else:
            prev = self._final_sample(result).to(sample.dtype)
            self._reset_run()
        out = (prev, denoised.to(sample.dtype))
        return FewstepSchedulerOutput(*out) if return_dict else out

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = a x0 + b eps`` at the sigma of each model timestep (img2img, inpainting)."""
        spec = self._spec or spec_from_config(self.config, mu=0.0)
        t = torch.as_tensor(timesteps).flatten().to(original_samples.device)
        if t.numel() == 1:
            t = t.expand(original_samples.shape[0])
        a, b = spec.coeffs(spec.sigma_of_time(t), original_samples)
        return a * original_samples + b * noise

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """The flow schedulers' name for ``add_noise`` (used by flow img2img pipelines)."""
        return self.add_noise(sample, noise, timestep)

    # -- internals --------------------------------------------------------------------------
    def _grid_from_sigmas(self, spec: DiffusersSpec, sigmas, n: int | None) -> Tensor:
        s = torch.as_tensor(list(sigmas), dtype=torch.float64)
        if spec.kind == "flow":
            if n is not None and n != s.numel():
                raise ValueError(f"flow sigmas give one value per step: got {s.numel()} for {n} steps")
            if ((s <= 0) | (s > 1)).any():
                raise ValueError(f"flow sigmas are times t in (0, 1]; got {s.tolist()}")
            shifted = spec.process.shift * s / (1 - s)
            return check_sigmas(torch.cat([shifted, shifted.new_zeros(1)]))
        if n is not None and n != s.numel() - 1:
            raise ValueError(f"sigmas include the final value: {s.numel()} sigmas make {s.numel() - 1} steps, not {n}")
        return check_sigmas(s)

    def _default_grid(self, spec: DiffusersSpec, n: int) -> Tensor:
        cfg = self.config
        name, options = cfg.schedule, dict(cfg.schedule_options or {})
        if name is None:
            name = "time_uniform" if spec.kind == "flow" else "discrete"
            if name == "discrete":
                options = {"spacing": cfg.timestep_spacing, "steps_offset": cfg.steps_offset, **options}
        return get_sigmas(name, int(n), Denoiser(spec.process), final=cfg.final, sigma_min=cfg.sigma_min,
                          sigma_max=cfg.sigma_max, **options)

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        t = torch.as_tensor(timestep, dtype=torch.float32).flatten()[0].to(self.timesteps.device)
        hits = [i for i in (self.timesteps == t).nonzero().flatten().tolist()]
        starts = [i for i in hits if self._plan[i].grid_index is not None]
        if not hits:
            raise ValueError(f"timestep {float(t)} is not in this scheduler's timesteps; "
                             "pass one of scheduler.timesteps")
        self._step_index = (starts or hits)[0]

    def _is_handed_out(self, sample: Tensor) -> bool:
        h = self._handed
        return sample is h or (h is not None and sample.shape == h.shape and torch.equal(sample, h))

    def _start(self, ev: Evaluation, x: Tensor) -> None:
        if ev.grid_index is None:
            raise ValueError(f"the sample was changed at evaluation {self._step_index}, inside a {self.config.solver} "
                             "step; a solver can only (re)start from a new sample where a step begins")
        self._reset_run()
        cfg = self.config
        self._run = SolverRun(cfg.solver, x, self._grid[ev.grid_index:], dict(cfg.solver_options or {}),
                              denoise_to_zero=cfg.denoise_to_zero)
        self._finalizer = weakref.finalize(self, self._run.close)
        first = self._run.start()
        if not isinstance(first, Request):
            raise RuntimeError("the solver finished without evaluating the model")
        self._request = first

    def _final_sample(self, result: Finished) -> Tensor:
        last = self._grid[-1]
        if last == 0 or self.config.denoise_to_zero:
            return result.x
        sigma = torch.full((result.x.shape[0],), last, dtype=torch.float64, device=result.x.device)
        return self._spec.model_input(result.x, sigma)

    def _reset_run(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        self._run: SolverRun | None = None
        self._finalizer = None
        self._request: Request | None = None
        self._xt: Tensor | None = None
        self._handed: Tensor | None = None
