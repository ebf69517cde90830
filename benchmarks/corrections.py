"""Measure the training-free corrections and classifier-free guidance on the bundled digits models.

Corrections (``fewstep.diffusion.corrections``) on digits-edm, digits-flow and digits-vp-eps, each
against the uncorrected DDIM sampler on the same seeds and grid, at NFE 5, 10 and 20:

- ``fd``: Fréchet distance in the bundled classifier's feature space (``fd_digits``) to the held-out digits;
- ``rmse_ref``: RMSE to the float64 reference solution of the *uncorrected* model's ODE from the same noise
  (a correction changes the ODE, so this column shows how far it moves the sample, not its quality).

Guidance (``fewstep.diffusion.guidance``) on digits-cond: classifier agreement with the requested class,
within-class diversity (mean pairwise distance of classifier features between samples of the same class),
precision and recall (k = 3, features) and ``fd`` against the held-out digits, for several scales with
and without CADS, with CFG rescale and with a guidance interval.

Every number in docs/benchmarks.md between the ``corrections`` and ``guidance`` markers comes from::

    .venv/bin/python benchmarks/corrections.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import fewstep
from fewstep.bench.report import markers, replace_section
from fewstep.diffusion import corrections as C
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.guidance import CADS, CFG
from fewstep.diffusion.processes import VPDiscrete
from fewstep.diffusion.sampling import sample
from fewstep.diffusion.schedules import discrete_timesteps
from fewstep.evaluation.references import reference_samples
from fewstep.metrics import digits_features, digits_predict, fd, precision_recall, rmse
from fewstep.models.digits_data import digits_data

MODELS = ("digits-edm", "digits-flow", "digits-vp-eps")
EPS_LAMBDA = 1.005  # EDM-ES's value for Euler at 13 steps (README of arXiv 2308.15321); not tuned here
TS = {"window": 30, "cutoff": 300}  # one of the TS-DPM README's (window, cutoff) pairs; not tuned here
CAL_SIGMAS = torch.logspace(-2.7, 2.2, 25, dtype=torch.float64)  # 0.002 .. 160, log-spaced
INTERVAL = (0.28, 1.61)  # arXiv 2404.07724's EDM2 interval, taken as is
GUIDE_SCALES = (1.0, 2.0, 3.0, 5.0, 8.0)
# digits-cond settles the class at lower noise than ImageNet models: the annealing window moved down
# (t = log-sigma fraction) and s raised; chosen on 200 samples at w = 4 (see docs/guidance.md)
CADS_DIGITS = CADS(tau1=0.35, tau2=0.75, noise_scale=1.0)


def _discrete_grid(process, nfe: int) -> dict:
    """``sample`` options for DDIM on the trailing timesteps of a discrete ``process`` (then sigma = 0)."""
    t = torch.from_numpy(discrete_timesteps(nfe, process.num_train_timesteps, "trailing"))
    sigmas = torch.cat([process.t_to_sigma(t).double(), torch.zeros(1, dtype=torch.float64)])
    return {"schedule": "explicit", "schedule_options": {"sigmas": sigmas}}


def corrections_for(name: str, model, train: torch.Tensor):
    """(label, denoiser, solver, nfe -> extra ``sample`` options) for each correction of ``model``."""
    table = C.calibrate(model, train, CAL_SIGMAS, seed=0)
    none = lambda nfe: {}  # noqa: E731
    rows = [("none (DDIM)", model, "ddim", none),
            (f"eps scaling, lambda = {EPS_LAMBDA}", C.EpsScaling(model, EPS_LAMBDA), "ddim", none),
            (f"time shift (ddim_ts, w = {TS['window']}, cutoff = {TS['cutoff']})", model, "ddim_ts", none),
            (f"calibrated (train split, {len(CAL_SIGMAS)} sigmas)", C.Calibrated(model, table), "ddim", none),
            ("dynamic threshold (p = 0.995, max 1)", C.DynamicThreshold(model), "ddim", none)]
    if name == "digits-vp-eps":  # Lin et al.'s sample-step flaw: leading spacing never starts at T - 1
        rows.append(("leading spacing (default is trailing)", model, "ddim",
                     lambda nfe: {"schedule_options": {"spacing": "leading"}}))
    if name == "digits-flow":
        # Lin et al.'s schedule flaw on the one bundled model that can be evaluated at zero SNR (it predicts
        # velocity; in sigma space any discrete VP schedule is only a grid): DDPM's linear betas end at
        # sigma = 157, their zero-terminal-SNR rescaling at sigma = inf, where sampling starts from pure noise
        linear = VPDiscrete.from_betas("linear")
        rows += [(f"discrete linear betas, trailing (from sigma = {float(linear.sigma_max):.0f})", model, "ddim",
                  lambda nfe: _discrete_grid(linear, nfe)),
                 ("zero terminal SNR: rescaled linear betas, trailing (from sigma = inf)", model, "ddim",
                  lambda nfe: _discrete_grid(C.zero_terminal_snr(linear), nfe))]
    return rows


def run_corrections(seeds: list[int], ref_seeds: int, nfes: list[int], log) -> str:
    train = digits_data("train")[0].reshape(-1, 1, 8, 8)
    held_feats = digits_features(digits_data("heldout")[0])
    floor = fd(digits_features(train[:len(seeds)]).double(), held_feats.double())
    lines = [f"fd of {min(len(seeds), len(train))} real train digits against the held-out ones (the floor at this "
             f"sample size): {floor:.2f}. In brackets: the change of fd against the uncorrected row.\n",
             "| model | correction | " + " | ".join(f"fd @{n}" for n in nfes) + " | "
             + " | ".join(f"rmse_ref @{n}" for n in nfes) + " |",
             "|---|---|" + "---:|" * (2 * len(nfes))]
    models = {name: fewstep.load_model(name) for name in MODELS}  # all weights read (and verified) up front
    for name, base in models.items():
        t0 = time.perf_counter()
        ref, tol = reference_samples(base, seeds[:ref_seeds])
        log(f"{name}: reference for {ref_seeds} seeds (tolerance check {tol:.1e}), {time.perf_counter() - t0:.0f} s")
        base_fds = None
        for label, den, solver, options in corrections_for(name, base, train):
            fds, errs = [], []
            for nfe in nfes:
                counter = CountingDenoiser(den)
                x = sample(counter, solver=solver, nfe=nfe, seeds=seeds, **options(nfe))
                if counter.calls > nfe:
                    raise RuntimeError(f"{label} used {counter.calls} evaluations for a budget of {nfe}")
                fds.append(fd(digits_features(x.float()).double(), held_feats.double()))
                errs.append(rmse(x[:ref_seeds].double(), ref))
            if base_fds is None:  # the uncorrected row; the others show their change relative to it
                base_fds, cells = fds, [f"{v:.2f}" for v in fds]
            else:
                cells = [f"{v:.2f} ({100 * (v / b - 1):+.0f}%)" for v, b in zip(fds, base_fds)]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " | "
                         + " | ".join(f"{v:.4f}" for v in errs) + " |")
            log(lines[-1])
    return "\n".join(lines)


def _diversity(feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between features of samples that asked for the same class."""
    per_class = []
    for c in labels.unique():
        f = feats[labels == c].double()
        if len(f) > 1:
            d = torch.cdist(f, f)
            per_class.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(per_class).mean())


def _cads_label(c: CADS) -> str:
    return f"({c.tau1:g}, {c.tau2:g}, s = {c.noise_scale:g})"


def run_guidance(seeds: list[int], nfe: int, log) -> str:
    model = fewstep.load_model("digits-cond")
    held_feats = digits_features(digits_data("heldout")[0]).double()
    labels = torch.tensor([i % 10 for i in range(len(seeds))])
    configs = [("unconditional (null class)", None, {})]
    for w in GUIDE_SCALES:
        configs.append((f"CFG w = {w:g}", w, {}))
        configs.append((f"CFG w = {w:g} + CADS {_cads_label(CADS_DIGITS)}", w, {"cads": CADS_DIGITS}))
    configs += [(f"CFG w = 5 + CADS {_cads_label(CADS())} (defaults)", 5.0, {"cads": CADS()}),
                ("CFG w = 5 + rescale 0.7 (eps)", 5.0, {"rescale": 0.7}),
                ("CFG w = 5 + rescale 0.7 (x0)", 5.0, {"rescale": 0.7, "rescale_space": "x0"}),
                (f"CFG w = 5, interval sigma in ({INTERVAL[0]}, {INTERVAL[1]}]", 5.0, {"interval": INTERVAL})]
    lines = ["| guidance | NFE (calls) | batch per call | class agreement | diversity | precision | recall | fd |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, w, opts in configs:
        counter = CountingDenoiser(model)
        if w is None:
            den, cond = counter, {"class_labels": torch.full_like(labels, model.null_class)}
        else:
            den, cond = CFG(counter, w, **opts), {"class_labels": labels, "cads_seeds": seeds}
        x = sample(den, solver="dpmpp_2m", nfe=nfe, seeds=seeds, cond=cond)
        feats = digits_features(x.float()).double()
        agree = float((digits_predict(x.float()) == labels).double().mean())
        pr = precision_recall(held_feats, feats, k=3)
        lines.append(f"| {label} | {counter.calls} | {counter.samples / counter.calls / len(seeds):.2f} B | "
                     f"{agree:.3f} | {_diversity(feats, labels):.2f} | {pr.precision:.3f} | {pr.recall:.3f} | "
                     f"{fd(feats, held_feats):.2f} |")
        log(lines[-1])
    return "\n".join(lines)


def _weights(names) -> str:
    from fewstep.models import cond, trained

    digests = {name: trained.SHA256[trained.SPECS[name].file] for name in names if name in trained.SPECS}
    digests.update({"digits-cond": cond.SHA256} if "digits-cond" in names else {})
    return ", ".join(f"{k} {v[:12]}" for k, v in digests.items())


def write_between(path: Path, tag: str, body: str) -> None:
    """Replace the text between ``<!-- tag:begin -->`` and ``<!-- tag:end -->`` (appending them if missing)."""
    begin, end = markers(tag)
    text = path.read_text() if path.exists() else None
    path.write_text(replace_section(text, begin, end, f"{begin}\n{body}\n{end}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "corrections", "guidance"), default="all")
    p.add_argument("--seeds", type=int, default=500, help="samples per configuration (seeds 0..N-1)")
    p.add_argument("--ref-seeds", type=int, default=64, help="seeds with a reference solution, for rmse_ref")
    p.add_argument("--nfe", default="5,10,20", help="NFE budgets of the corrections table")
    p.add_argument("--guidance-nfe", type=int, default=10, help="NFE of the guidance table (dpmpp_2m)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see scripts/train_digits.py)")
    p.add_argument("--write", type=Path, default=None, help="markdown file to update between the markers")
    args = p.parse_args(argv)
    if args.seeds < 20 or not 1 <= args.ref_seeds <= args.seeds:
        p.error(f"need --seeds >= 20 and 1 <= --ref-seeds <= --seeds; got {args.seeds}, {args.ref_seeds}")
    torch.set_num_threads(args.threads)
    seeds, nfes = list(range(args.seeds)), [int(v) for v in args.nfe.split(",")]
    command = " ".join(["benchmarks/corrections.py", *(sys.argv[1:] if argv is None else argv)])

    def header(names) -> str:
        return (f"Command: `.venv/bin/python {command}` ({args.seeds} seeds; rmse_ref on the first "
                f"{args.ref_seeds}); device: cpu ({platform.processor() or platform.machine()}, {args.threads} "
                f"thread(s)); fewstep {fewstep.__version__}, torch {torch.__version__}; weights SHA-256 "
                f"{_weights(names)}.\n\n")

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with torch.no_grad():
        for part, names, fn in (("corrections", MODELS, lambda: run_corrections(seeds, args.ref_seeds, nfes, log)),
                                ("guidance", ("digits-cond",), lambda: run_guidance(seeds, args.guidance_nfe, log))):
            if args.part in ("all", part):
                t0 = time.perf_counter()
                body = header(names) + fn() + f"\n\n({time.perf_counter() - t0:.0f} s)"
                print(body)
                if args.write is not None:
                    write_between(args.write, part, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
