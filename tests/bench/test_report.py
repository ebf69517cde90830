"""fewstep.bench.report: the markdown table and the quality-against-NFE plot of benchmark rows."""

from __future__ import annotations

import math

import pytest

from fewstep.bench.report import markdown_table, plot_quality, style_axis

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _row(model, solver, nfe, rmse, fd=1.0, schedule="karras", **kw):
    return {"model": model, "solver": solver, "schedule": schedule, "nfe_budget": nfe, "nfe": nfe,
            "rmse_ref": rmse, "fd": fd, **kw}


ROWS = [
    _row("gmm2d", "ddim", 4, 0.5), _row("gmm2d", "ddim", 8, 0.25, fd=math.nan),
    _row("gmm2d", "unipc", 4, 0.125),
    {"model": "gmm2d", "solver": "restart", "schedule": "karras", "nfe_budget": 4, "error": "nfe=4 is too small"},
    _row("gmm2d", "usf", 4, 0.0625, label="s3", schedule="tuned"),
    _row("gauss", "ddim", 8, 0.03125),
]


def test_markdown_table_layout():
    lines = markdown_table(ROWS, ["rmse_ref", "fd"], [4, 8]).splitlines()
    assert lines[0] == "| model | solver | schedule | NFE 4 | NFE 8 |"
    assert lines[1] == "|---|---|---|---|---|"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    # one line per (model, solver or label, schedule), in order of first appearance; error rows are left out
    assert [b[:3] for b in body] == [["gmm2d", "ddim", "karras"], ["gmm2d", "unipc", "karras"],
                                     ["gmm2d", "s3", "tuned"], ["gauss", "ddim", "karras"]]
    assert all(len(b) == 5 for b in body)
    assert body[0][3:] == ["0.5 / 1", "0.25 / n/a"]  # both metrics; NaN shows as n/a
    assert body[1][3:] == ["0.125 / 1", "-"] and body[3][3:] == ["-", "0.0312 / 1"]  # missing NFE: "-"


def test_markdown_table_keys_cells_by_the_budget_and_shows_three_digits():
    rows = [{**_row("m", "dpmpp_2m", 5, 1 / 3), "nfe": 4}]  # the solver used 4 of its 5 evaluations
    assert markdown_table(rows, ["rmse_ref"], [4, 5]).splitlines()[2] == "| m | dpmpp_2m | karras | - | 0.333 |"


def test_plot_quality_draws_each_configuration_against_its_counted_nfe(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn, panels = [], []
    plot, style = Axes.plot, style_axis

    def record(ax, xs, ys, *args, **kw):
        drawn.append((kw.get("label"), list(xs), list(ys)))
        return plot(ax, xs, ys, *args, **kw)

    monkeypatch.setattr(Axes, "plot", record)
    monkeypatch.setattr("fewstep.bench.report.style_axis", lambda ax, m, t: (panels.append(t), style(ax, m, t)))
    rows = [*ROWS, _row("gmm2d", "ddim", 6, 0.0), _row("gmm2d", "ddim", 5, None),  # not drawn on a log axis
            {**_row("gauss", "unipc", 5, 0.1), "nfe": 4}]  # drawn at the 4 evaluations it used
    path = tmp_path / "q.png"
    plot_quality(rows, "rmse_ref", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert panels == ["gauss", "gmm2d"]  # one panel per model, sorted
    assert sorted(drawn) == sorted([
        ("ddim (karras)", [8], [0.03125]),
        ("unipc (karras)", [4], [0.1]),
        ("ddim (karras)", [4, 8], [0.5, 0.25]),  # sorted by NFE; the 0 and None values are left out
        ("s3 (tuned)", [4], [0.0625]),
        ("unipc (karras)", [4], [0.125]),
    ])


def test_style_axis():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 10], label="x")
    style_axis(ax, "rmse_ref", "gmm2d")
    assert (ax.get_yscale(), ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("log", "NFE", "rmse_ref", "gmm2d")
    assert ax.get_legend() is not None
    plt.close(fig)
