"""The defaults of ``fewstep.sample`` (issue 17, item 1): what to run when the user names neither a solver nor a
schedule, per model family and NFE, measured against the peers' own defaults.

    .venv/bin/python benchmarks/defaults.py measure gmm2d digits-gmm   # models in turn; run several processes at once
    .venv/bin/python benchmarks/defaults.py report --write             # selection, the table, the markdown section

``measure`` (with no names: every model of ``MODELS``, about 40 CPU-minutes on one thread, the nets most of it)
scores every candidate of fewstep (solver and options, with and without AFS, on the family's grids) and the peers'
samplers on one model at NFE 3-10 by rmse_ref (RMSE to the adaptive float64 reference ODE solution from the same
noise and the same starting sigma) and writes the rows to ``--out``. ``report`` picks one candidate per family and
NFE over the family's models except the held-out one (``HELD_OUT``: reported, never chosen on), prints the table
for ``src/fewstep/diffusion/defaults.py`` and writes the ``defaults`` section of docs/benchmarks.md.

The run goes through ``fewstep.sample`` and ``fewstep.bench.peers.run_peer`` directly rather than
``run_bench`` / ``peer_rows``, because those take a schedule by name only, and the candidates need schedule
options (the flow grids' ``shift``, a finite ``sigma_max`` on a flow model) and the peers their own grids.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
# Bundled models, and the exact models rebased onto the flow, discrete-VP and continuous (linear-beta) VP processes
# (``NAME@flow``, ``NAME@vp``, ``NAME@vpc``): in sigma space the exact denoiser is the same, only the family's grids
# and peers' defaults differ. No bundled net is continuous VP, so that family is chosen on exact models only.
MODELS = ["gmm2d", "digits-gmm", "digits-empirical", "digits-edm",
          "gmm2d@flow", "digits-gmm@flow", "digits-flow",
          "gmm2d@vp", "digits-gmm@vp", "digits-vp-eps",
          "gmm2d@vpc", "digits-gmm@vpc", "digits-empirical@vpc"]
HELD_OUT = {"ve": "digits-edm"}  # the model that the choice never sees (its family has three others)
NFES = list(range(3, 11))
# (solver, solver options) candidates; each also runs with the analytic first step (AFS, ``afs=True``).
SOLVERS: list[tuple[str, dict]] = [
    ("unipc", {}), ("unipc", {"variant": "bh1"}), ("unipc", {"order": 3}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
    ("ipndm", {}), ("ipndm", {"order": 3}), ("ipndm_v", {}), ("ipndm_v", {"order": 3}), ("deis", {}),
    ("deis", {"order": 2}), ("deis", {"variable": "log_sigma"}), ("deis", {"variable": "log_sigma", "order": 2}),
    ("dpm_solver_v3", {}),
]
AFS = (False, True)
CAP = 80.0  # SIGMA_CAP: where k-diffusion-style sigma grids start on a flow model
_SIGMA_GRIDS = [("karras", {}), ("karras", {"rho": 5.0}), ("karras", {"rho": 3.0}), ("logsnr", {}),
                ("time_uniform", {}), ("time_quadratic", {})]
# (schedule, options) candidates per family; sigma-space grids on a flow model start at CAP.
SCHEDULES = {
    "ve": _SIGMA_GRIDS,
    "vp_discrete": _SIGMA_GRIDS + [("discrete", {}), ("discrete", {"spacing": "linspace"})],
    "vp_continuous": _SIGMA_GRIDS,
    "flow": [(s, {**o, "sigma_max": CAP}) for s, o in _SIGMA_GRIDS if s in ("karras", "logsnr")]
            + [("time_uniform", {}), ("time_quadratic", {}), ("flow_shift", {"shift": 2.0}),
               ("flow_shift", {"shift": 3.0}), ("flow_shift", {"sigma_max": CAP}),
               ("flow_shift", {"shift": 3.0, "sigma_max": CAP}), ("flow_sigmas", {}), ("flow_sigmas", {"shift": 2.0}),
               ("flow_sigmas", {"shift": 3.0})],
}
# The peers' defaults: k-diffusion's sample_dpmpp_2m on its Karras grid; diffusers' DPM-Solver++(2M) on its own
# grid for the model (Karras for a sigma-space model, its timesteps for a discrete VP model, its flow sigmas for
# a flow model). Other peer samplers count only towards "the best untuned configuration of any library".
PEER_DEFAULTS = {("kdiffusion", "dpmpp_2m"), ("diffusers", "dpmpp_2m")}
PEER_SAMPLERS = [("kdiffusion", "dpmpp_2m"), ("kdiffusion", "lms"), ("diffusers", "dpmpp_2m"),
                 ("diffusers", "unipc"), ("diffusers", "deis"), ("diffusers", "ipndm")]


def peer_grids(model, nfe: int):
    """The grids a peer runs on at ``nfe``: ``[(name, sigmas, is_the_peers_default_grid)]``, Karras over the model's
    range for both, and diffusers' own grid for the family where that is not Karras (``fewstep.bench.peers``)."""
    from fewstep.bench.peers import default_grid
    from fewstep.diffusion.schedules import get_sigmas

    top = float(model.sigma_max) if math.isfinite(model.sigma_max) else CAP
    out = [("karras", get_sigmas("karras", nfe, model, sigma_max=top), model.process.family not in ("flow",
                                                                                                     "vp_discrete"))]
    if model.process.family in ("flow", "vp_discrete"):
        out.append((f"diffusers {model.process.family}", default_grid("diffusers", model, nfe), True))
    return out


def load(name: str):
    """A bundled model, or ``EXACT@flow`` / ``EXACT@vp`` / ``EXACT@vpc``: the exact model on the rectified-flow
    process, on the 1000-step linear-beta discrete VP process (the one digits-vp-eps was trained on), or on the
    continuous linear-beta VP SDE (beta 0.1 to 20, t in [1e-3, 1])."""
    import copy

    from fewstep.diffusion.processes import Flow, VPContinuous, VPDiscrete
    from fewstep.models import load_model

    base, _, rebase = name.partition("@")
    model = load_model(base)
    if rebase:
        model = copy.copy(model)
        model.process = {"flow": Flow, "vp": VPDiscrete.from_betas, "vpc": VPContinuous}[rebase]()
        model.name = name
    return model


def parse_candidate(text: str) -> tuple[str, dict]:
    """``SOLVER[:KEY=VALUE,...]`` (values read as JSON where they parse, else strings): one of ``SOLVERS``."""
    solver, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--only: expected KEY=VALUE in {text!r}, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if (solver, options) not in SOLVERS:
        raise SystemExit(f"--only: {text!r} is not a candidate; the candidates are "
                         + ", ".join(s + (":" + ",".join(f"{k}={v}" for k, v in o.items()) if o else "")
                                     for s, o in SOLVERS))
    return solver, options


def measure(name: str, seeds, rtol: float, out: Path, only: list[tuple[str, dict]] | None = None) -> None:
    """Score the candidates (``only``: those, and no peer, into ``NAME.only.json`` beside the full run's file)."""
    import torch

    from fewstep.bench.peers import run_peer
    from fewstep.diffusion.denoiser import CountingDenoiser
    from fewstep.diffusion.sampling import plan, sample, seeded_noise
    from fewstep.evaluation import reference_samples
    from fewstep.metrics.paired import rmse

    torch.set_num_threads(1)
    model = CountingDenoiser(load(name))
    family = model.process.family
    refs: dict[float, torch.Tensor] = {}

    def ref(top: float) -> torch.Tensor:
        top = float(f"{top:.9g}")  # one reference for grids whose first sigma differs by round-off
        if top not in refs:
            t0 = time.perf_counter()
            refs[top], tol = reference_samples(model.inner, seeds, sigma_max=top, rtol=rtol)
            print(f"{name}: reference from sigma {top:g} in {time.perf_counter() - t0:.0f} s, check {tol:.2e}",
                  flush=True)
        return refs[top]

    rows = []
    for solver, solver_options in only or SOLVERS:
        for afs in AFS:
            for schedule, options in SCHEDULES[family]:
                for nfe in NFES:
                    row = {"model": name, "family": family, "source": "fewstep", "solver": solver,
                           "solver_options": solver_options, "afs": afs, "schedule": schedule, "options": options,
                           "nfe_budget": nfe}
                    kw = dict(solver=solver, nfe=nfe, schedule=schedule, solver_options=solver_options,
                              schedule_options=options, afs=afs)
                    try:
                        top = float(plan(model, **kw).sigmas[0])
                        model.reset()
                        x = sample(model, seeds=seeds, **kw)
                    except ValueError as exc:
                        rows.append({**row, "error": str(exc)})
                        continue
                    rows.append({**row, "nfe": model.calls, "top": top, "rmse_ref": rmse(x.double(), ref(top))})
    noise = seeded_noise(seeds, model.shape, dtype=torch.float64)
    for peer, sampler in [] if only else PEER_SAMPLERS:
        for nfe in NFES:
            for grid_name, sigmas, default_grid in peer_grids(model, nfe):
                row = {"model": name, "family": family, "source": peer, "solver": f"{peer}:{sampler}",
                       "solver_options": {}, "afs": False, "schedule": grid_name, "options": {}, "nfe_budget": nfe,
                       "default": (peer, sampler) in PEER_DEFAULTS and (default_grid or peer == "kdiffusion")}
                top = float(sigmas[0])
                try:
                    model.reset()
                    with torch.no_grad():
                        x = run_peer(peer, sampler, model, top * noise, sigmas)
                except Exception as exc:  # a peer that cannot run this configuration is reported, not hidden
                    rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                rows.append({**row, "nfe": model.calls, "top": top, "rmse_ref": rmse(x.double(), ref(top))})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{'.only' if only else ''}.json"
    if only and path.exists():  # earlier --only runs of other candidates stay
        keep = {(r["solver"], json.dumps(r["solver_options"], sort_keys=True)) for r in rows}
        rows = [r for r in json.loads(path.read_text())
                if (r["solver"], json.dumps(r["solver_options"], sort_keys=True)) not in keep] + rows
    path.write_text(json.dumps(rows, indent=1))
    print(f"{name}: {len(rows)} rows", flush=True)


def _gmean(values) -> float:
    """The geometric mean: the choice's typical ratio, so that one model with tiny ratios does not decide."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _key(row) -> tuple:
    return (row["solver"], json.dumps(row.get("solver_options", {}), sort_keys=True), bool(row.get("afs")),
            row["schedule"], json.dumps(row["options"], sort_keys=True))


def _label(key) -> str:
    def opts(text):
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in json.loads(text).items())

    solver, schedule = key[0] + (f" ({opts(key[1])})" if opts(key[1]) else ""), key[3]
    return (f"{solver}{' + AFS' if key[2] else ''} / {schedule}"
            + (f" {opts(key[4])}" if opts(key[4]) else ""))


def report(out: Path, seeds: int, write: bool) -> None:
    rows = [r for p in sorted(out.glob("*.json")) for r in json.loads(p.read_text()) if "rmse_ref" in r]
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    score: dict[tuple, float] = {}  # (model, nfe, key) -> rmse_ref of a fewstep candidate
    best: dict[str, dict[tuple, tuple]] = {"default": {}, "peer": {}, "fewstep": {}}  # (model, nfe) -> (rmse, label)
    family = {r["model"]: r["family"] for r in rows}
    for r in rows:
        mn, e = (r["model"], r["nfe_budget"]), r["rmse_ref"]
        if r["nfe"] > r["nfe_budget"]:
            continue
        label = _label(_key(r))
        kinds = ["fewstep"] if r["source"] == "fewstep" else ["peer"] + (["default"] if r.get("default") else [])
        if r["source"] == "fewstep":
            score[(*mn, _key(r))] = e
        for kind in kinds:
            best[kind][mn] = min(best[kind].get(mn, (math.inf, "")), (e, label))
    peer_default, peer_any = best["default"], best["peer"]

    def miss(m, nfe, e):  # the target's measure: > 1 where it misses
        return max(e / peer_default[(m, nfe)][0], e / (1.05 * peer_any[(m, nfe)][0]))

    table, chosen_on = {}, {}
    for fam in sorted(set(family.values())):
        members = [m for m in models if family[m] == fam]
        pick = [m for m in members if m != HELD_OUT.get(fam)] or members
        chosen_on[fam] = pick
        for nfe in NFES:
            keys = {k for (m, n, k) in score if n == nfe and m in pick}
            full = [k for k in keys if all((m, nfe, k) in score and (m, nfe) in peer_default for m in pick)]
            if full:  # over the models chosen on: first never lose to a peer's default (the smallest worst ratio to
                # it), then the smallest worst miss of the whole target, then the best typical ratio to the best of
                # fewstep's own candidates on each model
                table[(fam, nfe)] = min(full, key=lambda k, nfe=nfe: (
                    max(1.0, *(score[(m, nfe, k)] / peer_default[(m, nfe)][0] for m in pick)),
                    max(1.0, *(miss(m, nfe, score[(m, nfe, k)]) for m in pick)),
                    _gmean([score[(m, nfe, k)] / best["fewstep"][(m, nfe)][0] for m in pick])))
    lines = ["DEFAULTS: dict[tuple[str, int], Default] = {"]
    for (fam, nfe), k in sorted(table.items()):
        lines.append(f"    ({json.dumps(fam)}, {nfe}): Default({json.dumps(k[0])}, {k[1]}, {json.dumps(k[3])}, {k[4]}"
                     + (", afs=True)," if k[2] else "),"))
    lines.append("}")
    print("\n".join(lines))
    peers = ", ".join(f"{p}:{s}" for p, s in PEER_SAMPLERS)
    md = [f"Made by benchmarks/defaults.py (its measure command on each model, then report --write; see its "
          f"docstring); {seeds} seeds, rmse_ref against the adaptive float64 reference ODE solution from the same "
          "noise and the same starting sigma (a grid is scored against the reference from its own first sigma). "
          "`NAME@flow`, `NAME@vp` and `NAME@vpc` are the exact models on the rectified-flow process, on the 1000-step "
          "linear-beta discrete VP process and on the continuous linear-beta VP SDE (no bundled net is continuous VP, "
          "so that family is chosen on exact models only): the same data and denoiser, the family's grids and peers. "
          "fewstep's "
          "default is the table in `src/fewstep/diffusion/defaults.py`, chosen per family and NFE over the models in "
          "*chosen on*: first the smallest worst ratio to the best peer default (so that it never loses to one where "
          "a candidate can avoid it), then the smallest worst miss of the whole target, then the best typical ratio "
          "to fewstep's best candidate. Candidates: fewstep's "
          f"{', '.join(sorted({s for s, _ in SOLVERS}))} with option variants, with and without the analytic first "
          "step (AFS), on the family's grids. The peers' defaults are k-diffusion's `sample_dpmpp_2m` on its Karras "
          "grid and diffusers' DPM-Solver++(2M) on its own grid for the model (Karras; the `linspace` timesteps "
          "for a discrete VP model; `use_flow_sigmas` for a flow model), both run by their own code. *Best peer "
          f"untuned* is the best of {peers} on Karras and on the peer's own grid. *Best fewstep* is the best of "
          "fewstep's candidates on that model alone: an oracle no fixed choice reaches, since the best "
          "configuration differs from model to model.", "",
          "| model | family | chosen on | NFE | fewstep default | rmse_ref | best peer default | rmse_ref | "
          "ratio | best peer untuned | rmse_ref | ratio | target | best fewstep | ratio |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    misses, missed, cells = [], [], 0
    for m in models:
        fam = family[m]
        for nfe in NFES:
            k = table.get((fam, nfe))
            if k is None or (m, nfe, k) not in score or (m, nfe) not in peer_default:
                continue
            cells += 1
            e, (pe, pl), (ae, al) = score[(m, nfe, k)], peer_default[(m, nfe)], peer_any[(m, nfe)]
            fe, fl = best["fewstep"][(m, nfe)]
            ok = miss(m, nfe, e) <= 1
            if not ok:
                missed.append((m, nfe))
                misses.append(f"{m} NFE {nfe}: {e:.4g} against the peer default {pe:.4g} ({e / pe:.2f}x) and the "
                              f"best peer untuned {ae:.4g} ({e / ae:.2f}x)")
            held = "held out" if m == HELD_OUT.get(fam) else ("itself" if chosen_on[fam] == [m] else "yes")
            md.append(f"| {m} | {fam} | {held} | {nfe} | {_label(k)} | {e:.4g} | {pl} | {pe:.4g} | {e / pe:.2f} | "
                      f"{al} | {ae:.4g} | {e / ae:.2f} | {'holds' if ok else 'misses'} | {fl} | {e / fe:.2f} |")
    md += ["", "The target (at every NFE in 3-10, fewstep's default at most the best peer default and within 1.05x "
           "of the best peer untuned configuration on every model) "
           + (f"holds in all {cells} cells." if not misses else f"misses {len(misses)} of {cells} cells:"), ""]
    md += [f"- {line}" for line in misses]
    why = _why_not(missed, table, score, chosen_on, miss, best, peer_any)
    if why:
        md += ["", "Why not: for each family and NFE with a miss, the best that any single candidate reaches on "
               "all the models it is chosen on (its worst miss; 1.00 or less would hold everywhere), and fewstep's "
               "own best configuration per model against the best peer untuned (an oracle that picks per model; "
               "at most 1.00 means fewstep has a configuration as good as every peer's on that model):", ""]
        md += [f"- {line}" for line in why]
    if any(m == HELD_OUT.get(family[m]) for m, _ in missed):
        md += ["", f"The held-out models ({', '.join(HELD_OUT.values())}) are never chosen on: their misses "
               "measure how the choice carries over to a model it has not seen."]
    missing = [m for m in MODELS if m not in models]
    if missing:
        md += ["", f"Not measured in this run: {', '.join(missing)}. A family without table entries keeps the usual "
               "default (dpmpp_2m on karras, discrete trailing, or time_uniform when sigma_max is infinite); an "
               "unmeasured model of a family with entries gets them, unchecked."]
    body = "## Defaults against the peers' defaults\n" + "\n".join(md)
    print(body)
    if write:
        import importlib.util

        spec = importlib.util.spec_from_file_location("solvers_bench", ROOT / "benchmarks" / "solvers.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.write_section(DOC, "defaults", body)


def _why_not(missed, table, score, chosen_on, miss, best, peer_any) -> list[str]:
    """Per family and NFE with a missed cell: the smallest worst miss any one candidate has over the models it is
    chosen on (so no fixed choice can hold there when it is above 1), and the per-model oracle's ratio to the best
    peer untuned."""
    lines = []
    family_of = {m: fam for fam, ms in chosen_on.items() for m in ms}
    for fam, nfe in sorted({(family_of.get(m), nfe) for m, nfe in missed if m in family_of}):
        pick = chosen_on[fam]
        keys = {k for (m, n, k) in score if n == nfe and m in pick}
        full = [k for k in keys if all((m, nfe, k) in score for m in pick)]
        if not full:
            continue
        worst = {k: max(miss(m, nfe, score[(m, nfe, k)]) for m in pick) for k in full}
        k = min(full, key=worst.get)
        oracle = ", ".join(f"{m} {best['fewstep'][(m, nfe)][0] / peer_any[(m, nfe)][0]:.2f}" for m in pick)
        note = " (the table's choice)" if table.get((fam, nfe)) == k else ""
        lines.append(f"{fam} NFE {nfe}: best single candidate {_label(k)}{note}, worst miss {worst[k]:.2f}x over "
                     f"{', '.join(pick)}; fewstep's best per model against the best peer untuned: {oracle}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["measure", "report"])
    ap.add_argument("models", nargs="*", default=[])
    ap.add_argument("--seeds", type=int, default=64, help="seeds 0..N-1")
    ap.add_argument("--rtol", type=float, default=1e-4, help="tolerance of the reference ODE solutions")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fewstep-defaults"), help="where the rows go")
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    ap.add_argument("--only", action="append", default=None, metavar="SOLVER[:KEY=VALUE,...]",
                    help="measure: only these candidates (repeatable), no peers, into NAME.only.json; for a "
                         "candidate added after a full run")
    args = ap.parse_args()
    if args.what == "measure":
        for name in args.models or MODELS:
            measure(name, list(range(args.seeds)), args.rtol, args.out,
                    [parse_candidate(c) for c in args.only] if args.only else None)
    else:
        report(args.out, args.seeds, args.write)


if __name__ == "__main__":
    main()
