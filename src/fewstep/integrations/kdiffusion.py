"""k-diffusion's samplers, by their own names and keywords, and every fewstep solver with k-diffusion's convention:

    from fewstep.integrations.kdiffusion import sample_dpmpp_2m_sde, sample_unipc
    x = sample_dpmpp_2m_sde(model, x, sigmas, extra_args={"cond": c}, callback=cb, disable=False, eta=1.0)
    x = sample_unipc(model, x, sigmas, extra_args={"cond": c}, order=3)

``model(x, sigma, **extra_args)`` is a k-diffusion denoiser (``sigma`` has shape ``[batch]``, the result is
the denoised ``x0``); ``x`` starts at ``sigmas[0]``; ``sigmas`` is decreasing and usually ends in 0. The callback
gets k-diffusion's keys ``x, i, sigma, sigma_hat, denoised``, the sigmas as 0-dim tensors; ``disable`` hides the
progress bar.

**k-diffusion's names** (all of k-diffusion 0.1.1's ``sample_*``) take exactly k-diffusion's signature and mean
k-diffusion's algorithm; where a fewstep solver has the same name (``euler``, ``euler_ancestral``, ``heun``,
``dpmpp_sde``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``), k-diffusion's meaning and keywords win for
that name and fewstep's own options stay reachable as ``run(name, ...)``:

=============================  ==================================================================================
``sample_euler``               ``euler``; ``s_churn > 0``: EDM churn + Euler steps (``churn``)
``sample_euler_ancestral``     ``euler_ancestral``
``sample_heun``                ``heun`` (``s_churn`` etc. are its ``S_churn``, ``S_min``, ``S_max``, ``S_noise``)
``sample_dpm_2``               ``dpm_solver_2`` (r1 = 1/2); ``s_churn > 0``: EDM churn + DPM-Solver-2 steps
``sample_dpm_2_ancestral``     ``dpm_solver_2`` (eta = 0); ancestral DPM-Solver-2 steps (``ancestral``)
``sample_lms``                 ``ipndm_v`` (order <= 4, no lower order at the end); ``lms`` above order 4
``sample_dpm_fast``            DPM-Solver-fast over ``ddim``, ``dpm_solver_2``, ``dpm_solver_3`` steps
``sample_dpm_adaptive``        DPM-Solver-12/23 with a PID step-size controller over the same steps
``sample_dpmpp_2s_ancestral``  ``dpmpp_2s`` (r = 1/2, eta = 0); ancestral 2S steps (``ancestral``)
``sample_dpmpp_sde``           ``dpmpp_sde``
``sample_dpmpp_2m``            ``dpmpp_2m`` (lower_order_final=False)
``sample_dpmpp_2m_sde``        ``dpmpp_2m_sde`` (lower_order_final=False; solver_type 'heun' is 'taylor')
``sample_dpmpp_3m_sde``        ``dpmpp_3m_sde`` (official coefficients) with a Taylor warm-up step
=============================  ==================================================================================

**Every fewstep solver** ``name`` not in that list is ``sample_<name>(model, x, sigmas, extra_args=None,
callback=None, disable=None, **options)`` with the solver's options (``fewstep.list_solvers()``), including
solvers registered after import.

**Noise.** A stochastic sampler draws ``noise_sampler(sigma, sigma_next) -> Tensor`` (standard normal, shaped
like ``x``). By default it comes from the global torch RNG, as in k-diffusion: ``torch.randn_like(x)``, or for
``dpmpp_sde``, ``dpmpp_2m_sde`` and ``dpmpp_3m_sde`` a Brownian path per sample (``fewstep.diffusion.noise``)
seeded by ``torch.randint``. fewstep's noise objects are noise samplers, so
``noise_sampler=make_noise("gaussian", seeds, x.shape[1:], x.dtype)`` gives each sample its own seed.

**Differences from k-diffusion**, on purpose: fewstep draws only the noise it uses (k-diffusion also draws churn
noise at steps without churn and ancestral noise that it scales by 0), so a global seed gives k-diffusion's own
sample exactly when every step uses its draw, as with the default ``s_tmin``, ``s_tmax`` and ``eta > 0``; the
default Brownian paths are fewstep's, not torchsde's (the same law, other numbers); ``sample_dpm_2_ancestral`` adds
its noise on a step to ``s_down = 0 < sigma_next`` (k-diffusion leaves that state without noise);
``sample_dpm_adaptive``'s ``info["nfe"]`` counts the evaluations made (a retry reuses the one at its start); and
``sample_heun`` with churn reports the state before the churn as the callback's ``x`` (fewstep's ``heun``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.noise import BrownianNoise
from fewstep.diffusion.processes import VE
from fewstep.diffusion.sampling import Evaluator
from fewstep.diffusion.schedules import as_list, check_sigmas
from fewstep.diffusion.solvers import SOLVERS, get_solver
from fewstep.diffusion.solvers._core import emit, lam
from fewstep.integrations._kdiffusion_algorithms import (
    ancestral,
    ancestral_target,
    check_nonnegative,
    churn,
    dpm_2_step,
    dpm_solver_step,
    dpmpp_2s_step,
    dpmpp_3m_sde_taylor_warmup,
    euler_step,
    lms,
    sigma_range,
)

Tensor = torch.Tensor
NoiseSampler = Callable[[Any, Any], Tensor]


class KDiffusionDenoiser(Denoiser):
    """A k-diffusion-style ``model(x, sigma, **extra_args) -> denoised`` as a fewstep ``Denoiser``."""

    prediction = "x0"
    name = "k-diffusion-model"

    def __init__(self, model: Callable[..., Tensor], sigma_min: float = 0.0, sigma_max: float = float("inf")):
        super().__init__(VE(sigma_min, sigma_max))
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        self.model = model

    def denoise(self, x: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        return self.model(x, sigma, **(cond or {}))


# ----------------------------------------------------------------------------------------------
# noise: k-diffusion's noise_sampler behind fewstep's noise(sigma, sigma_next) protocol
# ----------------------------------------------------------------------------------------------

class KNoise:
    """A k-diffusion ``noise_sampler(sigma, sigma_next) -> Tensor`` as a fewstep noise object; it gets the sigmas
    as 0-dim tensors like ``like``, as k-diffusion passes them.

    ``whole_steps``: fewstep's ``dpmpp_sde`` draws a step's noise as two disjoint halves, ``(s, s_r)`` then
    ``(s_r, s')``, and adds them as Brownian increments; k-diffusion draws ``(s, s_r)`` and the whole ``(s, s')``.
    With it the second half is the one that makes fewstep's sum k-diffusion's whole-step draw, so any sampler
    (independent draws or a Brownian path) gives k-diffusion's result.
    """

    def __init__(self, sampler: NoiseSampler, like: Tensor, whole_steps: bool = False):
        if not callable(sampler):
            raise TypeError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next); got {sampler!r}")
        self.sampler, self.like, self.whole_steps = sampler, like, whole_steps
        self._half: tuple[float, float, Tensor] | None = None  # (s, s_r, z over [s_r, s]) of a split step

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        half, self._half = self._half, None
        if half is not None and half[1] == sigma:
            s, s_r, z_a = half
            z = self.sampler(_tensor(s, self.like), _tensor(sigma_next, self.like))
            return (math.sqrt(s - sigma_next) * z - math.sqrt(s - s_r) * z_a) / math.sqrt(s_r - sigma_next)
        z = self.sampler(_tensor(sigma, self.like), _tensor(sigma_next, self.like))
        if self.whole_steps:
            self._half = (sigma, sigma_next, z)
        return z

    def spawn(self, index: int) -> KNoise:
        """Restart's independent stream: the wrapped sampler's own ``spawn`` if it has one, else the sampler."""
        spawn = getattr(self.sampler, "spawn", None)
        return self if spawn is None else KNoise(spawn(index), self.like, self.whole_steps)


def _noise(noise_sampler: NoiseSampler | None, x: Tensor, sigmas: Any, brownian: bool = False,
           whole_steps: bool = False) -> KNoise:
    """The user's sampler, or k-diffusion's default from the global RNG: ``randn_like(x)``, or (``brownian``)
    one Brownian path per sample seeded by ``torch.randint``, as k-diffusion seeds its Brownian tree."""
    if noise_sampler is None:
        if brownian:
            seeds = torch.randint(0, 2**63 - 1, (x.shape[0],)).tolist()
            noise_sampler = BrownianNoise(seeds, x.shape[1:], x.dtype, x.device)
        else:
            noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    return KNoise(noise_sampler, _like(sigmas, x), whole_steps)


def _like(sigmas: Any, x: Tensor) -> Tensor:
    """What a sigma handed to the caller looks like: a tensor like ``sigmas`` (or ``x`` when they are no tensor)."""
    return sigmas if torch.is_tensor(sigmas) and sigmas.is_floating_point() else x


def _tensor(value: Any, like: Tensor) -> Tensor:
    return value if torch.is_tensor(value) else torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------
# the driver: the model wrapped once, the grid in float64, a progress bar, k-diffusion's callback
# ----------------------------------------------------------------------------------------------

def _drive(label: str, algorithm: Callable[..., Tensor], model, x: Tensor, sigmas: Any, extra_args, callback,
           disable, **options: Any) -> Tensor:
    """``algorithm(D, x, grid, callback=..., **options)`` over ``sigmas``."""
    ev = _evaluator(model, extra_args, sigmas)
    like, grid = _like(sigmas, x), ev.sigmas
    with tqdm(total=len(grid) - 1, disable=disable, desc=f"fewstep {label}") as bar, torch.no_grad():
        report, offset = _reporter(callback, like, bar), 0
        if math.isinf(grid[0]):  # zero terminal SNR: solve's first step in the x0 form (docs/math.md)
            d = ev(x, grid[0])
            emit(report, 0, x, grid[0], d)
            x, grid, offset = (d if grid[1] == 0 else grid[1] * x + d), grid[1:], 1
        if len(grid) > 1:
            x = algorithm(ev, x, grid, callback=_reporter(report, None, None, offset), **options)
    return x


def _evaluator(model, extra_args, sigmas: Any, check: bool = True) -> Evaluator:
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a mapping of model keywords or None; got {type(extra_args).__name__}")
    grid = as_list(check_sigmas(torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()) if check else sigmas)
    return Evaluator(model if isinstance(model, Denoiser) else KDiffusionDenoiser(model), grid, extra_args, False)


def _reporter(callback, like: Tensor | None, bar, offset: int = 0) -> Callable[[dict], None]:
    """Advance ``bar``; pass the payload on with its sigmas as tensors like ``like`` and ``i`` moved by ``offset``."""
    def report(payload: dict) -> None:
        if bar is not None:
            bar.update(1)
        if callback is not None:
            if like is not None:
                payload = {**payload, "sigma": _tensor(payload["sigma"], like),
                           "sigma_hat": _tensor(payload["sigma_hat"], like)}
            callback({**payload, "i": payload["i"] + offset} if offset else payload)
    return report


def run(solver: str, model: Callable[..., Tensor], x: Tensor, sigmas: Any, extra_args: Mapping[str, Any] | None = None,
        callback: Callable[[dict], Any] | None = None, disable: bool | None = None,
        noise_sampler: NoiseSampler | None = None, **options: Any) -> Tensor:
    """fewstep's solver ``solver`` with its own options, in k-diffusion's convention (what ``sample_<name>`` of a
    fewstep-only name calls). ``noise_sampler`` feeds a solver that draws noise (default: ``randn_like``)."""
    info = get_solver(solver)
    bad = sorted(set(options) - set(info.options))
    if bad:
        valid = ", ".join(f"{k}={v!r}" for k, v in info.options.items()) or "none"
        raise ValueError(f"unknown option(s) {bad} for solver {info.name!r}; valid options: {valid}")
    if "noise" in inspect.signature(info.fn).parameters:  # stochastic, or heun with S_churn > 0
        options["noise"] = _noise(noise_sampler, x, sigmas)
    elif noise_sampler is not None:
        raise ValueError(f"solver {info.name!r} draws no noise, so it takes no noise_sampler")
    return _drive(info.name, info.fn, model, x, sigmas, extra_args, callback, disable, **options)


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.,
                    s_noise=1., noise_sampler=None):
    """DPM-Solver-fast (Lu et al., arXiv 2206.00927, Sec. 3.3): ``n`` evaluations on ``K = n // 3 + 1`` steps
    uniform in ``lambda = -log sigma`` from ``sigma_max`` to ``sigma_min``: DPM-Solver-3 steps, then orders 2, 1
    (``n % 3 == 0``) or one step of order ``n % 3``. ``eta > 0`` makes each step ancestral. Ends at ``sigma_min``."""
    lo, hi = sigma_range(sigma_min, sigma_max, eta, s_noise)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of evaluations) must be a positive integer; got {n!r}")
    k = n // 3 + 1
    orders = [3] * (k - 2) + [2, 1] if n % 3 == 0 else [3] * (k - 1) + [n % 3]
    lams = torch.linspace(lam(hi), lam(lo), k + 1, dtype=torch.float64).tolist()
    sigmas = [math.exp(-t) for t in lams]
    ev, noise, report = _evaluator(model, extra_args, [hi, lo], False), _noise(noise_sampler, x, None), None
    with tqdm(total=n, disable=disable, desc="fewstep dpm_fast") as bar, torch.no_grad():
        def D(x_: Tensor, sigma: float) -> Tensor:
            bar.update(1)
            return ev(x_, sigma)

        for i, (order, s, s_next) in enumerate(zip(orders, sigmas[:-1], sigmas[1:])):
            if callback is not None:
                t = _tensor(lams[i], x)
                report = _reporter(lambda p, t=t: callback({**p, "t": t, "t_up": t}), x, None, i)
            s_to, s_up = ancestral_target(s, s_next, eta, lo)
            x = dpm_solver_step(order, D, x, s, s_to, report)
            if s_up > 0:
                x = x + s_noise * s_up * noise(s, s_next)
    return x


def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81,
                        eta=0., s_noise=1., noise_sampler=None, return_info=False):
    """DPM-Solver-12 (``order=2``) or -23 (``order=3``) with adaptive steps in ``lambda = -log sigma`` (Lu et al.,
    arXiv 2206.00927, Sec. 3.3): each try takes a low- and a high-order step that share their evaluations
    (DPM-Solver-1 and -2, or DPM-Solver-2 with r1 = 1/3 and -3), with the error
    ``E = ||(x_low - x_high) / delta||_2 / sqrt(numel)``, ``delta = max(atol, rtol max(|x_low|, |x_prev|))``.
    ``h`` is scaled by Soderlind's PID controller (ACM TOMS 29, 2003), ``prod_k E_k^-(beta_k / order)`` through the
    arctan limiter of Soderlind & Wang (J. Comput. Appl. Math. 185, 2006); a try is accepted when that factor is at
    least ``accept_safety``. ``info["nfe"]`` counts the evaluations made (a retry reuses ``D`` at its start)."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3; got {order!r}")
    lo, hi = sigma_range(sigma_min, sigma_max, eta, s_noise)
    check_nonnegative(rtol=rtol, atol=atol)
    low, high = ((1, {}), (2, {"r1": 0.5})) if order == 2 else ((2, {"r1": 1 / 3}), (3, {}))
    forward = lo < hi
    s, t_end, h = lam(hi), lam(lo), abs(h_init) * (1 if forward else -1)
    k = 1.5 if eta else order
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / k, -(pcoeff + 2 * dcoeff) / k, dcoeff / k
    ev, noise, report = _evaluator(model, extra_args, [hi, lo], False), _noise(noise_sampler, x, None), None
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    x_prev, inv_errors = x, None  # 1/E of the last two accepted tries (the first try's before any)
    memo: list[tuple[Tensor, float, Tensor]] = []
    if callback is not None:
        report = _reporter(callback, x, None)
    with tqdm(disable=disable, desc="fewstep dpm_adaptive") as bar, torch.no_grad():
        def D(x_: Tensor, sigma: float) -> Tensor:
            for x_m, s_m, d_m in memo:
                if s_m == sigma and (x_m is x_ or torch.equal(x_m, x_)):
                    return d_m
            memo.append((x_, sigma, ev(x_, sigma)))
            info["nfe"] += 1
            bar.update(1)
            return memo[-1][2]

        while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
            t = min(t_end, s + h) if forward else max(t_end, s + h)
            s_cur, s_next = math.exp(-s), math.exp(-t)
            s_to, s_up = ancestral_target(s_cur, s_next, eta, lo)
            denoised = D(x, s_cur)
            x_low = dpm_solver_step(low[0], D, x, s_cur, s_to, **low[1])
            x_high = dpm_solver_step(high[0], D, x, s_cur, s_to, **high[1])
            delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
            error = float(torch.linalg.norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
            inv = 1 / (error + 1e-8)
            inv_errors = inv_errors or (inv, inv)
            factor = 1 + math.atan(inv**b1 * inv_errors[0] ** b2 * inv_errors[1] ** b3 - 1)
            if factor >= accept_safety:
                inv_errors, x_prev, s = (inv, inv_errors[0]), x_low, t
                x = x_high + s_noise * s_up * noise(s_cur, s_next) if s_up > 0 else x_high
                memo.clear()
                info["n_accept"] += 1
            else:
                del memo[1:]  # keep D at the start of the step
                info["n_reject"] += 1
            h *= factor
            info["steps"] += 1
            if report is not None:
                t_s = _tensor(s, x)
                report({"x": x, "i": info["steps"] - 1, "sigma": math.exp(-s), "sigma_hat": math.exp(-s), "t": t_s,
                        "t_up": t_s, "denoised": denoised, "error": error, "h": h, **info})
    return (x, info) if return_info else x


# ----------------------------------------------------------------------------------------------
# k-diffusion's samplers on a grid, with k-diffusion's signatures
# ----------------------------------------------------------------------------------------------

def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float('inf'), s_noise=1.):
    """Euler in sigma (Karras et al., arXiv 2206.00364, Algorithm 2 with Euler steps): fewstep's ``euler``; with
    ``s_churn > 0`` each step first adds churn noise, drawn with ``torch.randn_like`` as k-diffusion does."""
    args = (model, x, sigmas, extra_args, callback, disable)
    if s_churn == 0:
        return _drive("euler", SOLVERS["euler"].fn, *args)
    return _drive("euler", churn, *args, noise=_noise(None, x, sigmas), step=euler_step, s_churn=s_churn,
                  s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None):
    """Ancestral Euler (DDIM's eta in sigma space): fewstep's ``euler_ancestral``."""
    return _drive("euler_ancestral", SOLVERS["euler_ancestral"].fn, model, x, sigmas, extra_args, callback, disable,
                  noise=_noise(noise_sampler, x, sigmas), eta=eta, s_noise=s_noise)


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                s_tmax=float('inf'), s_noise=1.):
    """EDM's Heun sampler (Karras et al., arXiv 2206.00364, Algorithms 1 and 2): fewstep's ``heun`` with
    ``S_churn, S_min, S_max, S_noise = s_churn, s_tmin, s_tmax, s_noise``; churn noise from ``torch.randn_like``."""
    return _drive("heun", SOLVERS["heun"].fn, model, x, sigmas, extra_args, callback, disable,
                  noise=_noise(None, x, sigmas), S_churn=s_churn, S_min=s_tmin, S_max=s_tmax, S_noise=s_noise)


def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float('inf'), s_noise=1.):
    """DPM-Solver-2 steps (Lu et al., arXiv 2206.00927, r1 = 1/2) in Karras et al.'s Algorithm 2: fewstep's
    ``dpm_solver_2``; with ``s_churn > 0`` each step first adds churn noise (``torch.randn_like``)."""
    args = (model, x, sigmas, extra_args, callback, disable)
    if s_churn == 0:
        return _drive("dpm_2", SOLVERS["dpm_solver_2"].fn, *args, r1=0.5)
    return _drive("dpm_2", churn, *args, noise=_noise(None, x, sigmas), step=dpm_2_step, s_churn=s_churn,
                  s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None):
    """Ancestral DPM-Solver-2 steps (``ancestral``); ``eta = 0`` is fewstep's ``dpm_solver_2`` (r1 = 1/2)."""
    args = (model, x, sigmas, extra_args, callback, disable)
    if eta == 0:
        return _drive("dpm_2_ancestral", SOLVERS["dpm_solver_2"].fn, *args, r1=0.5)
    return _drive("dpm_2_ancestral", ancestral, *args, noise=_noise(noise_sampler, x, sigmas),
                  step=dpm_2_step, eta=eta, s_noise=s_noise)


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep in sigma with Lagrange-integrated coefficients: fewstep's ``ipndm_v`` for
    ``order <= 4`` (full order to the end), ``lms`` above."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer; got {order!r}")
    args = (model, x, sigmas, extra_args, callback, disable)
    if order <= 4:
        return _drive("lms", SOLVERS["ipndm_v"].fn, *args, order=order, lower_order_final=False)
    return _drive("lms", lms, *args, order=order)


def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                              noise_sampler=None):
    """Ancestral DPM-Solver++(2S) steps (``ancestral``); ``eta = 0`` is fewstep's ``dpmpp_2s`` (r = 1/2)."""
    args = (model, x, sigmas, extra_args, callback, disable)
    if eta == 0:
        return _drive("dpmpp_2s_ancestral", SOLVERS["dpmpp_2s"].fn, *args, r=0.5)
    return _drive("dpmpp_2s_ancestral", ancestral, *args, noise=_noise(noise_sampler, x, sigmas),
                  step=dpmpp_2s_step, eta=eta, s_noise=s_noise)


def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                     noise_sampler=None, r=1 / 2):
    """DPM-Solver++ SDE: fewstep's ``dpmpp_sde``; the step's noise is ``noise_sampler(sigma, sigma_next)`` as in
    k-diffusion (``KNoise``, ``whole_steps``); default: a Brownian path per sample."""
    return _drive("dpmpp_sde", SOLVERS["dpmpp_sde"].fn, model, x, sigmas, extra_args, callback, disable,
                  noise=_noise(noise_sampler, x, sigmas, True, True), eta=eta,
                  s_noise=s_noise, r=r)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M): fewstep's ``dpmpp_2m`` with ``lower_order_final=False``."""
    return _drive("dpmpp_2m", SOLVERS["dpmpp_2m"].fn, model, x, sigmas, extra_args, callback, disable,
                  lower_order_final=False)


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, solver_type='midpoint'):
    """DPM-Solver++(2M) SDE: fewstep's ``dpmpp_2m_sde`` with ``lower_order_final=False``; ``solver_type`` 'heun' is
    fewstep's 'taylor'. Default noise: a Brownian path per sample."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint'; got {solver_type!r}")
    return _drive("dpmpp_2m_sde", SOLVERS["dpmpp_2m_sde"].fn, model, x, sigmas, extra_args, callback, disable,
                  noise=_noise(noise_sampler, x, sigmas, brownian=True), eta=eta, s_noise=s_noise,
                  lower_order_final=False, solver_type="taylor" if solver_type == "heun" else "midpoint")


def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None):
    """DPM-Solver++(3M) SDE as k-diffusion runs it (``dpmpp_3m_sde_taylor_warmup``).

    Default noise: a Brownian path per sample."""
    return _drive("dpmpp_3m_sde", dpmpp_3m_sde_taylor_warmup, model, x, sigmas, extra_args, callback, disable,
                  noise=_noise(noise_sampler, x, sigmas, brownian=True), eta=eta, s_noise=s_noise)


KDIFFUSION_SAMPLERS: tuple[str, ...] = (
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_lms",
    "sample_dpm_fast", "sample_dpm_adaptive", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")


# ----------------------------------------------------------------------------------------------
# every other fewstep solver: sample_<name>(model, x, sigmas, extra_args, callback, disable, **options)
# ----------------------------------------------------------------------------------------------

def _make(solver: str) -> Callable[..., Tensor]:
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return run(solver, model, x, sigmas, extra_args, callback, disable, **options)

    info = SOLVERS[solver]
    sampler.__name__ = sampler.__qualname__ = f"sample_{solver}"
    noise = " A stochastic solver also takes noise_sampler= (see the module docstring)." if info.stochastic else ""
    sampler.__doc__ = (f"fewstep's {solver!r} solver ({info.paper}) with k-diffusion's signature.\n\n"
                       f"Options (keyword): {dict(info.options) or 'none'}.{noise}")
    return sampler


def list_samplers() -> list[str]:
    """Every ``sample_*`` name here: k-diffusion's, and ``sample_<solver>`` of every other registered solver."""
    return sorted(set(KDIFFUSION_SAMPLERS) | {f"sample_{name}" for name in SOLVERS})


for _name in sorted(SOLVERS):
    if f"sample_{_name}" not in KDIFFUSION_SAMPLERS:
        globals()[f"sample_{_name}"] = _make(_name)


def __getattr__(name: str):
    # solvers registered after this module was imported
    if name.startswith("sample_") and name[len("sample_"):] in SOLVERS:
        fn = _make(name[len("sample_"):])
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; samplers: {', '.join(list_samplers())}")
