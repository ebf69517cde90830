"""The training loop every distillation method shares: the student's trainable network, Adam, per-iteration
seeds, checkpoints written atomically every N iterations, resume, a progress bar with the time left, and the CPU
time spent (``time.process_time``).

Each iteration draws its randomness from its own generator, seeded by ``(seed, iteration)``, so a run resumed from a
checkpoint takes exactly the iterations an uninterrupted run takes: the same seed gives the same weights.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fewstep.cache import atomic_write_bytes
from fewstep.diffusion.denoiser import Denoiser

__all__ = ["trainable_net", "student_copy", "iteration_generator", "check_ema", "WeightAverage", "train"]

CHECKPOINT_VERSION = 1


def trainable_net(model: Denoiser, role: str = "teacher") -> nn.Module:
    """The ``torch.nn.Module`` inside ``model`` that fine-tuning changes (``EDMPrecond.net``,
    ``ModelDenoiser.model``, ``DiffusersDenoiser.model``); a clear error when there is none."""
    if not isinstance(model, Denoiser):
        raise TypeError(f"the {role} must be a fewstep Denoiser (fewstep.load_model, an adapter or from_diffusers); "
                        f"got {type(model).__name__}")
    for attr in ("net", "model"):
        net = getattr(model, attr, None)
        if isinstance(net, nn.Module):
            if not any(True for _ in net.parameters()):
                break
            return net
    raise ValueError(f"the {role} {getattr(model, 'name', '?')!r} ({type(model).__name__}) has no network with "
                     "parameters to fine-tune: distillation needs a Denoiser wrapping a torch.nn.Module "
                     "(EDMPrecond, ModelDenoiser or from_diffusers), not an exact or closed-form model")


def student_copy(teacher: Denoiser) -> tuple[Denoiser, nn.Module]:
    """A deep copy of ``teacher`` whose network trains (float32, gradients on); the teacher is left frozen."""
    trainable_net(teacher)
    student = copy.deepcopy(teacher)
    net = trainable_net(student, "student")
    net.float().requires_grad_(True)
    return student, net


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator of one iteration: independent of how the run was split by resumes."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(iteration)) % (2**63 - 1))


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: any reading error means it cannot resume
        raise ValueError(f"cannot resume from {path}: it is not a fewstep distillation checkpoint "
                         f"({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"cannot resume from {path}: it is not a version-{CHECKPOINT_VERSION} distillation "
                         "checkpoint")
    saved = json.loads(blob["identity"])
    if saved.get("teacher_sha256") != identity.get("teacher_sha256"):
        raise ValueError(f"cannot resume from {path}: it is a student of another teacher ({saved.get('teacher')!r}, "
                         f"weights {str(saved.get('teacher_sha256'))[:16]}...), not of {identity.get('teacher')!r} "
                         f"({str(identity.get('teacher_sha256'))[:16]}...)")
    differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {identity.get(k)!r} now" for k in differ)
        raise ValueError(f"cannot resume from {path}: it was made with other settings ({shown})")
    return blob


def check_ema(ema) -> None:
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
        raise ValueError(f"ema must be a decay in [0, 1) (0: no averaging); got {ema!r}")


class WeightAverage:
    """An exponential moving average of ``net``'s state, ``avg <- decay avg + (1 - decay) w`` per ``update``
    (integer buffers are copied)."""

    def __init__(self, net: nn.Module, decay: float):
        check_ema(decay)
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net: nn.Module) -> None:
        with torch.no_grad():
            for k, v in net.state_dict().items():
                self.state[k].lerp_(v, 1 - self.decay) if v.is_floating_point() else self.state[k].copy_(v)


def train(net: nn.Module, step: Callable[[int, torch.Generator], float], *, iterations: int, seed: int, lr: float,
          identity: dict[str, Any], checkpoint: Path | None = None, checkpoint_every: int = 50,
          resume: bool = False, progress: bool = False, extra_state: Callable[[], dict] | None = None,
          load_extra: Callable[[dict], None] | None = None, lr_at: Callable[[int], float] | None = None,
          desc: str = "distill", ema: float = 0.0) -> dict[str, Any]:
    """Run ``iterations`` of ``step(i, generator) -> loss``, which updates ``net`` through ``step.optimizer`` (Adam
    with the step's ``betas`` if it has them, set here before the first call); returns ``{"loss": mean of the last
    tenth, "cpu_seconds", "resumed_at"}``.

    ``lr_at(i)``, when given, sets the learning rate of iteration ``i``. With ``checkpoint``,
    the net, the optimizer, ``extra_state()`` and the CPU time so far are written there every ``checkpoint_every``
    iterations (a temporary file and a rename, so a killed run leaves the last complete checkpoint); with
    ``resume`` the run continues from it, after checking that it was made with the same ``identity`` (teacher,
    method, options, seed).

    ``ema`` in (0, 1): keep an exponential moving average of the weights, ``avg <- ema avg + (1 - ema) w`` after
    every iteration (in the checkpoints too), and leave ``net`` holding the average at the end; 0 keeps the last
    iterate.
    """
    check_ema(ema)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=getattr(step, "betas", (0.9, 0.999)))
    average = WeightAverage(net, ema) if ema else None
    step.optimizer = optimizer  # type: ignore[attr-defined]
    start, cpu_before, losses = 0, 0.0, []
    identity_json = json.dumps(identity, sort_keys=True, default=str)
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start")
        blob = _load_checkpoint(checkpoint, json.loads(identity_json))
        net.load_state_dict(blob["net"])
        optimizer.load_state_dict(blob["optimizer"])
        start, cpu_before, losses = int(blob["iteration"]), float(blob["cpu_seconds"]), list(blob["losses"])
        if average is not None:
            average.state = blob["average"]
        if load_extra is not None:
            load_extra(blob["extra"])
    cpu0 = time.process_time()
    bar = tqdm(total=iterations, initial=start, desc=desc, disable=not progress, unit="it",
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    for i in range(start, iterations):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i)
        loss = float(step(i, iteration_generator(seed, i)))
        if average is not None:
            average.update(net)
        losses.append(loss)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
        done = i + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == iterations):
            _save_checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, "identity": identity_json,
                                          "iteration": done, "net": net.state_dict(),
                                          "optimizer": optimizer.state_dict(), "losses": losses,
                                          "average": None if average is None else average.state,
                                          "cpu_seconds": cpu_before + time.process_time() - cpu0,
                                          "extra": extra_state() if extra_state is not None else {}})
    bar.close()
    if average is not None:
        net.load_state_dict(average.state)
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return {"loss": sum(tail) / len(tail), "cpu_seconds": cpu_before + time.process_time() - cpu0,
            "resumed_at": start}
