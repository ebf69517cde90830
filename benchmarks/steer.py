"""Steering benchmark (issue 20): reward against model evaluations for every method, and the exact-tilt error.

    .venv/bin/python benchmarks/steer.py            # the numbers in docs/steering.md, "Measured"
    .venv/bin/python benchmarks/steer.py --quick    # a smoke run (8 seeds, smaller sizes, no digits-gmm rows)
    .venv/bin/python benchmarks/steer.py --part minority,compose   # only those parts (seconds)
    .venv/bin/python benchmarks/steer.py --part plots --img docs/img  # docs/img/steer_*.png

Part 1, digits: steer towards digit 3 with the reward log p(3 | x) of the bundled classifier at temperature 1,
whose tilt p(x) p(3 | x) is the class-conditional distribution. Rows: each method at two sizes on digits-edm,
digits-flow and digits-cond (unconditional), and digits-cond with class label 3 and CFG (scale 2; two evaluations
per step) at the same compute. Columns: model evaluations per sample (measured), mean reward, the share the
classifier reads as 3, the Frechet distance (digits features) to the held-out 3s, and wall time.
Part 2, exact: gmm2d steered by r(x) = x_1 (temperature 1): total-variation distance of the component histogram
to the exact tilted mixture, against K; digits-gmm with a linear reward: error of the tilted mean.
Part 3, minority: minority guidance (arXiv 2301.12334) on gmm2d's ring with mode 0 at a quarter of the others' weight:
the share of mode 0 against the guidance strength w (and level 0, the majority); and on digits-edm, the minority
score of guided samples against w.
Part 4, compose: the product of two Gaussians (closed form) sampled by the summed-score reverse process with and
without ULA / MALA / HMC correctors (arXiv 2302.11552): error of the mean and of the per-coordinate variance.
Part 5, plots (with --img FOLDER): steer_reward_vs_compute.png (mean reward against evaluations per sample for every
method on digits-edm, digits-flow and digits-cond, 32 seeds), steer_grid_METHOD.png (16 samples of digits-edm per
method at 8 particles, seeds 0-15) and steer_gmm2d.png (gmm2d steered by r(x) = x_1: exact tilt, FK and best-of-16).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import fewstep
from fewstep.diffusion.guidance import CFG
from fewstep.diffusion.sampling import sample
from fewstep.metrics import digits_predict, fd_digits
from fewstep.models import load_model
from fewstep.models.digits_data import digits_data
from fewstep.models.exact import GMM, Gauss, ring_gmm
from fewstep.steer import (
    MinorityGuidance,
    Product,
    best_of_n,
    compose_sample,
    digit_logprob,
    exact_log_density,
    fit_minority_classifier,
    fk_steer,
    linear,
    minority_score,
    noise_search,
    path_search,
    svdd,
)
from fewstep.steer.exact import tilt_linear

DIGIT = 3
NFE = 20


def histogram(x: torch.Tensor) -> str:
    """How many samples the classifier reads as each digit 0-9, e.g. ``0 1 2 55 0 3 0 1 2 0``."""
    return " ".join(str(int(c)) for c in torch.bincount(digits_predict(x), minlength=10))


def digits_rows(model_name: str, seeds: list[int], sizes: tuple[int, ...], ref: torch.Tensor) -> list[str]:
    model = load_model(model_name)
    cond = {"class_labels": torch.full((len(seeds),), 10)} if model_name == "digits-cond" else None  # null: uncond
    r = digit_logprob(DIGIT)
    runs = [("base (euler_ancestral)", 1, lambda: fk_steer(model, r, particles=1, nfe=NFE, seeds=seeds, cond=cond))]
    for k in sizes:
        runs += [
            ("best_of_n", k, lambda k=k: best_of_n(model, r, n=k, nfe=NFE, seeds=seeds, cond=cond)),
            ("noise_search", k, lambda k=k: noise_search(model, r, candidates=k - 1, iterations=1, nfe=NFE,
                                                         seeds=seeds, cond=cond)),
            ("path_search", k, lambda k=k: path_search(model, r, width=k // 2, branches=2, back=2, forward=4,
                                                       nfe=NFE, solver="euler", seeds=seeds, cond=cond)),
            ("fk", k, lambda k=k: fk_steer(model, r, particles=k, nfe=NFE, seeds=seeds, cond=cond)),
            ("svdd", k, lambda k=k: svdd(model, r, particles=k, temperature=1.0, nfe=NFE, seeds=seeds, cond=cond)),
        ]
    rows = []
    for name, k, run in runs:
        t0 = time.perf_counter()
        res = run()
        wall = time.perf_counter() - t0
        acc = float((digits_predict(res.samples) == DIGIT).float().mean())
        rows.append(f"| {model_name} | {name} | {k} | {res.evaluations:.0f} | {float(res.rewards.mean()):.3f} | "
                    f"{acc:.2f} | {fd_digits(res.samples, ref):.1f} | {histogram(res.samples)} | {wall:.1f} |")
        print(rows[-1], flush=True)
    return rows


def cfg_rows(seeds: list[int], sizes: tuple[int, ...], ref: torch.Tensor) -> list[str]:
    """digits-cond with class label 3 and CFG (one batched call, two evaluations per step) at matched compute."""
    model = load_model("digits-cond")
    r = digit_logprob(DIGIT)
    rows = []
    for k in (1, *sizes):
        t0 = time.perf_counter()
        x = sample(CFG(model, 2.0), nfe=NFE * k // 2, seeds=seeds, cond={"class_labels": torch.full((len(seeds),),
                                                                                                      DIGIT)})
        wall = time.perf_counter() - t0
        acc = float((digits_predict(x) == DIGIT).float().mean())
        rows.append(f"| digits-cond | label 3, CFG 2 | - | {NFE * k} | {float(r(x).mean()):.3f} | {acc:.2f} | "
                    f"{fd_digits(x, ref):.1f} | {histogram(x)} | {wall:.1f} |")
        print(rows[-1], flush=True)
    return rows


def components(g, x):
    return ((x[:, None, :].double() - g.means[None]) ** 2).sum(-1).argmin(1)


def exact_rows(n_seeds: int, Ks: tuple[int, ...], digits_gmm: bool = True) -> list[str]:
    g = load_model("gmm2d", chunk=1 << 16)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w = tilt_linear(g, a, 1.0).log_w.exp()
    seeds = list(range(n_seeds))
    rows = []
    for K in Ks:
        cells = []
        for run in (lambda: fk_steer(g, linear(a), particles=K, nfe=30, seeds=seeds),
                    lambda: svdd(g, linear(a), particles=K, temperature=1.0, nfe=30, seeds=seeds),
                    lambda: best_of_n(g, linear(a), n=K, nfe=30, solver="dpmpp_2m", seeds=seeds)):
            h = torch.bincount(components(g, run().samples), minlength=8).double() / n_seeds
            cells.append(f"{0.5 * float((h - w).abs().sum()):.3f}")
        rows.append(f"| gmm2d | {K} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    if not digits_gmm:
        return rows
    gd = load_model("digits-gmm", chunk=1 << 16)
    b = torch.linspace(-0.2, 0.2, 64, dtype=torch.float64)
    t = tilt_linear(gd, b, 1.0)
    mean = t.log_w.exp() @ t.means
    for K in (k for k in Ks if k <= 16):  # 64-D: K = 64 takes minutes more
        res = fk_steer(gd, linear(b), particles=K, nfe=30, seeds=list(range(n_seeds // 4)))
        err = float((res.samples.flatten(1).double().mean(0) - mean).norm())
        rows.append(f"| digits-gmm (mean error, {n_seeds // 4} seeds) | {K} | {err:.3f} | | |")
        print(rows[-1], flush=True)
    return rows


def minority_rows(n: int) -> list[str]:
    """gmm2d's ring with mode 0 at weight 1/4 of the others' (3.4 %): mode 0's share of ``n`` samples (dpmpp_2m,
    NFE 20) under minority guidance of strength w, towards the top level and (last row) level 0."""
    ring = ring_gmm()
    g = GMM(torch.tensor([0.25, 1, 1, 1, 1, 1, 1, 1]), ring.means, (0.01 * torch.eye(2)).expand(8, 2, 2),
            name="gmm2d-unequal", chunk=1 << 16)
    t0 = time.perf_counter()
    clf = fit_minority_classifier(g, g.sample_data(8000, torch.Generator().manual_seed(0)), levels=10, steps=400,
                                  batch=256, hidden=64)
    fit = time.perf_counter() - t0
    rows = []
    for w, level in ((0.0, None), (0.5, None), (1.0, None), (2.0, None), (4.0, None), (2.0, 0)):
        t0 = time.perf_counter()
        x = sample(MinorityGuidance(g, clf, w, level=level), solver="dpmpp_2m", nfe=20, seeds=range(n))
        share = float((((x[:, None, :].double() - g.means[None]) ** 2).sum(-1).argmin(1) == 0).double().mean())
        rows.append(f"| {w:g} | {'0 (majority)' if level == 0 else '9 (top)'} | {float(g.log_w.exp()[0]):.3f} | "
                    f"{share:.3f} | {time.perf_counter() - t0:.1f} |")
        print(rows[-1], flush=True)
    print(f"(classifier fit: {fit:.1f} s)")
    return rows


def minority_digits_rows(n: int) -> list[str]:
    """digits-edm with a minority classifier fitted on the 1,438 training digits (levels 10): the minority score of
    ``n`` guided samples (dpmpp_2m, NFE 20) at the fit's noise level, the share above the data's top-level cut (10 %
    of the training digits lie above it), and the classifier's class histogram."""
    model = load_model("digits-edm")
    x, _ = digits_data("train")
    t0 = time.perf_counter()
    clf = fit_minority_classifier(model, x.reshape(-1, 1, 8, 8), levels=10, steps=600, batch=256, hidden=128)
    print(f"(digits-edm classifier fit: {time.perf_counter() - t0:.1f} s, scores at sigma {clf.score_sigma:.3f})")
    rows = []
    for w in (0.0, 1.0, 2.0, 4.0):
        s = sample(MinorityGuidance(model, clf, w), solver="dpmpp_2m", nfe=20, seeds=range(n))
        score = minority_score(model, s, sigma=clf.score_sigma)
        top = float((score > clf.thresholds[-1]).double().mean())
        rows.append(f"| {w:g} | {float(score.mean()):.3f} | {top:.3f} | {histogram(s)} |")
        print(rows[-1], flush=True)
    return rows


def compose_rows(n: int) -> list[str]:
    """N([1, 0], I) x N([-1, 1], diag(1, 0.25)) = N([0, 0.8], diag(0.5, 0.2)), from n samples: the summed-score
    reverse process (euler_ancestral, NFE 20 and compute-matched) against 4 corrector steps per grid point."""
    g1 = Gauss(2, mean=torch.tensor([1.0, 0.0]), std=1.0, chunk=1 << 16)
    g2 = Gauss(2, mean=torch.tensor([-1.0, 1.0]), std=torch.tensor([1.0, 0.5]), chunk=1 << 16)
    var = 1 / (1 / g1.std**2 + 1 / g2.std**2)
    mean = var * (g1.mean / g1.std**2 + g2.mean / g2.std**2)
    model = Product([g1, g2])
    runs = [("none", 20, {}), ("none", 100, {}), ("none", 250, {}),
            ("ula", 20, dict(corrector="ula", step_size=1.0)), ("mala", 20, dict(corrector="mala", step_size=1.0)),
            ("hmc", 20, dict(corrector="hmc", step_size=0.5, leapfrog=2)),
            ("mala, energy of factor 1 only (negative control)", 20,
             dict(corrector="mala", step_size=1.0, log_density=exact_log_density(g1)))]
    rows = []
    for name, nfe, kw in runs:
        t0 = time.perf_counter()
        res = compose_sample(model, corrector_steps=4, nfe=nfe, seeds=range(n), **({"corrector": None} | kw))
        x = res.samples
        acc = "" if res.info["accept"] is None else f"{res.info['accept']:.2f}"
        rows.append(f"| {name} | {nfe} | {res.evaluations:.0f} | {float((x.mean(0) - mean).norm()):.3f} | "
                    f"{', '.join(f'{v:.3f}' for v in x.var(0).tolist())} | "
                    f"{float((x.mean(0) - mean).norm() + (x.var(0) - var).norm()):.3f} | {acc} | "
                    f"{time.perf_counter() - t0:.1f} |")
        print(rows[-1], flush=True)
    return rows


def methods_at(model, r, k: int, seeds: list[int], cond) -> dict:
    """Every method at size ``k`` (as in the digits table; k = 1: the base sampler for each)."""
    return {
        "best_of_n": lambda: best_of_n(model, r, n=k, nfe=NFE, seeds=seeds, cond=cond),
        "noise_search": lambda: noise_search(model, r, candidates=max(k - 1, 1), iterations=1 if k > 1 else 0,
                                             nfe=NFE, seeds=seeds, cond=cond),
        "path_search": lambda: path_search(model, r, width=max(k // 2, 1), branches=2 if k > 1 else 1, back=2,
                                           forward=4, nfe=NFE, solver="euler", seeds=seeds, cond=cond),
        "fk": lambda: fk_steer(model, r, particles=k, nfe=NFE, seeds=seeds, cond=cond),
        "svdd": lambda: svdd(model, r, particles=k, temperature=1.0, nfe=NFE, seeds=seeds, cond=cond),
    }


def plots(folder: Path) -> None:
    """The pictures of docs/steering.md (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewstep.bench.image import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    r = digit_logprob(DIGIT)
    seeds = list(range(32))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, name in zip(axes, ("digits-edm", "digits-flow", "digits-cond"), strict=True):
        model = load_model(name)
        cond = {"class_labels": torch.full((len(seeds),), 10)} if name == "digits-cond" else None
        curves: dict[str, list[tuple[float, float]]] = {}
        for k in (1, 2, 4, 8):
            for method, run in methods_at(model, r, k, seeds, cond).items():
                res = run()
                curves.setdefault(method, []).append((res.evaluations, float(res.rewards.mean())))
                if name == "digits-edm" and k == 8:
                    save_grid(res.samples[:16], folder / f"steer_grid_{method}.png", nrow=8)
        for method, pts in curves.items():
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{name} (unconditional), towards 3")
        ax.set_xlabel("model evaluations per sample")
    axes[0].set_ylabel("mean log p(3 | x)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(folder / "steer_reward_vs_compute.png", dpi=100)
    plt.close(fig)
    save_grid(fk_steer(load_model("digits-edm"), r, particles=1, nfe=NFE, seeds=list(range(16))).samples,
              folder / "steer_grid_base.png", nrow=8)
    g = load_model("gmm2d", chunk=1 << 16)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    seeds = list(range(1000))
    panels = [("exact tilt p(x) exp(x_1)", tilt_linear(g, a, 1.0).sample_data(1000, torch.Generator().manual_seed(0))),
              ("FK steering, 16 particles", fk_steer(g, linear(a), particles=16, nfe=30, seeds=seeds).samples),
              ("best-of-16", best_of_n(g, linear(a), n=16, nfe=30, solver="dpmpp_2m", seeds=seeds).samples)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels, strict=True):
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.4)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(folder / "steer_gmm2d.png", dpi=100)
    plt.close(fig)
    for p in sorted(folder.glob("steer_*.png")):
        print(f"wrote {p}")


PARTS = ("digits", "exact", "minority", "compose", "plots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="8 seeds, smaller sizes and no digits-gmm rows (a smoke run)")
    parser.add_argument("--part", default=",".join(PARTS[:4]),
                        help=f"comma-separated parts: {', '.join(PARTS)} (default: all but plots)")
    parser.add_argument("--img", default=None, metavar="FOLDER", help="where part plots writes steer_*.png")
    args = parser.parse_args()
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    if "plots" in parts and args.img is None:
        parser.error("--part plots needs --img FOLDER (docs/img for the documentation's pictures)")
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--part takes parts from {', '.join(PARTS)}; got {args.part!r}")
    torch.set_num_threads(1)
    seeds = list(range(8 if args.quick else 64))
    sizes = (4,) if args.quick else (4, 8)
    print(f"fewstep {fewstep.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"1 thread; NFE {NFE} per particle; target digit {DIGIT}")
    if "digits" in parts:
        x_ref, y_ref = digits_data("heldout")
        ref = x_ref[y_ref == DIGIT]
        print("| model | method | size | evaluations / sample | mean log p(3 given x) | share read as 3 "
              "| fd to held-out 3s | classes read (0-9) "
              "| wall s |\n|---|---|---|---|---|---|---|---|---|")
        for name in ("digits-edm", "digits-flow", "digits-cond"):
            digits_rows(name, seeds, sizes, ref)
        cfg_rows(seeds, sizes, ref)
    if "exact" in parts:
        print("\n| exact model | K | FK | SVDD | best-of-K |\n|---|---|---|---|---|")
        exact_rows(250 if args.quick else 1000, (1, 4) if args.quick else (1, 4, 16, 64), digits_gmm=not args.quick)
    if "minority" in parts:
        print("\n| w | level | weight of mode 0 | share of mode 0 | wall s |\n|---|---|---|---|---|")
        minority_rows(500 if args.quick else 2000)
        print("\n| w | mean minority score | share above the data's top 10 % cut | classes read (0-9) |\n"
              "|---|---|---|---|")
        minority_digits_rows(64 if args.quick else 256)
    if "compose" in parts:
        print("\n| corrector | NFE | evaluations / sample | mean error | variance (exact 0.5, 0.2) | mean + variance "
              "error | acceptance | wall s |\n|---|---|---|---|---|---|---|---|")
        compose_rows(500 if args.quick else 2000)
    if "plots" in parts:
        plots(Path(args.img))


if __name__ == "__main__":
    main()
