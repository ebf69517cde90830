"""The measurements behind docs/compat.md: ``python -m fewstep.bench.compat`` prints its tables.

1. Agreement: every peer sampler against the fewstep solver that runs the same algorithm, on the
   same exact model, noise and Karras grid, in float64 (relative max difference).
2. Differences: where fewstep deliberately differs, each side's error against a float64 adaptive
   reference of the probability-flow ODE.
"""

from __future__ import annotations

import numpy as np
import torch

from fewstep.bench.peers import PEERS, run_peer
from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.reference import reference_solution
from fewstep.diffusion.sampling import seeded_noise, solve
from fewstep.diffusion.schedules import karras
from fewstep.metrics import rmse
from fewstep.models import load_model
from fewstep.models.exact import Gauss

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def grids(n: int) -> dict[str, list[float]]:
    """``n`` steps on a Karras grid, ending at 0 or at sigma_min."""
    return {"zero": karras(n, SIGMA_MIN, SIGMA_MAX).tolist() + [0.0],
            "min": karras(n + 1, SIGMA_MIN, SIGMA_MAX).tolist()}


def agreement_table(model_name: str = "digits-gmm", n: int = 10, batch: int = 8) -> str:
    model = load_model(model_name)
    x = SIGMA_MAX * seeded_noise(range(batch), model.shape, dtype=torch.float64)
    rows = ["| peer | sampler | fewstep solver | grid to 0 | grid to sigma_min |", "|---|---|---|---|---|"]
    for peer, table in PEERS.items():
        for name, spec in table.items():
            if spec.fewstep is None:
                continue
            cells = []
            for grid in grids(n).values():
                ours = solve(model, x, grid, spec.fewstep, **spec.options)
                cells.append(f"{_rel(run_peer(peer, name, model, x, grid), ours):.1e}")
            opts = ", ".join(f"{k}={v!r}" for k, v in spec.options.items())
            rows.append(f"| {peer} | `{spec.target}` | `{spec.fewstep}({opts})` | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def differences_table(model_name: str = "digits-gmm", steps: tuple[int, ...] = (6, 10, 14), batch: int = 16) -> str:
    model = load_model(model_name)
    x = SIGMA_MAX * seeded_noise(range(batch), model.shape, dtype=torch.float64)
    ref = reference_solution(model, x, SIGMA_MAX, rtol=1e-8, atol=1e-10)
    runs = {
        "diffusers DPMSolverMultistep 3M (official coefficients)":
            lambda g: run_peer("diffusers", "dpmpp_3m", model, x, g),
        "fewstep dpmpp_3m (exact, default)": lambda g: solve(model, x, g, "dpmpp_3m"),
        "diffusers DEISMultistep order 3 (logrho; last step's limit at 0)":
            lambda g: run_peer("diffusers", "deis", model, x, g),
        "fewstep deis order 3 (tAB, default)": lambda g: solve(model, x, g, "deis"),
        "fewstep deis order 3, variable='log_sigma' (diffusers' form)":
            lambda g: solve(model, x, g, "deis", variable="log_sigma"),
        "diffusers UniPC bh1, final_sigmas_type='zero' (verbatim)":
            lambda g: run_peer("diffusers", "unipc_bh1", model, x, g, final_limit=False),
        "fewstep unipc variant='bh1'": lambda g: solve(model, x, g, "unipc", variant="bh1"),
        "fewstep unipc (bh2, default)": lambda g: solve(model, x, g, "unipc"),
        "diffusers IPNDMScheduler fed an epsilon model": lambda g: run_peer("diffusers", "ipndm", _EpsAsV(model), x, g),
        "fewstep ipndm (= IPNDMScheduler fed v)": lambda g: solve(model, x, g, "ipndm"),
    }
    head = "| run | " + " | ".join(f"N = {n}" for n in steps) + " |"
    rows = [head, "|---|" + "---|" * len(steps)]
    for label, fn in runs.items():
        cells = []
        for n in steps:
            out = fn(grids(n)["zero"])
            cells.append("NaN" if not torch.isfinite(out).all() else f"{rmse(out, ref):.2e}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


class _EpsAsV(Denoiser):
    """A model whose epsilon output IPNDMScheduler reads as v (its model-output convention).

    ``run_peer`` hands IPNDMScheduler ``v = (a x_t - D') / b`` of the denoiser it is given; choosing
    ``D' = a x_t - b eps`` makes that ``v`` equal the true ``eps``, which is what an epsilon model outputs.
    """

    def __init__(self, inner: Denoiser):
        super().__init__(inner.process)
        self.inner, self.shape = inner, inner.shape

    def denoise(self, x, sigma, cond):
        s = bcast(sigma, x)
        a = torch.rsqrt(1 + s**2)
        eps = (x - self.inner(x, sigma)) / s
        return a * a * x - s * a * eps


def order_table(Ns: tuple[int, ...] = (64, 128, 256)) -> str:
    gauss = Gauss(dim=3, mean=torch.tensor([0.5, -1.0, 0.0]), std=torch.tensor([0.5, 1.0, 2.0]))
    x = SIGMA_MAX * torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = gauss.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    rows = ["| 3M variant | " + " | ".join(f"N = {n}" for n in Ns) + " | fitted order |",
            "|---|" + "---|" * (len(Ns) + 1)]
    for label, fn in (("diffusers / k-diffusion / dpm-solver (official)",
                       lambda g: run_peer("diffusers", "dpmpp_3m", gauss, x, g)),
                      ("fewstep exact", lambda g: solve(gauss, x, g, "dpmpp_3m", lower_order_final=False))):
        errs = [float((fn(karras(n + 1, SIGMA_MIN, SIGMA_MAX).tolist()) - ref).abs().max()) for n in Ns]
        slope = -np.polyfit(np.log(Ns), np.log(errs), 1)[0]
        rows.append(f"| {label} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {slope:.2f} |")
    return "\n".join(rows)


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print("## Agreement (digits-gmm, 8 samples, 10-step Karras grid, float64; relative max difference)\n")
    print(agreement_table())
    print("\n## Differences (digits-gmm, 16 samples, Karras grid to 0; RMSE to an adaptive float64 reference)\n")
    print(differences_table())
    print("\n## 3M convergence (Gaussian data, Karras grid to sigma_min, max error to the exact solution)\n")
    print(order_table())
    print(f"\n(sigma range {SIGMA_MIN}..{SIGMA_MAX}; torch {torch.__version__})")


if __name__ == "__main__":
    main()
