"""LD3-style learned sampler: evaluation times and solver coefficients trained by gradient descent
through the solver against reference ODE solutions.

Tong et al., *Learning to Discretize Denoising Diffusion ODEs* (LD3), arXiv 2405.15506 (code:
vinhsuhi/LD3), learns the time steps of a given solver by backpropagating the distance between its
output and a teacher's output from the same noise, on about a hundred samples; its code keeps two
sets of times, one where the state is integrated and one where the model is evaluated. Shaul et al.,
*Bespoke Solvers for Generative Flow Models*, arXiv 2310.19075, learn a time reparametrisation and a
path scaling of a base solver (about 80 parameters) against ground-truth ODE solutions.

fewstep learns the object both of them parametrise, once for every one-evaluation-per-step solver:
its linear form (``fewstep.diffusion.solvers.learned``: each evaluation state and the sample are
``a x_0 + sum_j c_j D_j``, the model called at ``sigma_hat``). ``tune`` starts from the best untuned
(solver, schedule, data-mean start or not) on the tuning seeds, then trains ``log a``, ``c`` and
``log sigma_hat`` (LD3's second time set) on the RMSE to the cached reference solutions of the tuning
seeds, by full-batch L-BFGS (the loss is smooth and deterministic; Adam, with minibatches, is an
option), keeping the iterate that is best on a held-back part of them. The parameters' effects on
the sample differ by orders of magnitude (a coefficient of the noise early on against one of the
last model output), so L-BFGS works in whitened coordinates: ``theta = P z`` with
``P = (J^T J / m + d I)^(-1/2)``, ``J`` the residuals' Jacobian at the start on a few seeds (the
Gauss-Newton preconditioner; Nocedal & Wright, *Numerical Optimization*, ch. 10). A re-gridded or
rescaled base solver is a point of this space, so it contains LD3's and Bespoke's solutions for
these solvers, and the coefficient fits (IIA, DC) too.

Deviations: the loss is the RMSE to adaptive reference solutions (the benchmark's ``rmse_ref``), not
LPIPS, and without LD3's slack ball around the noise; coefficients are free rather than tied to a
time and scale transform as in Bespoke.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fewstep.diffusion.recipe import as_recipe
from fewstep.diffusion.sampling import plan_steps
from fewstep.diffusion.schedules import get_sigmas
from fewstep.diffusion.solvers import SOLVERS
from fewstep.diffusion.solvers.learned import linear_form, run_form
from fewstep.diffusion.tune import _tuning as T
from fewstep.limits import MAX_SEEDS
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

Tensor = torch.Tensor
__all__ = ["as_learned", "base_candidates", "pick_base", "recipe_start", "tune"]
CHECK_SEEDS = 8  # seeds on which a solver's linear form must reproduce it
RANK_SEEDS = 128  # seeds on which the untuned starting points are ranked (one reference block)


def base_candidates() -> list[str]:
    """The registered deterministic solvers on a fixed grid that are one-evaluation-per-step and need
    nothing fitted (DPM-Solver-v3 needs its statistics; the tuned solvers their coefficients)."""
    return sorted(name for name, i in SOLVERS.items()
                  if not i.stochastic and i.kind != "correction" and i.cost is None and i.evals_per_step == 1
                  and i.final_evals == 1 and not i.fn.__module__.startswith("fewstep.diffusion.tune")
                  and name != "dpm_solver_v3")


def as_learned(predictor, sigmas: list[float], solver: str, options: Mapping[str, Any] | None = None,
               first_x0: list[float] | None = None) -> dict[str, Any] | None:
    """``solver`` (with ``options``) on ``sigmas`` as ``learned`` options, with ``first_x0`` in place of its
    first model output when given; ``None`` when the solver has no such form or its form does not
    reproduce it on the first ``CHECK_SEEDS`` of the predictor's seeds (a data-dependent step: whether
    the form is exact is a property of the solver, which a few seeds show as well as many)."""
    try:
        form = linear_form(solver, sigmas, options)
    except ValueError:
        return None
    few = predictor.head(CHECK_SEEDS)
    x_solver = few.samples(sigmas, solver, options)
    x_form = few.samples(sigmas, "learned", form)
    if float((x_solver - x_form).abs().max()) > 1e-4 * (1 + float(x_solver.abs().max())):
        return None
    if first_x0 is not None:  # the linear structure does not depend on what the first output is
        form = {**form, "eval_sigmas": form["eval_sigmas"][1:], "first_x0": list(first_x0)}
    return form


def pick_base(model, predictor, nfe: int, solvers: Sequence[str], schedules: Sequence[str], mean: list[float]):
    """``(rmse, solver, schedule, sigmas, options)``: the ``learned`` options of the (solver, schedule,
    data-mean start or not) with the lowest RMSE on the predictor's first ``RANK_SEEDS`` seeds, among the
    solvers whose linear form reproduces them (``as_learned``); ``rmse`` is on all of its seeds."""
    best, rank = None, predictor.head(RANK_SEEDS)
    for solver in solvers:
        for schedule in schedules:
            for first in (False, True):
                sig = [float(v) for v in get_sigmas(schedule, plan_steps(solver, nfe) + first, model,
                                                    sigma_max=T.start_sigma(model))]
                if not math.isfinite(sig[0]):
                    continue
                form = as_learned(predictor, sig, solver, first_x0=mean if first else None)
                if form is None:
                    continue
                err = rank(sig, "learned", form)
                if best is None or err < best[0]:
                    best = (err, solver, schedule, sig, form)
    if best is None:
        raise ValueError(f"none of the solvers {list(solvers)} has a linear one-evaluation-per-step form at "
                         f"NFE {nfe}; ld3 learns solvers such as ddim, dpmpp_2m, unipc, ipndm, deis")
    _, solver, schedule, sig, form = best
    return predictor(sig, "learned", form), solver, schedule, sig, form


def recipe_start(model, predictor, nfe: int, recipe) -> tuple[float, str, list[float], dict[str, Any]]:
    """``(rmse, label, sigmas, options)``: a tuned recipe's solver in the ``learned`` form."""
    r = as_recipe(recipe)
    r.check(model, nfe)
    opts = dict(r.solver_options)
    first = opts.pop("first_x0", None)
    sig = list(r.sigmas)
    form = as_learned(predictor, sig, r.solver, opts, first)
    if form is None:
        raise ValueError(f"the recipe's solver {r.solver!r} is not linear in its model outputs with one "
                         "evaluation per step; ld3 cannot start from it")
    return predictor(sig, "learned", form), f"{r.method} recipe ({r.solver})", sig, form


class _Form(torch.nn.Module):
    """The trainable form: ``a_i = a0_i exp(alpha_i) + gamma_i / sigma_0`` (``gamma`` in units of the unit
    noise, so a coefficient that starts at 0 can move), ``c = c0 + delta``, ``sigma_hat = s0 exp(beta)``
    (clamped to the model's range); the data-mean start, if any, stays fixed.

    The trained parameters ``theta = (alpha, gamma, delta, beta)`` (those switched on) are ``P z``: the
    optimiser moves ``z``, and ``precondition`` sets ``P`` so that the loss is about equally curved in
    every direction of ``z`` (``P = I`` until then)."""

    def __init__(self, form: Mapping[str, Any], sigma0: float, lo: float, hi: float, coefficients: bool,
                 times: bool):
        super().__init__()
        f64 = torch.float64
        self.a0 = torch.tensor(form["x_coefs"], dtype=f64)
        self.c0 = [torch.tensor(r, dtype=f64) for r in form["d_coefs"]]
        self.s0 = torch.tensor(form["eval_sigmas"], dtype=f64)
        self.sigma0, self.lo, self.hi = sigma0, lo, hi
        n_a, n_c, n_s = len(self.a0), sum(len(c) for c in self.c0), len(self.s0)
        self.parts = [(k, n) for k, n, on in (("alpha", n_a, coefficients), ("gamma", n_a, coefficients),
                                              ("delta", n_c, coefficients), ("beta", n_s, times)) if on]
        size = sum(n for _, n in self.parts)
        self.z = torch.nn.Parameter(torch.zeros(size, dtype=f64))
        self.register_buffer("P", torch.eye(size, dtype=f64))
        first = form.get("first_x0")
        self.first = None if first is None else torch.tensor(first, dtype=f64)

    def values(self):
        theta = dict(zip([k for k, _ in self.parts], torch.split(self.P @ self.z, [n for _, n in self.parts])))
        zero = torch.zeros_like
        a = self.a0 * torch.exp(theta.get("alpha", zero(self.a0))) + theta.get("gamma", zero(self.a0)) / self.sigma0
        delta = torch.split(theta["delta"], [len(c) for c in self.c0]) if "delta" in theta else map(zero, self.c0)
        c = [c0 + d for c0, d in zip(self.c0, delta)]
        s = torch.clamp(self.s0 * torch.exp(theta.get("beta", zero(self.s0))), self.lo, self.hi)
        return a, c, s

    def run(self, model, x: Tensor) -> Tensor:
        a, c, s = self.values()
        dt = x.dtype
        first = None if self.first is None else self.first.to(dt).reshape(x.shape[1:]).expand_as(x)
        return run_form(lambda y, sg: model(y, sg.to(dt)), x, a.to(dt), [r.to(dt) for r in c], s, first=first)

    @torch.no_grad()
    def precondition(self, model, x: Tensor, ref: Tensor, step: float = 1e-3, damping: float = 1e-3) -> None:
        """Set ``P = (H + damping mean(eig H) I)^(-1/2)`` at the current point, ``H = J^T J / rows`` the
        Gauss-Newton matrix of the residuals ``run(x) - ref`` (``J`` by one-sided differences of ``step``
        in ``theta``, backwards for an evaluation time that a step up would take past the top of the
        model's range, so that its slope is the one inside the clamp; ``x`` a few seeds suffice), and
        re-express the current point in the new ``z``."""
        theta = self.P @ self.z
        self.P.copy_(torch.eye(len(theta), dtype=theta.dtype))  # z = theta while J is measured
        self.z.copy_(theta)
        steps = torch.full_like(theta, step)
        if self.parts[-1][0] == "beta":  # the evaluation times, last in theta
            steps[len(theta) - len(self.s0):][self.values()[2] * math.exp(step) > self.hi] = -step
        base = (self.run(model, x) - ref).flatten().double()
        cols = []
        for k in range(len(theta)):
            self.z[k] += steps[k]
            cols.append(((self.run(model, x) - ref).flatten().double() - base) / steps[k])
            self.z[k] = theta[k]
        J = torch.stack(cols, 1)
        lam, V = torch.linalg.eigh(J.T @ J / J.shape[0])
        lam = lam.clamp_min(0) + damping * float(lam.clamp_min(0).mean())
        self.P.copy_(V @ torch.diag(lam.rsqrt()) @ V.T)
        self.z.copy_(torch.linalg.solve(self.P, theta))

    def export(self) -> dict[str, Any]:
        with torch.no_grad():
            a, c, s = self.values()
            out = {"x_coefs": a.tolist(), "d_coefs": [r.tolist() for r in c], "eval_sigmas": s.tolist()}
            if self.first is not None:
                out["first_x0"] = self.first.tolist()
            return out


def tune(model, *, solver: str = "best", nfe: int = 10, seeds: Sequence[int] = TUNE_SEEDS,
         eval_seeds: Sequence[int] | None = EVAL_SEEDS, progress: bool = True, schedule: str = "best",
         steps: int = 100, lr: float = 0.02, coefficients: bool = True, times: bool = True, holdout: float = 0.25,
         slack: float = 0.0, check_every: int = 10, starts: Sequence[Any] = (), batch: int | None = None,
         optimizer: str = "lbfgs", patience: int | None = 4, precondition: int | str | None = "auto",
         ridge: float = 0.0):
    """Learn a ``learned`` solver for ``nfe`` evaluations on ``model``; returns a ``Recipe``.

    Args:
        solver: the base solver, or ``"best"``: every one-evaluation-per-step solver (``base_candidates``).
        schedule: the base grid's schedule, or ``"best"``: karras, logsnr, time_uniform (and discrete
            for a discrete-time model). Each pair runs with and without USF's data-mean start (the mean
            of the tuning seeds' reference samples in place of the first model call, one step more);
            the one with the lowest RMSE on the tuning seeds is the start.
        seeds: tuning seeds; ``holdout`` of them (the last ones) only choose the iterate kept.
        steps, lr: optimiser iterations and Adam's learning rate (cosine-decayed).
        optimizer: ``"adam"``, or ``"lbfgs"``: full-batch L-BFGS with a strong-Wolfe line search (the
            loss is smooth and deterministic and has a few dozen parameters; each iteration costs one or
            more loss and gradient evaluations, ``lr`` is not used; no ``batch`` or ``slack``).
        coefficients, times: train the coefficients / the evaluation times.
        slack: LD3's slack: each training seed's noise may move within a ball of RMS radius ``slack``
            (its own parameter, trained with the rest and projected back onto the ball), so the fit
            does not have to match every reference exactly; 0 is the plain loss.
        check_every: iterations between held-back checks.
        patience: stop once this many held-back checks in a row found no better iterate (the fit has
            started to overfit or has converged); ``None``: run all ``steps``.
        precondition: training seeds on which the Gauss-Newton matrix of the residuals is estimated at
            the start (by one-sided differences, one run per parameter); the optimiser then works in
            coordinates where that matrix is about the identity (``_Form.precondition``); ``None``: the
            raw parameters; ``"auto"``: 32 seeds with L-BFGS, ``None`` with Adam (whose per-parameter
            steps of ``lr`` assume the raw parameters).
        ridge: adds ``ridge |z|^2`` to the training loss (the fit's coordinates: whitened, where the loss's
            Gauss-Newton curvature is about 1, when preconditioned), a prior that holds back the directions
            the tuning seeds determine poorly; it helps when they are few (``docs/design.md``).
        batch: training seeds per Adam step (a fresh random subset each step, so more tuning seeds cost no
            more per step); ``None``: all of them (full batch).
        starts: recipes (``Recipe`` objects or JSON paths, made for this model and NFE) of
            one-evaluation-per-step solvers, e.g. from ``s3``: further starting points, used when
            their RMSE on the tuning seeds beats the best untuned start.
    """
    t_start = time.perf_counter()
    if solver == "best":
        solvers = base_candidates()
        T.check_args(model, "ddim", nfe)
    else:
        T.check_args(model, solver, nfe)
        if solver not in base_candidates():
            raise ValueError(f"ld3 starts from a one-evaluation-per-step solver: 'best' or one of "
                             f"{', '.join(base_candidates())}; got {solver!r}")
        solvers = [solver]
    allowed = T.model_schedules(model)
    if schedule != "best" and schedule not in allowed:
        raise ValueError(f"schedule must be 'best' or one of {', '.join(allowed)}; got {schedule!r}")
    schedules = allowed if schedule == "best" else [schedule]
    seeds = T.seed_list(seeds, "seeds", minimum=4)
    if precondition == "auto":
        precondition = 32 if optimizer == "lbfgs" else None
    T.check_sizes(steps=(steps, 1, T.MAX_ITERATIONS), check_every=(check_every, 1, T.MAX_ITERATIONS),
                  **({} if batch is None else {"batch": (batch, 1, MAX_SEEDS)}),
                  **({} if patience is None else {"patience": (patience, 1, T.MAX_ITERATIONS)}),
                  **({} if precondition is None else {"precondition": (precondition, 1, MAX_SEEDS)}))
    if not (lr > 0 and 0 < holdout < 1 and slack >= 0 and ridge >= 0):
        raise ValueError(f"need lr > 0, 0 < holdout < 1, slack >= 0 and ridge >= 0; got lr={lr}, holdout={holdout}, "
                         f"slack={slack}, ridge={ridge}")
    if not (coefficients or times):
        raise ValueError("nothing to learn: coefficients and times are both off")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs'; got {optimizer!r}")
    if optimizer == "lbfgs" and (batch is not None or slack > 0):
        raise ValueError("optimizer='lbfgs' takes the full batch and no slack (batch=None, slack=0)")
    n_fit = max(2, min(len(seeds) - 2, round(len(seeds) * (1 - holdout))))
    full = T.Predictor(model, seeds, progress)
    mean = [float(v) for v in full.ref.mean(0).flatten()]
    err0, base, base_schedule, sig, form = pick_base(model, full, nfe, solvers, schedules, mean)
    untuned = (base, base_schedule)  # what the recipe's quality is compared with
    for path in starts:  # tuned recipes as further starting points (e.g. an S3 solver schedule)
        err, name, sig_r, form_r = recipe_start(model, full, nfe, path)
        if err < err0:
            err0, base, base_schedule, sig, form = err, name, "recipe", sig_r, form_r

    noise, ref = full.noise.to(torch.float32), full.ref.to(torch.float32)
    x_fit, r_fit = sig[0] * noise[:n_fit], ref[:n_fit]
    x_val, r_val = sig[0] * noise[n_fit:], ref[n_fit:]
    net = _Form(form, sig[0], float(model.sigma_min), T.start_sigma(model), coefficients, times)
    if precondition is not None:
        net.precondition(model, x_fit[:precondition], r_fit[:precondition])
    params = [net.z]
    shift = torch.zeros_like(x_fit, requires_grad=True)  # LD3's slack: a move of each training noise
    if slack > 0:
        params.append(shift)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    else:
        opt = torch.optim.LBFGS(params, lr=1.0, history_size=20, line_search_fn="strong_wolfe")

    def val_rmse() -> float:
        with torch.no_grad():
            return float((net.run(model, x_val) - r_val).pow(2).mean().sqrt())

    gen = torch.Generator().manual_seed(0)  # the minibatches
    start_val = best_val = val_rmse()
    best_form, best_z, history, evals, stale = net.export(), net.z.detach().clone(), [], 0, 0

    def closure():
        nonlocal evals
        evals += 1
        pick = slice(None) if batch is None or batch >= n_fit else torch.randperm(n_fit, generator=gen)[:batch]
        loss = (net.run(model, (x_fit + sig[0] * shift)[pick]) - r_fit[pick]).pow(2).mean()
        if ridge:
            loss = loss + ridge * net.z.pow(2).sum()
        # gradients for the form's parameters only (the model's weights stay untouched)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        return loss.detach()

    it = 0
    with T.progress_bar(steps, "ld3", progress) as bar:
        while it < steps:
            if optimizer == "adam":
                k, loss = 1, closure()
                opt.step()
                decay.step()
            else:  # a whole stretch between checks per call: each call starts by evaluating the loss again
                k = min(check_every - it % check_every, steps - it)
                opt.param_groups[0].update(max_iter=k, max_eval=k * 5 // 4 + 1)
                loss = opt.step(closure)
            it += k
            if slack > 0:
                with torch.no_grad():  # back onto the ball of RMS radius slack
                    rms = shift.flatten(1).pow(2).mean(1).sqrt().clamp_min(slack)
                    shift.mul_((slack / rms).view(-1, *[1] * (shift.ndim - 1)))
            if it % check_every == 0 or it == steps:
                v = val_rmse()
                history.append([it, round(math.sqrt(float(loss)), 6), round(v, 6)])
                if v < best_val:
                    best_val, best_form, best_z, stale = v, net.export(), net.z.detach().clone(), 0
                else:
                    stale += 1
            bar.update(k)
            if patience is not None and stale >= patience:
                break
    objective = {"name": "rmse_ref on tuning seeds", "initial": err0, "final": full(sig, "learned", best_form),
                 "held_back_initial": start_val, "held_back_final": best_val, "history": history,
                 "history_columns": ["iteration", "sqrt of the training loss" + (" (with the ridge)" if ridge else ""),
                                     "held-back rmse_ref"],
                 "iterations": it, "loss_evaluations": evals,
                 "moved": float(best_z.norm()),  # the kept iterate's distance from the start, in the fit's coordinates
                 "note": f"initial: the {base}" if base_schedule == "recipe" else
                         f"initial: the best untuned start, {base} on {base_schedule}"
                         f"{' with the data-mean start' if 'first_x0' in form else ''}"}
    options = {"solver": solver, "schedule": schedule, "base": base, "base_schedule": base_schedule,
               "mean_start": "first_x0" in form, "steps": steps, "lr": lr, "coefficients": coefficients,
               "times": times, "holdout": holdout, "slack": slack, "starts": [str(p) for p in starts], "batch": batch,
               "optimizer": optimizer, "patience": patience, "precondition": precondition, "ridge": ridge}
    return T.make_recipe(model, "ld3", "learned", nfe, sig, t_start=t_start, solver_options=best_form,
                         objective=objective, options=options, tune_seeds=seeds, eval_seeds=eval_seeds,
                         baseline=(untuned[0], {}), baseline_schedule=untuned[1], progress=progress)
