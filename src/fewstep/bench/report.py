"""Pictures and markdown tables of benchmark rows."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path


def plot_quality(rows, metric: str, path: str | Path) -> None:
    """Quality against NFE, one line per (model, solver, schedule) with a log y axis; one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'fewstep[plot]'") from exc
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        lines = defaultdict(list)
        for r in rows:
            v = r.get(metric)
            if r["model"] == model and "error" not in r and v is not None and not math.isnan(v) and v > 0:
                lines[(r.get("label", r["solver"]), r["schedule"])].append((r["nfe"], v))
        for (label, schedule), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label} ({schedule})")
        style_axis(ax, metric, model)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def style_axis(ax, metric: str, title: str) -> None:
    """The look every quality-against-NFE panel shares: log y axis, labels, grid, small legend."""
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def markdown_table(rows, metrics, nfes) -> str:
    """Rows: (model, solver, schedule); columns: each NFE, showing the first metric (and the second)."""
    cells = defaultdict(dict)
    for r in rows:
        if "error" in r:
            continue
        key = (r["model"], r.get("label", r["solver"]), r["schedule"])
        cells[key][r["nfe_budget"]] = " / ".join(_fmt(r.get(m)) for m in metrics)
    head = "| model | solver | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    sep = "|" + "---|" * (3 + len(nfes))
    body = [f"| {m} | {s} | {sc} | " + " | ".join(cells[(m, s, sc)].get(n, "-") for n in nfes) + " |"
            for (m, s, sc) in cells]
    return "\n".join([head, sep, *body])


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}"
