"""Train the bundled digits networks (``fewstep.models.trained``), deterministically, on the CPU.

Each model is the same small U-Net (``fewstep.models.nets``) trained on the fixed train split of
the 8x8 digits (``fewstep.models.digits_data``, 1438 images in [-1, 1]) with one objective:

- ``digits-edm``: EDM (Karras et al., arXiv 2206.00364, Sec. 5 and Table 1): log-normal
  ``sigma`` (P_mean = -1.2, P_std = 1.2), loss weight ``(sigma^2 + sd^2) / (sigma sd)^2``, sd = 0.5.
- ``digits-flow``: rectified flow / conditional flow matching (arXiv 2209.03003, 2210.02747):
  ``t ~ U(0, 1)``, ``x_t = (1 - t) x0 + t eps``, regress the velocity ``u = eps - x0``.
- ``digits-vp-eps``: DDPM (arXiv 2006.11239, Algorithm 1): ``t`` uniform on 0..999, linear betas,
  regress ``eps``.

Adam with a linear warm-up and a cosine decay, gradient clipping, and an exponential moving
average (EMA) of the weights, which is what is saved (as float16 safetensors, with the config,
the run's settings and the final loss in the metadata). No data augmentation: digits are not
invariant to flips, and the data set's digits are centred, so shifts would change the
distribution the models are meant to learn.

Determinism: fixed seeds, one generator for all training randomness,
``torch.use_deterministic_algorithms(True)`` and a fixed thread count (default 1). The same
torch version on the same CPU reproduces the weights bit for bit; the script prints each file's
SHA-256, which goes into ``SHA256`` in ``src/fewstep/models/trained.py``.

Run time (1,200 steps of 128 per model, measured on a 2-core AMD EPYC machine shared with other
jobs, torch 2.13.0 CPU): a step takes about 0.21 s on a quiet core, i.e. 4 to 5 minutes per
model; under the other jobs' load (load average 3 to 12) the runs took 508 to 1056 s per model.
The script prints its run time; docs/models.md lists each run. It uses one thread because on a
shared 2-core machine two OpenMP threads spin-wait on each other and run several times slower
(10x in one measurement).

From the repository root::

    .venv/bin/python scripts/train_digits.py digits-edm digits-flow digits-vp-eps
    .venv/bin/python scripts/train_digits.py digits-edm --steps 50 --out /tmp/w   # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from fewstep.diffusion.processes import VPDiscrete
from fewstep.models import trained
from fewstep.models.digits_data import digits_data
from fewstep.models.nets import count_parameters

SEED = 0
STEPS = 1200
BATCH = 128
LR = 2e-3
WARMUP = 100
FINAL_LR_FRACTION = 0.05
EMA_HALF_LIFE = 150  # steps
CLIP = 1.0
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training distribution of sigma


def edm_loss(name: str, net, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """EDM Eq. 8 with Table 1's weighting ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``."""
    denoiser = trained.wrap(name, net)
    sd = trained.SIGMA_DATA
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(x0.shape[0], generator=g))
    noise = torch.randn(x0.shape, generator=g) * sigma[:, None, None, None]
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    per_sample = (denoiser(x0 + noise, sigma) - x0).square().mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def flow_loss(name: str, net, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Conditional flow matching on the linear path: ``|u_theta(x_t, t) - (eps - x0)|^2``."""
    t = torch.rand(x0.shape[0], generator=g)
    eps = torch.randn(x0.shape, generator=g)
    tt = t[:, None, None, None]
    return (net((1 - tt) * x0 + tt * eps, t) - (eps - x0)).square().mean()


_ABAR = torch.from_numpy(VPDiscrete.from_betas("linear").alphas_cumprod).float()


def vp_eps_loss(name: str, net, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """DDPM's simple loss: ``|eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps|^2``."""
    t = torch.randint(0, _ABAR.numel(), (x0.shape[0],), generator=g)
    abar = _ABAR[t][:, None, None, None]
    eps = torch.randn(x0.shape, generator=g)
    return (net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t.float()) - eps).square().mean()


LOSSES = {"edm": edm_loss, "flow": flow_loss, "vp-eps": vp_eps_loss}


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(name: str, steps: int, batch: int, seed: int) -> tuple[dict[str, torch.Tensor], float, float]:
    """Returns the EMA weights, the mean training loss of the last 10 % of steps, and the seconds taken."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train = digits_data("train")[0].reshape(-1, *trained.SHAPE)
    net = trained.build_net(name)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(0.9, 0.99))
    loss_fn = LOSSES[trained.SPECS[name].objective]
    decay = 0.5 ** (1 / EMA_HALF_LIFE)
    order, pos, tail = torch.randperm(len(x_train), generator=g), 0, []
    for step in range(steps):
        if pos + batch > len(order):  # a new epoch: sample without replacement
            order, pos = torch.randperm(len(x_train), generator=g), 0
        x0 = x_train[order[pos:pos + batch]]
        pos += batch
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps)
        loss = loss_fn(name, net, x0, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        with torch.no_grad():
            d = min(decay, (1 + step) / (10 + step))  # short warm-up of the average
            for k, v in net.state_dict().items():
                ema[k].mul_(d).add_(v, alpha=1 - d) if v.is_floating_point() else ema[k].copy_(v)
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"  {name} step {step + 1}/{steps}  loss {loss.item():.4f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return ema, sum(tail) / len(tail), time.perf_counter() - start


def save_weights(state: dict[str, torch.Tensor], info: dict, path: Path) -> None:
    """Write ``state`` as float16 safetensors with ``info`` as JSON under the one metadata key ``fewstep``.

    One key, because safetensors writes several metadata keys in a random order, which would give
    the same weights a different SHA-256 on every run.
    """
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"fewstep": json.dumps(info, sort_keys=True)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help=f"model names: {', '.join(trained.SPECS)}")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimiser steps (default {STEPS})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the docstring)")
    parser.add_argument("--out", type=Path, default=trained.DATA_DIR, help="output folder (default: package data)")
    args = parser.parse_args(argv)
    bad = [m for m in args.models if m not in trained.SPECS]
    if bad:
        parser.error(f"unknown model(s) {bad}; choose from {', '.join(trained.SPECS)}")
    for flag in ("steps", "batch", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1; got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    for name in args.models:
        spec = trained.SPECS[name]
        print(f"{name}: {count_parameters(trained.build_net(name))} parameters, {args.steps} steps of "
              f"{args.batch}, {args.threads} thread(s)", flush=True)
        ema, final_loss, seconds = train(name, args.steps, args.batch, args.seed)
        info = {"model": name, "config": spec.config.to_dict(), "steps": args.steps, "batch": args.batch,
                "seed": args.seed, "final_loss": round(final_loss, 5), "threads": args.threads,
                "torch": torch.__version__}
        path = args.out / spec.file
        save_weights(ema, info, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name}: final loss {final_loss:.4f} (mean of the last 10% of steps), {seconds:.1f} s")
        print(f'    "{spec.file}": "{digest}",  # {path.stat().st_size / 1e6:.2f} MB', flush=True)
    print(f"total run time {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
