"""Few-step distillation: fine-tune a copy of a model so that a 1-4 step sampler lands where its ODE does.

``distill(teacher, method, nfe=...)`` returns a ``fewstep.models.student.Student`` (a ``Denoiser``;
``fewstep.sample(student)`` runs its own sampler, ``student.sampling``) and, with ``out=``, saves it as
safetensors + JSON, which ``fewstep.load_model(path)`` loads. Methods (``list_methods()``):

- ``sfd``: Simple and Fast Distillation (Zhou et al., arXiv 2409.19681), ``fewstep.distill.sfd``.
- ``sfd-v``: SFD with the step count as a condition, one student for several NFEs (same paper, Sec. 4.3).
- ``progressive``: progressive distillation (Salimans & Ho, arXiv 2202.00512), ``fewstep.distill.progressive``.
- ``cd``, ``ct``: consistency distillation and consistency training (Song et al., arXiv 2303.01469) with the
  improved techniques of iCT (Song & Dhariwal, arXiv 2310.14189), ``fewstep.distill.consistency``.
- ``reflow``: rectified flow on the teacher's couplings (Liu et al., arXiv 2209.03003; Kim et al., arXiv
  2410.07815), ``fewstep.distill.reflow``, with ``straightness`` to measure the result.
- ``shortcut``: shortcut models (Frans et al., arXiv 2410.12557), step-size conditioning with the self-consistency
  target, ``fewstep.distill.shortcut``.
- ``sid``: Score identity Distillation (Zhou et al., arXiv 2404.04057), a data-free one-step generator trained
  against a fake denoiser of its own samples, ``fewstep.distill.sid``.

The teacher is any ``Denoiser`` whose network is a ``torch.nn.Module`` (``EDMPrecond``, ``ModelDenoiser``,
``from_diffusers``); a student is saved for a bundled digits teacher or a diffusers ``UNet2DModel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser, model_hash
from fewstep.diffusion.from_diffusers import DiffusersDenoiser
from fewstep.diffusion.schedules import start_sigma
from fewstep.distill._loop import WeightAverage, check_ema, iteration_generator, student_copy, train, trainable_net
from fewstep.distill.consistency import Consistency
from fewstep.distill.grids import student_grid, teacher_grid
from fewstep.distill.progressive import Progressive
from fewstep.distill.reflow import ReFlow, flow_time_grid, straightness
from fewstep.distill.sfd import SFD
from fewstep.distill.shortcut import Shortcut, levels
from fewstep.distill.sid import SiD
from fewstep.limits import check_count
from fewstep.models import trained
from fewstep.models.digits_data import digits_data
from fewstep.models.student import (
    DIFFUSERS,
    Student,
    StudentRecord,
    build_network,
    save_student,
    teacher_digest,
)

__all__ = ["METHODS", "MethodInfo", "distill", "list_methods", "student_grid", "teacher_grid", "flow_time_grid",
           "straightness", "student_copy", "iteration_generator", "WeightAverage"]

MAX_NFE = 16  # a distilled student is a few-step sampler
MAX_ITERATIONS = 1_000_000
MAX_BATCH = 65_536


@dataclass(frozen=True)
class MethodInfo:
    """A distillation method: its paper, default learning rate, whether its sampler takes the analytical first
    step, and its options with their defaults."""

    name: str
    paper: str
    lr: float
    afs: bool
    options: Mapping[str, Any]


METHODS: dict[str, MethodInfo] = {
    m.name: m for m in (
        MethodInfo("sfd", "Zhou et al., Simple and Fast Distillation, arXiv 2409.19681", 1e-4, True,
                   {"substeps": 8, "teacher_solver": "dpmpp_3m", "afs": True, "pool": 0, "refresh": 0, "loss": "l1"}),
        MethodInfo("sfd-v", "Zhou et al., arXiv 2409.19681, Sec. 4.3 (variable NFE)", 1e-4, True,
                   {"substeps": 8, "teacher_solver": "dpmpp_3m", "afs": True, "nfes": None, "pool": 0,
                    "refresh": 0, "loss": "l1"}),
        MethodInfo("progressive", "Salimans & Ho, Progressive Distillation, arXiv 2202.00512", 1e-4, False,
                   {"rounds": 3}),
        MethodInfo("cd", "Song et al., Consistency Models, arXiv 2303.01469 (CD), with Song & Dhariwal's improved "
                   "techniques, arXiv 2310.14189", 1e-4, False,
                   {"n": 18, "teacher_step": "heun", "schedule": "uniform", "p_mean": -1.1, "p_std": 2.0,
                    "loss": "pseudo_huber", "sigma_data": 0.5}),
        MethodInfo("ct", "Song & Dhariwal, Improved Techniques for Training Consistency Models (iCT), "
                   "arXiv 2310.14189", 1e-4, False,
                   {"s0": 10, "s1": 1280, "schedule": "lognormal", "p_mean": -1.1, "p_std": 2.0,
                    "loss": "pseudo_huber", "sigma_data": 0.5}),
        MethodInfo("reflow", "Liu et al., Rectified Flow, arXiv 2209.03003; Kim et al., Simple ReFlow, "
                   "arXiv 2410.07815", 1e-4, False,
                   {"pairs": 2048, "teacher_solver": "dpmpp_3m", "teacher_steps": 32, "normalize": False}),
        MethodInfo("shortcut", "Frans et al., One Step Diffusion via Shortcut Models, arXiv 2410.12557", 1e-4, False,
                   {"max_steps": 128}),
        MethodInfo("sid", "Zhou et al., Score identity Distillation, arXiv 2404.04057", 1e-4, False,  # paper: 1e-5
                   {"sigma_g": 2.5, "alpha": 1.2, "t_max": 0.8, "fake_lr": None}),
    )
}
CONSISTENCY = ("cd", "ct")
ANY_NFE = (*CONSISTENCY, "reflow")  # one network samples at every NFE: the record holds the grids of NFE 1-4


def list_methods() -> dict[str, MethodInfo]:
    return dict(METHODS)


def _options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    allowed = METHODS[method].options
    bad = sorted(set(options or {}) - set(allowed))
    if bad:
        shown = ", ".join(f"{k}={v!r}" for k, v in allowed.items())
        raise ValueError(f"unknown option(s) {bad} for method {method!r}; allowed: {shown}")
    return {**allowed, **(options or {})}


def _teacher_name(teacher: Denoiser) -> str:
    if isinstance(teacher, DiffusersDenoiser):
        return DIFFUSERS
    return teacher.name


def _network_or_none(model: Denoiser) -> torch.nn.Module | None:
    try:
        return trainable_net(model)
    except ValueError:
        return None


def _diffusers_configs(teacher: Denoiser, net: torch.nn.Module) -> dict[str, Any] | None:
    if not isinstance(teacher, DiffusersDenoiser):
        return None
    unet = getattr(net, "config", None)
    if unet is None:
        raise ValueError("a diffusers teacher's network must carry its config (a UNet2DModel) to be saved")
    return {"unet": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet).items()},
            "scheduler": dict(teacher.spec.config)}


def distill(teacher: Denoiser, method: str = "sfd", *, nfe: int | None = None, iterations: int = 300, batch: int = 64,
            lr: float | None = None, seed: int = 0, options: Mapping[str, Any] | None = None,
            student: Denoiser | None = None, data: torch.Tensor | None = None, out: str | Path | None = None,
            checkpoint_every: int = 50, resume: bool = False, progress: bool = False, ema: float = 0.0) -> Student:
    """Distill ``teacher`` into a student that samples in ``nfe`` evaluations.

    Args:
        teacher: a ``Denoiser`` around a ``torch.nn.Module`` (left unchanged).
        method: a name from ``list_methods()``.
        nfe: the student's evaluations per sample (default 2; 1 for SiD, whose generator is one-step; SFD-v: its
            default one, ``options["nfes"]`` lists all, default ``nfe .. nfe + 3``; a consistency or ReFlow student
            also samples at NFE 1-4, ``load_model(path, nfe=n)``).
        iterations: training iterations (an SFD iteration is one batch of trajectories and one Adam update per
            trained student step).
        batch: trajectories (SFD), training inputs (progressive) or generator samples (SiD) per iteration.
        lr: Adam's learning rate (default: the method's); every method but progressive divides it by 10 after half
            the iterations (SFD's official code does; for the others it is our choice).
        seed: every iteration draws its noise from a generator seeded by ``(seed, iteration)``.
        options: the method's options (``list_methods()[method].options``).
        student: the network to train (default: a copy of the teacher's, or for SFD-v a step-conditioned copy).
        data: training data ``[N, *shape]`` for progressive distillation, consistency distillation/training and
            shortcut models (default for the bundled digits models: the digits' train split).
        out: save the student as ``out`` (``.json``) and its weights beside it; checkpoints go to ``out`` with the
            suffix ``.ckpt`` every ``checkpoint_every`` iterations, and ``resume`` continues from there.
        progress: show a progress bar with the time left.
        ema: keep an exponential moving average of the student's weights with this decay per iteration and save
            it instead of the last iterate (0: the last iterate); it averages about ``1 / (1 - ema)`` iterations.
    """
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}")
    if nfe is None:
        nfe = 1 if method == "sid" else 2
    check_count("nfe", nfe, 1, MAX_NFE)
    check_count("iterations", iterations, 1, MAX_ITERATIONS)
    check_count("batch", batch, 1, MAX_BATCH)
    check_count("checkpoint_every", checkpoint_every, 1, MAX_ITERATIONS)
    check_ema(ema)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    info = METHODS[method]
    opts = _options(method, options)
    lr = info.lr if lr is None else float(lr)
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}")
    if student is None:
        trainable_net(teacher)  # a clear error for a teacher with nothing to fine-tune
    teacher_net = _network_or_none(teacher)
    name = _teacher_name(teacher)
    if out is not None:
        out = Path(out)
        if out.suffix != ".json":
            raise ValueError(f"out must name the student's record, NAME.json; got {out}")
        if name != DIFFUSERS and name not in trained.SPECS:
            raise ValueError(f"a student can be saved for a bundled trained model ({', '.join(trained.SPECS)}) or "
                             f"a diffusers UNet2DModel; {name!r} can be distilled but not saved (leave out out=)")
    step_condition = method in ("sfd-v", "shortcut")
    if student is None:
        if step_condition:
            if name not in trained.SPECS:
                raise ValueError(f"{method} needs a network with a step input: a bundled digits model "
                                 f"({', '.join(trained.SPECS)}); got {name!r} (use method 'sfd', or pass "
                                 "student= a Denoiser whose network takes steps=)")
            net, student = build_network(name, step_condition=True)
            missing = net.load_state_dict(teacher_net.state_dict(), strict=False).missing_keys
            if any(not k.startswith("step_mlp.") for k in missing):
                raise ValueError(f"the teacher's weights do not fit the step-conditioned network: {missing[:3]}")
            net.float().requires_grad_(True)
        else:
            student, net = student_copy(teacher)
    else:
        net = trainable_net(student, "student")
        net.requires_grad_(True)
    if method == "sid" and nfe != 1:
        raise ValueError(f"sid trains a one-step generator: nfe must be 1; got {nfe}")
    nfes = (nfe,)
    if method in ANY_NFE:
        nfes = tuple(sorted({1, 2, 3, 4, nfe}))
    if method == "shortcut":  # the trained step counts up to 4 (powers of two) and the asked one
        ladder = levels(opts["max_steps"])
        if nfe not in ladder:
            raise ValueError(f"a shortcut model samples at the trained step counts {sorted(ladder)}; got nfe={nfe}")
        nfes = tuple(sorted({n for n in ladder if n <= 4} | {nfe}))
    elif step_condition:
        nfes = tuple(opts["nfes"] or range(nfe, nfe + 4))
        for n in nfes:
            check_count("each of nfes", n, 1, MAX_NFE)
        if nfe not in nfes:
            raise ValueError(f"nfe={nfe} must be one of the trained nfes {list(nfes)}")
    afs = bool(opts.get("afs", info.afs))
    checkpoint = None if out is None else out.with_suffix(".ckpt")
    digest = (teacher_digest(teacher, teacher_net) if teacher_net is not None
              else teacher.weights_sha256 or f"identity:{model_hash(teacher)}")
    identity = {"teacher": name, "teacher_sha256": digest, "method": method,
                "nfes": list(nfes), "iterations": iterations, "batch": batch, "lr": lr, "seed": seed,
                "options": {k: v for k, v in opts.items()}, "ema": ema}
    if method in ("progressive", "shortcut", *CONSISTENCY) and data is None and name in trained.SPECS:
        data = digits_data("train")[0].reshape(-1, *teacher.shape)
    lr_at = None
    if method in CONSISTENCY:
        step = Consistency(teacher, student, mode=method, data=data, batch=batch, iterations=iterations,
                           options={**METHODS["cd"].options, **METHODS["ct"].options, **opts})
        extra = load_extra = None
    elif method == "reflow":
        step = ReFlow(teacher, student, batch=batch, pairs=int(opts["pairs"]), seed=seed,
                      teacher_solver=str(opts["teacher_solver"]), teacher_steps=int(opts["teacher_steps"]),
                      normalize=bool(opts["normalize"]))
        extra = load_extra = None
    elif method == "shortcut":
        step = Shortcut(teacher, student, data=data, batch=batch, max_steps=int(opts["max_steps"]))
        extra = load_extra = None
    elif method == "sid":
        fake, fake_net = student_copy(teacher if teacher_net is not None else student)
        step = SiD(teacher, student, fake, fake_net, batch=batch, sigma_g=opts["sigma_g"], alpha=float(opts["alpha"]),
                   t_max=opts["t_max"], lr=lr if opts["fake_lr"] is None else float(opts["fake_lr"]))
        extra, load_extra = step.extra_state, step.load_extra
    elif method == "progressive":
        step = Progressive(teacher, student, net, nfe=nfe, rounds=int(opts["rounds"]), iterations=iterations,
                           batch=batch, data=data)
        extra, load_extra = step.extra_state, step.load_extra
    else:
        step = SFD(teacher, student, nfes=nfes, batch=batch, afs=afs, substeps=int(opts["substeps"]),
                   teacher_solver=str(opts["teacher_solver"]), step_condition=step_condition,
                   pool=opts["pool"], refresh=opts["refresh"], seed=seed, loss=opts["loss"])
        extra, load_extra = step.extra_state, step.load_extra
    if method != "progressive":
        def lr_at(i: int) -> float:  # SFD's official schedule; ours for the other methods
            return lr if i < iterations // 2 else lr / 10
    result = train(net, step, iterations=iterations, seed=seed, lr=lr, identity=identity, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every, resume=resume, progress=progress, extra_state=extra,
                   load_extra=load_extra, lr_at=lr_at, desc=f"distill {method}", ema=ema)
    net.eval().requires_grad_(False)
    grids = {n: (flow_time_grid(n, start_sigma(teacher)) if method in ("reflow", "shortcut")
                 else (float(opts["sigma_g"]), 0.0) if method == "sid"
                 else student_grid(teacher, n + int(afs))) for n in nfes}
    consistency = ({"sigma_min": step.sigma_min, "sigma_data": step.sigma_data} if method in CONSISTENCY
                   else None)
    record = StudentRecord(teacher=name, teacher_sha256=identity["teacher_sha256"], method=method, nfe=nfe,
                           grids=grids, afs=afs, seed=seed, weights="unsaved", weights_sha256="unsaved",
                           solver="consistency" if consistency else "euler", consistency=consistency,
                           step_condition=step_condition, diffusers=_diffusers_configs(teacher, teacher_net),
                           training={**identity, "final_loss": result["loss"],
                                     "cpu_seconds": round(result["cpu_seconds"], 2), "torch": torch.__version__,
                                     "threads": torch.get_num_threads()})
    if out is not None:
        save_student(out, net, record)
        from_disk = StudentRecord.from_json(out.read_text(), where=str(out))
        return Student(student, net, from_disk)
    return Student(student, net, record)
