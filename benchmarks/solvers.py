"""Every deterministic solver on every bundled model at NFE 3-10, with the peers beside them, and
each solver's per-step overhead. Writes the `solvers` section of docs/benchmarks.md and its plots.

    .venv/bin/python benchmarks/solvers.py            # about 10-20 minutes on 2 cores

Numbers in docs/benchmarks.md between the `solvers` markers come only from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fewstep.bench.report import markers, replace_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
MODELS = ["digits-gmm", "digits-edm", "digits-flow", "digits-vp-eps"]
NFES = [3, 4, 5, 6, 8, 10]
# The training-free deterministic solvers (issue 2); euler is ddim under another name, and the
# tuned solvers (dpm_solver_v3, *_dc, iia_*, usf) have their own section.
UNTUNED = ["ddim", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc", "deis",
           "ipndm", "ipndm_v", "ddim_accelerated", "gradient_estimation"]


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (append if absent)."""
    begin, end = markers(name)
    text = doc.read_text() if doc.exists() else None
    doc.write_text(replace_section(text, begin, end, f"{begin}\n{body.strip()}\n{end}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0-127")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default=None, help="also keep the raw rows here")
    ap.add_argument("--rtol", type=float, default=1e-4, help="tolerance of the reference ODE solutions")
    args = ap.parse_args()

    from fewstep.bench.harness import BenchSpec, run_bench, solver_overhead
    from fewstep.bench.peers import peer_rows
    from fewstep.bench.report import markdown_table, plot_quality
    from fewstep.commands.args import parse_seeds
    from fewstep.models import list_models

    models = [m for m in args.models.split(",") if m in list_models()]
    solvers = UNTUNED
    spec = BenchSpec(models=models, solvers=solvers, schedules=["karras"], nfes=NFES, metrics=["rmse_ref", "fd"],
                     seeds=parse_seeds(args.seeds), peers=["diffusers", "kdiffusion"], extra={"rtol": args.rtol})
    t0 = time.time()
    rows = run_bench(spec) + peer_rows(spec)
    minutes = (time.time() - t0) / 60
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    IMG.mkdir(parents=True, exist_ok=True)
    parts = [
        "## Solvers at NFE 3-10",
        f"Made by `python benchmarks/solvers.py` ({minutes:.0f} min on {rows[0]['device']}); "
        f"{len(spec.seeds)} seeds, Karras grid (rho 7) from each model's sigma_max (80 for digits-flow, whose "
        "sigma_max is infinite) to its sigma_min, then 0. Each cell is `rmse_ref / fd`: RMSE to the adaptive float64 "
        f"reference ODE solution from the same noise (adaptive Dormand-Prince at rtol {args.rtol:g}, checked by "
        "halving), and the Fréchet distance to the held-out digits in the "
        "bundled classifier's feature space. Columns are NFE budgets; a solver uses at most that many "
        "evaluations (Heun and the singlestep solvers use an odd number). Peers' rows run their own code "
        "on the same wrapped model, noise and grid.",
    ]
    for m in models:
        sub = [r for r in rows if r["model"] == m]
        plot = IMG / f"solvers-{m}.png"
        plot_quality([r for r in sub if r.get("source") == "fewstep"], "rmse_ref", plot)
        parts += [f"### {m}", f"![rmse_ref against NFE on {m}](img/{plot.name})", "",
                  markdown_table(sub, ["rmse_ref", "fd"], NFES)]
    over = solver_overhead(solvers)
    parts += ["### Per-step overhead",
              "Solver time per step (everything but the model) as a fraction of one evaluation of digits-edm "
              "at batch 256 on this CPU: `fewstep.bench.harness.solver_overhead`.", "",
              "| solver | overhead per step / one model evaluation |", "|---|---|"]
    parts += [f"| {s} | {v:.3f} |" for s, v in over.items()]
    write_section(DOC, "solvers", "\n".join(parts))
    print(f"wrote {DOC} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
