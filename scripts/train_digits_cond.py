"""Train ``digits-cond`` (``fewstep.models.cond``), deterministically, on the CPU.

A class-conditional EDM denoiser (Karras et al., arXiv 2206.00364, Sec. 5 and Table 1: log-normal
``sigma`` with P_mean = -1.2, P_std = 1.2, loss weight ``(sigma^2 + sd^2) / (sigma sd)^2``, sd = 0.5)
on the train split of the 8x8 digits (1438 images in [-1, 1]). Each label is replaced by the null
class 10 with probability ``P_UNCOND`` (label dropout, Ho & Salimans, arXiv 2207.12598), so the same
net also predicts unconditionally and classifier-free guidance needs no second model.

Adam with a linear warm-up and a cosine decay, gradient clipping, and an exponential moving average
(EMA) of the weights, which is what is saved (float16 safetensors; the metadata holds the config, the
settings and the final loss as one sorted JSON string, so the file is byte-reproducible). Fixed seeds,
one generator for all training randomness, ``torch.use_deterministic_algorithms(True)`` and one thread
by default (two OpenMP threads on a shared 2-core machine spin-wait on each other). The script prints
its run time and the file's SHA-256, which goes into ``SHA256`` in ``src/fewstep/models/cond.py``.
Measured: 277-324 s on a shared 2-core AMD EPYC with torch 2.13.0 CPU (1289 s while the machine was
heavily loaded by other jobs).

From the repository root::

    .venv/bin/python scripts/train_digits_cond.py
    .venv/bin/python scripts/train_digits_cond.py --steps 50 --out /tmp/w   # a quick check
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

from fewstep.models import cond
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
P_MEAN, P_STD = -1.2, 1.2
P_UNCOND = 0.12  # label dropout


def loss_fn(denoiser, x0: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """EDM Eq. 8 with Table 1's weighting, on labels of which a fraction ``P_UNCOND`` is dropped."""
    drop = torch.rand(labels.shape, generator=g) < P_UNCOND
    labels = torch.where(drop, torch.full_like(labels, cond.NULL_CLASS), labels)
    sd = cond.SIGMA_DATA
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(x0.shape[0], generator=g))
    noise = torch.randn(x0.shape, generator=g) * sigma[:, None, None, None]
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    per_sample = (denoiser(x0 + noise, sigma, {"class_labels": labels}) - x0).square().mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(steps: int, batch: int, seed: int) -> tuple[dict[str, torch.Tensor], float, float]:
    """Returns the EMA weights, the mean loss of the last 10 % of steps, and the seconds taken."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = digits_data("train")
    x_train = x_train.reshape(-1, *cond.SHAPE)
    net = cond.CondDigitsUNet(cond.CONFIG)
    denoiser = cond.wrap(net)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(0.9, 0.99))
    decay = 0.5 ** (1 / EMA_HALF_LIFE)
    order, pos, tail = torch.randperm(len(x_train), generator=g), 0, []
    for step in range(steps):
        if pos + batch > len(order):  # a new epoch: sample without replacement
            order, pos = torch.randperm(len(x_train), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps)
        loss = loss_fn(denoiser, x_train[idx], y_train[idx], g)
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
            seconds = time.perf_counter() - start
            print(f"  step {step + 1}/{steps}  loss {loss.item():.4f}  {seconds:.0f} s", flush=True)
    return ema, sum(tail) / len(tail), time.perf_counter() - start


def save(state: dict[str, torch.Tensor], info: dict, path: Path) -> None:
    """float16 safetensors with ``info`` as sorted JSON under the one metadata key ``fewstep``: safetensors
    writes its metadata map in no fixed order, so one key keeps the file byte-reproducible."""
    tensors = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"fewstep": json.dumps(info, sort_keys=True)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimiser steps (default {STEPS})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the docstring)")
    parser.add_argument("--out", type=Path, default=cond.WEIGHTS.parent, help="output folder (default: package data)")
    args = parser.parse_args(argv)
    for flag in ("steps", "batch", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1; got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"digits-cond: {count_parameters(cond.CondDigitsUNet(cond.CONFIG))} parameters, {args.steps} steps of "
          f"{args.batch}, label dropout {P_UNCOND}, {args.threads} thread(s)", flush=True)
    ema, final_loss, seconds = train(args.steps, args.batch, args.seed)
    info = {"model": "digits-cond", "config": cond.CONFIG.to_dict(), "steps": args.steps, "batch": args.batch,
            "seed": args.seed, "p_uncond": P_UNCOND, "final_loss": round(final_loss, 5), "threads": args.threads,
            "torch": torch.__version__}
    path = args.out / cond.WEIGHTS.name
    save(ema, info, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"digits-cond: final loss {final_loss:.4f} (mean of the last 10% of steps), training took {seconds:.1f} s")
    print(f'    SHA256 = "{digest}"  # {path} ({path.stat().st_size / 1e6:.2f} MB)', flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
