"""Run a registered solver one model evaluation at a time: the engine behind ``FewstepScheduler``.

A fewstep solver is a plain function that calls ``D(x, sigma)`` whenever it needs the model.
diffusers inverts that control: the pipeline owns the loop and hands the scheduler one model output
per ``step``. ``SolverRun`` bridges the two without touching any solver. ``run_solver`` (the driver
``fewstep.diffusion.sampling.solve`` with the noise passed in) runs in a worker thread on a stand-in model
whose every evaluation *suspends* the worker: it posts the requested ``(x, sigma)`` and blocks until
``send`` answers with ``D``. Exactly one of the two threads runs at any time, so this is a coroutine built
from a thread; the solver's multistep history stays a local variable of the solver function.

``plan_evaluations`` runs the same driver once on a dummy state to list, in order, the sigma of
every evaluation and whether it starts a step (where a run may start, e.g. for img2img).

A pipeline may change the state between two evaluations (inpainting blends its latents). ``SolverRun.set_state``
then writes the new state into the tensor the solver passed to ``D``, before ``D`` is answered. Every
registered solver computes what follows an evaluation from the tensor it evaluated at (``d = D(x, s)``, then
``x' = f(x, d, history)``), so the solver continues from the new state and keeps its history of model
outputs: the semantics of diffusers' schedulers, whose ``step`` reads the ``sample`` it is given. Where the
evaluated tensor is not the state a solver carries on with (the second evaluation of a Heun step, a UniPC
corrector, a singlestep solver's inner point), the change reaches the solver only through ``D``, as in
diffusers' ``HeunDiscreteScheduler`` (``state_in_first_order``) and ``UniPCMultistepScheduler`` (whose
corrector starts from ``last_sample``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.processes import VE
from fewstep.diffusion.sampling import solve

Tensor = torch.Tensor
Noise = Callable[[float, float], Tensor]


def run_solver(model: Denoiser, x: Tensor, grid: list[float], solver: str, options: dict[str, Any], *,
               noise: Noise | None = None, denoise_to_zero: bool = False, callback: Callable | None = None) -> Tensor:
    """``fewstep.diffusion.sampling.solve(model, x, grid, solver, **options)`` with a stochastic solver's
    noise given as ``noise(sigma, sigma_next)`` (a pipeline brings its own generator)."""
    return solve(model, x, grid, solver, noise=noise, denoise_to_zero=denoise_to_zero, callback=callback, **options)


@dataclass(frozen=True)
class Evaluation:
    """One planned model evaluation: its sigma and, when it starts step ``grid_index``, that index."""

    sigma: float
    grid_index: int | None


@dataclass(frozen=True)
class Request:
    """The solver asks for ``D(x, sigma)``."""

    x: Tensor
    sigma: float


@dataclass(frozen=True)
class Finished:
    """The solver returned its final state ``x``."""

    x: Tensor


class _Recorder(Denoiser):
    def __init__(self, events: list):
        super().__init__(VE(0.0, float("inf")))
        self.events = events

    def __call__(self, x, sigma, cond=None):
        self.events.append(("eval", float(sigma), None))
        return torch.zeros_like(x)


def plan_evaluations(solver: str, grid: list[float], options: dict[str, Any], *,
                     denoise_to_zero: bool = False) -> list[Evaluation]:
    """The evaluations ``run_solver(model, x, grid, solver, options)`` makes, in order (a stochastic
    solver's sigmas do not depend on its noise).

    An evaluation starts step ``i`` when the next event is the solver's callback for ``grid[i]``, made at
    that evaluation's sigma (``sigma_hat``: EDM's churn evaluates above the grid point); the callback follows
    the evaluation whose ``D`` the step uses.
    """
    events: list = []
    x = torch.zeros(1, 1, dtype=torch.float64)
    run_solver(_Recorder(events), x, grid, solver, options, noise=_ZeroNoise(), denoise_to_zero=denoise_to_zero,
               callback=lambda p: events.append(("step", float(p["sigma"]), float(p["sigma_hat"]))))
    index = {s: i for i, s in enumerate(grid)}
    plan = []
    for k, (kind, sigma, *_) in enumerate(events):
        if kind != "eval":
            continue
        nxt = events[k + 1] if k + 1 < len(events) else None
        starts = nxt is not None and nxt[0] == "step" and nxt[2] == sigma
        plan.append(Evaluation(sigma, index[nxt[1]] if starts else None))
    return plan


class _ZeroNoise:
    """The noise of a planning run: zeros (a solver's sigmas do not depend on its noise)."""

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        return torch.zeros(1, 1, dtype=torch.float64)

    def spawn(self, index: int) -> _ZeroNoise:
        return self


class _Cancelled(BaseException):
    """Raised inside the worker to unwind an abandoned run (BaseException: no solver catches it)."""


class _Suspending(Denoiser):
    def __init__(self, run: SolverRun):
        super().__init__(VE(0.0, float("inf")))
        self.run = run

    def __call__(self, x, sigma, cond=None):
        # the driver passes sigma as a float; as_sigma would round it to the state's dtype
        return self.run._await(x, float(sigma))


_CANCEL = object()


class SolverRun:
    """``run_solver(model, x, grid, solver, options, noise=noise)`` as a coroutine over model evaluations.

    ``start()`` returns the first ``Request``; ``send(D)`` answers it and returns the next
    ``Request`` or ``Finished``; ``set_state(x)`` replaces the state of the pending request (see the
    module docstring). ``close()`` abandons the run. The worker thread inherits the caller's grad /
    inference mode (both are thread-local in torch). ``noise`` is called from the worker while the
    caller waits in ``start`` or ``send``.
    """

    def __init__(self, solver: str, x: Tensor, grid: list[float], options: dict[str, Any], *,
                 noise: Noise | None = None, denoise_to_zero: bool = False):
        self._args = (solver, x, list(grid), dict(options), noise, denoise_to_zero)
        self._to_worker: queue.Queue = queue.Queue(maxsize=1)
        self._from_worker: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._pending: Request | None = None
        self.finished = False

    def start(self) -> Request | Finished:
        if self._thread is not None:
            raise RuntimeError("this solver run has already started")
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        self._thread = threading.Thread(target=self._work, args=(grad, inference), daemon=True,
                                        name=f"fewstep-{self._args[0]}")
        self._thread.start()
        return self._receive()

    def send(self, denoised: Tensor) -> Request | Finished:
        if self._thread is None or self.finished:
            raise RuntimeError("send() needs a started, unfinished run")
        self._to_worker.put(denoised)
        return self._receive()

    def set_state(self, x: Tensor) -> None:
        """Overwrite, in place, the state the solver is waiting to have evaluated."""
        if self._pending is None:
            raise RuntimeError("set_state() needs a pending request")
        target = self._pending.x
        with torch.inference_mode(target.is_inference()), torch.no_grad():
            target.copy_(x)

    def close(self) -> None:
        """Unwind the worker if it is waiting for an evaluation."""
        if self._thread is not None and self._thread.is_alive() and not self.finished:
            self._to_worker.put(_CANCEL)
            self._thread.join()
        self.finished = True

    # -- worker side ----------------------------------------------------------------------------
    def _work(self, grad: bool, inference: bool) -> None:
        solver, x, grid, options, noise, dtz = self._args
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                out = run_solver(_Suspending(self), x, grid, solver, options, noise=noise, denoise_to_zero=dtz)
            self._from_worker.put(("done", out))
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self._from_worker.put(("error", exc))

    def _await(self, x: Tensor, sigma: float) -> Tensor:
        self._from_worker.put(("eval", Request(x, sigma)))
        reply = self._to_worker.get()
        if reply is _CANCEL:
            raise _Cancelled
        return reply

    # -- caller side ----------------------------------------------------------------------------
    def _receive(self) -> Request | Finished:
        kind, payload = self._from_worker.get()
        if kind == "eval":
            self._pending = payload
            return payload
        self._pending = None
        self.finished = True
        self._thread.join()
        if kind == "error":
            raise payload
        return Finished(payload)
