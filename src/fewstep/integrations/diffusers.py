"""``FewstepScheduler``: any fewstep solver and schedule behind diffusers' scheduler protocol.

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="unipc")

``from_config`` reads the pipeline's scheduler config completely (its class's defaults included): the model
keys, the grid (by default the one the source scheduler's own ``set_timesteps`` builds) and, without a
``solver`` argument, the fewstep solver of the source's algorithm; every key it cannot honour is named in an
``IgnoredConfigWarning`` (docs/compat.md). The pipeline's state is the model-space ``x_t`` (so
``scale_model_input`` is the identity); the solver's state is fewstep's ``x = x_t / a``. Each ``step`` takes
one model output, converts it to ``D`` with the same ``DiffusersSpec`` as ``from_diffusers``, and lets the
solver run to its next evaluation (``_stepper``). ``timesteps`` lists one entry per model evaluation, so a
Heun or singlestep solver is called ``order`` times per step, as diffusers' ``HeunDiscreteScheduler`` is. A
stochastic solver draws its noise from the generator the pipeline passes to ``step``.

The config is read key by key in ``fewstep.diffusion.scheduler_config``; the source scheduler's class, defaults
and grid are looked up in ``_diffusers_source``.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.from_diffusers import DiffusersSpec, spec_from_config
from fewstep.diffusion.sampling import _check_solver_options
from fewstep.diffusion.scheduler_config import IgnoredConfigWarning, read_scheduler_config
from fewstep.diffusion.schedules import check_sigmas, get_sigmas, list_schedules
from fewstep.diffusion.solvers import get_solver
from fewstep.diffusion.solvers.stochastic import ancestral_split
from fewstep.integrations._diffusers_source import (
    COMPATIBLES,
    first_input,
    init_defaults,
    scheduler_class,
    source_class,
    source_grid,
)
from fewstep.integrations._stepper import Evaluation, Finished, Request, SolverRun, plan_evaluations

Tensor = torch.Tensor
DEFAULT_SOLVER = "dpmpp_2m"
_DDIM_FAMILY = ("ddim", "euler", "euler_ancestral")  # first-order steps, x' = r x + (1 - r) D (+ noise)
_FLOAT32_NOISE = ("dpmpp_2m_sde", "dpmpp_3m_sde")  # DPMSolverMultistepScheduler draws its SDE noise in float32


@dataclass
class FewstepSchedulerOutput(BaseOutput):
    """``prev_sample``: the state for the next model call (or the final sample), in model space;
    ``pred_original_sample``: the ``D`` of this model output."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a registered fewstep solver.

    Args:
        solver: a solver from ``fewstep.list_solvers()``; ``solver_options`` its options. A stochastic solver
            draws its noise from the ``generator`` given to ``step``.
        schedule: a name from ``fewstep.list_schedules()``; by default the ``source`` scheduler's own grid, else
            ``discrete`` with ``timestep_spacing`` (VP) or ``time_uniform`` (flow, diffusers' shifted grid).
        schedule_options: options of the schedule (e.g. ``{"rho": 7}``).
        final: with a ``schedule``, ``"zero"`` ends the grid at sigma = 0, ``"min"`` at the model's sigma_min
            (then ``denoise_to_zero`` adds one evaluation that returns ``D``).
        float64: keep the solver state in float64 (the model still runs in its own dtype).
        sigma_min, sigma_max: override the model's sigma range for the schedule.
        source: the complete config (with ``_class_name``) of the diffusers scheduler this one replaces; set
            by ``from_config``. Its ``set_timesteps`` gives the default grid and ``init_noise_sigma``.
        The remaining arguments are the usual diffusers config keys (betas, ``prediction_type``,
        ``rescale_betas_zero_snr``, ``clip_sample``, ``thresholding``, flow ``shift``, ...), read by
        ``fewstep.diffusion.from_diffusers.spec_from_config``.
    """

    _compatibles = list(COMPATIBLES)
    order = 1

    @register_to_config
    def __init__(self, solver: str = DEFAULT_SOLVER, solver_options: dict | None = None, schedule: str | None = None,
                 schedule_options: dict | None = None, final: str = "zero", denoise_to_zero: bool = False,
                 float64: bool = False, sigma_min: float | None = None, sigma_max: float | None = None,
                 source: dict | None = None, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear", trained_betas: list | None = None,
                 prediction_type: str = "epsilon", rescale_betas_zero_snr: bool = False, clip_sample: bool = False,
                 clip_sample_range: float = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 shift: float = 1.0, use_dynamic_shifting: bool = False, time_shift_type: str = "exponential",
                 base_shift: float = 0.5, max_shift: float = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096):
        info = get_solver(solver)
        _check_solver_options(info, dict(solver_options or {}))
        if schedule is not None and schedule not in list_schedules():
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(list_schedules())}")
        if final not in ("zero", "min"):
            raise ValueError(f"final must be 'zero' or 'min'; got {final!r}")
        if source is not None and scheduler_class(source.get("_class_name")) is None:
            raise ValueError(f"source must be the config of a diffusers scheduler (with its _class_name); got "
                             f"_class_name={source.get('_class_name')!r}")
        self.order = info.evals_per_step
        self._spec = None if use_dynamic_shifting else spec_from_config(self.config)
        if self._spec is not None and self._spec.kind == "vp":
            self.alphas_cumprod = torch.from_numpy(self._spec.process.alphas_cumprod).float()
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._plan: list[Evaluation] | None = None
        self._grid: list[float] = []
        self._sigma_at: dict[float, float] = {}
        self._first_input = (first_input(scheduler_class(source["_class_name"]).from_config(source))
                             if source is not None and schedule is None else 1.0)
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._reset_run()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Replace the scheduler that has ``config`` (``pipe.scheduler.config``); ``kwargs`` are this class's
        arguments. Without ``solver`` the source's algorithm runs where fewstep has it (DPM-Solver++ 2M/3M and
        their SDE forms, UniPC, DDIM, DDPM, Euler, Euler ancestral, Heun, ...); the grid is the source's own
        unless ``schedule`` is given. A key that cannot be honoured is named in an ``IgnoredConfigWarning``."""
        cfg = dict(config or {})
        if kwargs.get("solver", "") is None:  # solver=None: the source's own algorithm
            del kwargs["solver"]
        name = cfg.get("_class_name")
        if name == cls.__name__ or (name is None and "solver" in cfg):  # a FewstepScheduler's own config
            return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)
        source_cls, sampler_known = source_class(cfg)
        if source_cls is not None:
            cfg["_class_name"] = source_cls.__name__
        read = read_scheduler_config(cfg, init_defaults(source_cls) if source_cls else None,
                                     solver=kwargs.get("solver"), schedule=kwargs.get("schedule"),
                                     fallback=DEFAULT_SOLVER, sampler_known=sampler_known)
        for message in read.notes.values():
            warnings.warn(f"FewstepScheduler.from_config does not honour {message}", IgnoredConfigWarning,
                          stacklevel=2)
        own = set(inspect.signature(cls.__init__).parameters)
        init = {k: v for k, v in read.model.items() if k in own}
        if read.source is not None:
            init["source"] = read.source
        if read.solver is not None:
            init["solver"] = read.solver
            if read.options:
                kwargs["solver_options"] = {**read.options, **(kwargs.get("solver_options") or {})}
        return super().from_config({**init, "_class_name": cls.__name__}, return_unused_kwargs=return_unused_kwargs,
                                   **kwargs)

    # -- diffusers protocol -------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """The pipeline draws ``latents = noise * init_noise_sigma`` as its first model input: 1 (diffusers'
        VP and flow schedulers start from ``x_t = noise``), or, on the grid of a source that keeps the state
        in sigma space (Euler, Heun, ...), that source's first model input per unit noise."""
        return self._first_input

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
        """Build the grid and list one timestep per model evaluation (float32, on ``device``).

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
        times: dict[float, float] = {}
        if sigmas is not None:
            grid = self._grid_from_sigmas(spec, sigmas, num_inference_steps)
        elif timesteps is not None:
            t = torch.as_tensor(list(timesteps), dtype=torch.float64)
            grid = check_sigmas(torch.cat([spec.sigma_of_time(t), t.new_zeros(1)]))
            times = dict(zip(grid.tolist(), t.tolist()))
        elif cfg.schedule is None and cfg.source is not None:
            grid, times, self._first_input = source_grid(cfg.source, int(num_inference_steps), spec, mu)
        else:
            grid = self._default_grid(spec, num_inference_steps)
        self._spec, self._grid = spec, [float(v) for v in grid]
        options = self._with_schedule(cfg.solver, cfg.solver_options or {})
        self._plan = plan_evaluations(cfg.solver, self._grid, options, denoise_to_zero=cfg.denoise_to_zero)
        self.num_inference_steps = len(self._grid) - 1
        model_times = spec.model_time(torch.tensor([e.sigma for e in self._plan], dtype=torch.float64)).tolist()
        ts = torch.tensor([times.get(e.sigma, m) for e, m in zip(self._plan, model_times)], dtype=torch.float32)
        self._sigma_at = {}
        for t, e in zip(ts.tolist(), self._plan):
            self._sigma_at.setdefault(t, e.sigma)
        self.timesteps = ts.to(device)
        self.sigmas = torch.tensor(self._grid, dtype=torch.float32, device=device)
        self._step_index = self._begin_index = None
        self._reset_run()

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: Any = None,
             return_dict: bool = True, *, eta: float = 0.0,
             use_clipped_model_output: bool | None = None) -> FewstepSchedulerOutput | tuple:
        """Feed one model output to the solver and return the state of its next evaluation.

        Args:
            generator: a ``torch.Generator`` (or one per sample) for a stochastic solver's noise, drawn as
                diffusers' schedulers draw theirs (``randn_tensor`` shaped like the model output).
            eta: DDIM's stochasticity (``DDIMPipeline``): ``eta > 0`` turns ``ddim`` / ``euler`` into
                ``euler_ancestral(eta=eta)``, DDIM's eta-step; other solvers refuse it. 0 changes nothing.
            use_clipped_model_output: as ``DDIMScheduler`` when ``clip_sample`` or thresholding is on: ``False``
                steps with the model's own eps (the default of ``ddim``; first-order solvers only), ``True``
                with the eps of the clipped x0 (every other solver's default: they step with ``D``).

        If ``sample`` is not the state this scheduler returned last (a pipeline that blends latents, such as
        inpainting), the solver continues from ``sample`` and keeps its history (``_stepper``).
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
        out = _mean_prediction(model_output, sample)
        sigma = torch.full((sample.shape[0],), ev.sigma, dtype=torch.float64, device=sample.device)
        self._generator, self._noise_like = generator, out
        if self._run is None:
            xt = sample.to(dtype)
            self._start(ev, self._spec.state(xt, sigma), eta, use_clipped_model_output)
            # a solver that moves the state before its first evaluation (EDM's churn, ddpm_accelerated) gets the
            # pipeline's sample there, where the model was evaluated
            self._run.set_state(self._spec.state(xt, sigma))
        else:
            if (eta, use_clipped_model_output) != self._step_args:
                raise ValueError(f"eta and use_clipped_model_output must stay as they were at the first step "
                                 f"{self._step_args}; got {(eta, use_clipped_model_output)}")
            if self._is_handed_out(sample):
                xt = self._xt
            else:
                xt = sample.to(dtype)
                self._run.set_state(self._spec.state(xt, sigma))
        if self._request.sigma != ev.sigma:
            raise RuntimeError(f"the solver asked for sigma = {self._request.sigma}, the plan for {ev.sigma}")
        try:
            x0 = self._spec.raw_x0(out.to(dtype), xt, sigma)
            denoised = self._spec.postprocess(x0)
            result = self._run.send(self._ddim_target(ev, denoised, x0) if self._unclipped else denoised)
        except BaseException:
            self._reset_run()  # a NaN model output (ModelOutputError) or a bad value ends this run
            raise
        self._step_index += 1
        if isinstance(result, Request):
            self._request = result
            self._xt = self._spec.model_input(result.x, torch.full_like(sigma, result.sigma))
            prev = self._handed = self._xt.to(sample.dtype)
        else:
            prev = self._final_sample(result).to(sample.dtype)
            self._reset_run()
        out = (prev, denoised.to(sample.dtype))
        return FewstepSchedulerOutput(*out) if return_dict else out

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = a x0 + b eps`` at the sigma of each model timestep (img2img, inpainting): the grid's sigma
        for one of ``self.timesteps`` (as diffusers' schedulers look it up), else the training timestep's."""
        spec = self._spec or spec_from_config(self.config, mu=0.0)
        t = torch.as_tensor(timesteps).flatten().to(original_samples.device)
        if t.numel() == 1:
            t = t.expand(original_samples.shape[0])
        by_time = spec.sigma_of_time(t.cpu()).tolist()
        s = [self._sigma_at.get(v, by_time[i]) for i, v in enumerate(t.float().tolist())]
        a, b = spec.coeffs(torch.tensor(s, dtype=torch.float64, device=t.device), original_samples)
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

    def _start(self, ev: Evaluation, x: Tensor, eta: float, use_clipped_model_output: bool | None) -> None:
        if ev.grid_index is None:
            raise ValueError(f"a run cannot start at evaluation {self._step_index}, inside a {self.config.solver} "
                             "step; begin where a step begins")
        cfg = self.config
        solver, options = self._run_solver(eta)
        unclipped = use_clipped_model_output is False or (use_clipped_model_output is None and cfg.solver == "ddim")
        if unclipped and self._spec.postprocessed and solver not in _DDIM_FAMILY:
            raise ValueError(f"use_clipped_model_output=False (step with the unclipped eps) is DDIM's first-order "
                             f"step; solver {solver!r} steps with the clipped x0 (pass True or None)")
        self._reset_run()
        self._step_args = (eta, use_clipped_model_output)
        self._eta = float(options.get("eta", 1.0)) if solver == "euler_ancestral" else 0.0  # the step's s_down
        self._unclipped = unclipped and self._spec.postprocessed
        self._noise_dtype = torch.float32 if solver in _FLOAT32_NOISE else None
        self._state_dtype = x.dtype
        self._run = SolverRun(solver, x, self._grid[ev.grid_index:], self._with_schedule(solver, options),
                              noise=_StepNoise(self),
                              denoise_to_zero=cfg.denoise_to_zero)
        self._finalizer = weakref.finalize(self, self._run.close)
        first = self._run.start()
        if not isinstance(first, Request):
            raise RuntimeError("the solver finished without evaluating the model")
        self._request = first

    def _with_schedule(self, solver: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with the config's ``alphas_cumprod`` for a solver that measures time in the training
        schedule (``ddim_ts``): its run sees the model only through ``D``, so it cannot read the schedule there."""
        options = dict(options)
        if "alphas_cumprod" in get_solver(solver).options and "alphas_cumprod" not in options \
                and self._spec.kind == "vp":
            options["alphas_cumprod"] = self._spec.process.alphas_cumprod
        return options

    def _run_solver(self, eta: float) -> tuple[str, dict[str, Any]]:
        """The solver and options of a run with DDIM's ``eta`` from the pipeline."""
        solver, options = self.config.solver, dict(self.config.solver_options or {})
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0; got {eta!r}")
        if eta == 0:
            return solver, options
        if solver in ("ddim", "euler"):
            return "euler_ancestral", {"eta": float(eta)}
        if solver == "euler_ancestral" and options.get("eta", eta) == eta:
            return solver, {**options, "eta": float(eta)}
        raise ValueError(f"eta={eta} is DDIM's stochastic step, which solver {solver!r} "
                         f"{'with eta=' + repr(options['eta']) if 'eta' in options else ''} cannot take; use "
                         "solver='ddim' (its eta > 0 is euler_ancestral) or a stochastic solver's own options")

    def _ddim_target(self, ev: Evaluation, denoised: Tensor, x0: Tensor) -> Tensor:
        """The ``D`` that makes a first-order step ``x' = r x + (1 - r) D`` equal DDIM's
        ``x' = x0_clipped + s_down eps`` with the model's unclipped ``eps = (x - x0) / s``."""
        if ev.grid_index is None:  # denoise_to_zero's last evaluation returns D itself
            return denoised
        s, s_next = self._grid[ev.grid_index], self._grid[ev.grid_index + 1]
        if math.isinf(s) or s_next == 0:
            return denoised
        r = ancestral_split(s, s_next, self._eta)[0] / s
        return (denoised - r * x0) / (1 - r)

    def _draw(self) -> Tensor:
        """Standard-normal noise for the solver, drawn from the step's generator as diffusers draws it."""
        like = self._noise_like
        z = randn_tensor(like.shape, generator=self._generator, device=like.device,
                         dtype=self._noise_dtype or like.dtype)
        return z.to(self._state_dtype)

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
        self._step_args: tuple = (0.0, None)
        self._unclipped, self._eta = False, 0.0


class _StepNoise:
    """A solver's ``noise(sigma, sigma_next)``: draws from the generator of the scheduler's current ``step``.
    ``spawn`` (Restart's independent streams) draws from the same generator, whose successive draws are
    independent. The scheduler is held weakly, so that an abandoned scheduler still closes its run."""

    def __init__(self, scheduler: FewstepScheduler):
        self._scheduler = weakref.ref(scheduler)

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        return self._scheduler()._draw()

    def spawn(self, index: int) -> _StepNoise:
        return self


def _mean_prediction(model_output: Tensor, sample: Tensor) -> Tensor:
    """A learned-variance output (twice the sample's channels) keeps its first half, as diffusers does."""
    if model_output.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1] \
            and model_output.shape[2:] == sample.shape[2:]:
        return model_output[:, : sample.shape[1]]
    return model_output
