"""``fewstep list solvers|schedules|models``: what the registries hold."""

from __future__ import annotations

from fewstep.commands.args import subcommand

WHAT = ("solvers", "schedules", "models")


def add_parser(sub) -> None:
    p = subcommand(sub, "list", "list the registered solvers, schedules or models")
    p.add_argument("what", choices=WHAT, help="which registry to list")


def run(args) -> int:
    if args.what == "solvers":
        from fewstep.diffusion.solvers import list_solvers

        rows = [(n, "-" if i["order"] is None else str(i["order"]), f'{i["evals_per_step"]}/{i["final_evals"]}',
                 "stochastic" if i["stochastic"] else i["kind"], i["paper"]) for n, i in list_solvers().items()]
        _table(("solver", "order", "evals/step (final)", "kind", "paper"), rows)
    elif args.what == "schedules":
        from fewstep.diffusion.schedules import list_schedules

        _table(("schedule", "description"), list(list_schedules().items()))
    else:
        from fewstep.models import list_models

        _table(("model", "kind", "description"), [(m.name, m.kind, m.description) for m in list_models().values()])
    return 0


def _table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]))
