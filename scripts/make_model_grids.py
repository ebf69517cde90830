"""Sample grids and quality numbers of the bundled trained digits models (``docs/models.md``).

For each model it draws ``--n`` samples (seeds ``0 .. n-1``, one generator per sample, so the
grid does not depend on ``--n``) with ``fewstep.sample`` on a Karras grid (rho = 7) that starts at
``sigma = 80`` and ends at 0, clamps them to the pixel range [-1, 1], writes the first 100 as a
10x10 grid to ``docs/img/<model>.png``, and prints a Markdown table row with

- ``FD``: the Fréchet distance in the feature space of the bundled digits classifier
  (``fewstep.metrics.frechet.fd_digits``) to the 359 held-out digits, which no model saw;
- ``confident``: the share of samples the classifier labels with probability > 0.9;
- ``classes``: how many samples it assigns to each digit 0..9 (per 100 samples);
- ``NN``: the median Euclidean distance from a sample to its nearest train digit.

Two rows of real digits come first. The held-out row gives the classifier's confidence on digits
it never saw and the NN distance of fresh digits: a model far below that NN copies its training
set. The train-split row gives the FD floor an ideal model reaches (FD is biased upwards at small
sample sizes, so compare rows at the same ``--n``); its confidence is in brackets because the
classifier was trained on those digits.

From the repository root (the numbers in docs/models.md)::

    .venv/bin/python scripts/make_model_grids.py --n 1000
    .venv/bin/python scripts/make_model_grids.py digits-gmm --n 1000 --no-grids   # another model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewstep
from fewstep.metrics.features import digits_classifier
from fewstep.metrics.frechet import fd_digits
from fewstep.models.digits_data import digits_data

TRAINED = ("digits-edm", "digits-flow", "digits-vp-eps")
IMG_DIR = Path(__file__).resolve().parents[1] / "docs" / "img"


def sample_digits(name: str, n: int, solver: str, nfe: int, sigma_max: float) -> torch.Tensor:
    """``n`` samples ``[n, 64]`` of model ``name``, clamped to [-1, 1]."""
    model = fewstep.load_model(name)
    with torch.inference_mode():
        x = fewstep.sample(model, solver=solver, nfe=nfe, schedule="karras",
                           schedule_options={"sigma_max": sigma_max}, seeds=range(n))
    return x.reshape(n, 64).float().clamp(-1, 1)


def nearest_distance(x: torch.Tensor, train: torch.Tensor) -> float:
    """Median over ``x`` of the Euclidean distance to the nearest row of ``train`` (both ``[N, 64]``)."""
    return float(torch.cdist(x.double(), train.double()).min(dim=1).values.median())


def quality(x: torch.Tensor, reference: torch.Tensor, train: torch.Tensor) -> dict[str, object]:
    """FD to ``reference``, the confident share, the class histogram and the distance to ``train``."""
    with torch.inference_mode():
        probs = torch.softmax(digits_classifier()(x.reshape(-1, 1, 8, 8)), dim=1)
    confidence, label = probs.max(dim=1)
    per100 = torch.bincount(label, minlength=10).double() * 100 / len(x)
    return {"fd": fd_digits(x, reference), "confident": float((confidence > 0.9).double().mean()),
            "classes": " ".join(f"{c:.0f}" for c in per100.tolist()), "nn": nearest_distance(x, train)}


def save_grid(x: torch.Tensor, path: Path, rows: int = 10, scale: int = 4, gap: int = 2) -> None:
    """Write ``rows x rows`` digits (``[>= rows^2, 64]`` in [-1, 1]) as a grey-scale PNG, ink dark."""
    if len(x) < rows * rows:
        raise ValueError(f"a {rows}x{rows} grid needs {rows * rows} samples; got {len(x)}")
    cell = 8 * scale + gap
    canvas = np.full((rows * cell + gap, rows * cell + gap), 200, dtype=np.uint8)
    # The digits data has ink at +1 and background at -1; draw ink dark on white like the scans.
    pixels = ((1 - x[: rows * rows].double().numpy()) * 127.5).round().clip(0, 255).astype(np.uint8)
    for i, img in enumerate(pixels.reshape(-1, 8, 8)):
        r, c = divmod(i, rows)
        big = np.kron(img, np.ones((scale, scale), dtype=np.uint8))
        canvas[gap + r * cell: gap + r * cell + 8 * scale, gap + c * cell: gap + c * cell + 8 * scale] = big
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas, mode="L").save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(TRAINED), help="registered model names")
    parser.add_argument("--n", type=int, default=1000, help="samples per model (>= 100; default 1000)")
    parser.add_argument("--solver", default="heun", help="a fewstep solver (default heun)")
    parser.add_argument("--nfe", type=int, default=59, help="model evaluations per sample (default 59)")
    parser.add_argument("--sigma-max", type=float, default=80.0, help="the first sigma (default 80)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-grids", action="store_true", help="print the numbers only")
    parser.add_argument("--out", type=Path, default=IMG_DIR, help="folder of the PNGs (default docs/img)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in fewstep.list_models()]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(fewstep.list_models())}")
    if args.n < 100:
        parser.error(f"--n must be >= 100 (the grid shows 100); got {args.n}")
    if args.nfe < 1 or args.threads < 1:
        parser.error(f"--nfe and --threads must be >= 1; got {args.nfe} and {args.threads}")
    torch.set_num_threads(args.threads)

    heldout = digits_data("heldout")[0]
    train = digits_data("train")[0]
    print(f"{args.n} samples per model, {args.solver} with {args.nfe} NFE on a Karras grid from sigma = "
          f"{args.sigma_max:g} to 0; FD to the {len(heldout)} held-out digits; torch {torch.__version__}\n")
    print("| model | FD to held-out | confident (p > 0.9) | per 100: digits 0 1 2 3 4 5 6 7 8 9 | NN | sampling s |")
    print("|---|---|---|---|---|---|")
    q = quality(heldout, heldout, train)
    print(f"| held-out split ({len(heldout)} real digits, never trained on) | - | {q['confident']:.3f} "
          f"| {q['classes']} | {q['nn']:.2f} | - |")
    real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.n]]
    q = quality(real, heldout, train)
    print(f"| train split ({len(real)} real digits) | {q['fd']:.2f} | ({q['confident']:.3f}) | {q['classes']} "
          f"| {q['nn']:.2f} | - |", flush=True)
    for name in args.models:
        start = time.perf_counter()
        x = sample_digits(name, args.n, args.solver, args.nfe, args.sigma_max)
        seconds = time.perf_counter() - start
        q = quality(x, heldout, train)
        print(f"| {name} | {q['fd']:.2f} | {q['confident']:.3f} | {q['classes']} | {q['nn']:.2f} | {seconds:.1f} |",
              flush=True)
        if not args.no_grids:
            save_grid(x, args.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
