"""Pictures and markdown tables of benchmark rows."""

from __future__ import annotations

import importlib.util
import io
import math
from collections import defaultdict
from pathlib import Path

from fewstep.cache import atomic_write_bytes

PLOT_FORMATS = (".png", ".pdf", ".svg")  # file suffixes plot_quality writes


def markers(name: str) -> tuple[str, str]:
    """The comment lines that enclose a generated section of a markdown page."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str | None, begin: str, end: str, block: str, *, append: bool = True) -> str:
    """``text`` (a markdown page; ``None`` for a new one) with the part from ``begin`` through the next ``end``
    replaced by ``block`` (which holds both markers). Without that part, ``block`` is appended, or, with
    ``append=False``, ``ValueError`` says which markers are missing."""
    text = "# Benchmarks\n" if text is None else text
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    if not append:
        raise ValueError(f"the page has no {begin} ... {end} section to replace")
    return text.rstrip("\n") + "\n\n" + block + "\n"


def check_plot_path(path: str | Path) -> None:
    """Refuse, before any work, a plot that ``plot_quality`` could not write: another suffix, or no matplotlib."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ValueError(f"cannot plot to {str(path)!r}: the file name must end in {', '.join(PLOT_FORMATS)}")
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'fewstep[plot]'")


def plot_quality(rows, metric: str, path: str | Path) -> None:
    """Quality against NFE, one line per (model, solver, schedule) with a log y axis; one panel per model;
    written to ``path`` (a suffix of ``PLOT_FORMATS``) through a temporary file and a rename."""
    atomic_write_bytes(Path(path), quality_plot(rows, metric, Path(path).suffix))


def quality_plot(rows, metric: str, suffix: str = ".png") -> bytes:
    """``plot_quality``'s picture as the bytes of a file with ``suffix`` (one of ``PLOT_FORMATS``)."""
    check_plot_path(f"plot{suffix}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix.lower().lstrip("."), dpi=110)
    plt.close(fig)
    return buffer.getvalue()


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
