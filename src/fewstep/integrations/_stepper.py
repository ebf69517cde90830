"""Run a registered solver one model evaluation at a time: the engine behind ``FewstepScheduler``.

A fewstep solver is a plain function that calls ``D(x, sigma)`` whenever it needs the model.
diffusers inverts that control: the pipeline owns the loop and hands the scheduler one model output
per ``step``. ``SolverRun`` bridges the two without touching any solver. The unchanged driver
``fewstep.diffusion.sampling.solve`` runs in a worker thread on a stand-in model whose every
evaluation *suspends* the worker: it posts the requested ``(x, sigma)`` and blocks until ``send``
answers with ``D``. Exactly one of the two threads runs at any time, so this is a coroutine built
from a thread; the solver's multistep history stays a local variable of the solver function.

``plan_evaluations`` runs the same driver once on a dummy state to list, in order, the sigma of
every evaluation and whether it starts a step (where a run may be restarted from a new state).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.processes import VE
from fewstep.diffusion.sampling import solve

Tensor = torch.Tensor


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
        self.events.append(("eval", float(sigma)))
        return torch.zeros_like(x)


def plan_evaluations(solver: str, grid: list[float], options: dict[str, Any], *,
                     denoise_to_zero: bool = False) -> list[Evaluation]:
    """The evaluations ``solve(model, x, grid, solver, **options)`` makes, in order.

    An evaluation starts step ``i`` when the next event is the solver's callback for ``grid[i]``
    (the callback follows the evaluation whose ``D`` the step uses).
    """
    events: list = []
    solve(_Recorder(events), torch.zeros(1, 1, dtype=torch.float64), grid, solver,
          denoise_to_zero=denoise_to_zero, callback=lambda p: events.append(("step", float(p["sigma"]))), **options)
    index = {s: i for i, s in enumerate(grid)}
    plan = []
    for k, (kind, sigma) in enumerate(events):
        if kind != "eval":
            continue
        nxt = events[k + 1] if k + 1 < len(events) else None
        starts = nxt is not None and nxt[0] == "step" and nxt[1] == sigma
        plan.append(Evaluation(sigma, index[sigma] if starts else None))
    return plan


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
    """``solve(model, x, grid, solver, **options)`` as a coroutine over model evaluations.

    ``start()`` returns the first ``Request``; ``send(D)`` answers it and returns the next
    ``Request`` or ``Finished``. ``close()`` abandons the run. The worker thread inherits the
    caller's grad / inference mode (both are thread-local in torch).
    """

    def __init__(self, solver: str, x: Tensor, grid: list[float], options: dict[str, Any], *,
                 denoise_to_zero: bool = False):
        self._args = (solver, x, list(grid), dict(options), denoise_to_zero)
        self._to_worker: queue.Queue = queue.Queue(maxsize=1)
        self._from_worker: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
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

    def close(self) -> None:
        """Unwind the worker if it is waiting for an evaluation."""
        if self._thread is not None and self._thread.is_alive() and not self.finished:
            self._to_worker.put(_CANCEL)
            self._thread.join()
        self.finished = True

    # -- worker side ----------------------------------------------------------------------------
    def _work(self, grad: bool, inference: bool) -> None:
        solver, x, grid, options, dtz = self._args
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                out = solve(_Suspending(self), x, grid, solver, denoise_to_zero=dtz, **options)
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
            return payload
        self.finished = True
        self._thread.join()
        if kind == "error":
            raise payload
        return Finished(payload)
