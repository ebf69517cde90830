"""The distilled students against the training-free samplers at the same NFE (issue 19).

    .venv/bin/python benchmarks/distill.py --models digits-edm --json fewstep-out/distill-digits-edm.json
    .venv/bin/python benchmarks/distill.py --models digits-flow --json fewstep-out/distill-digits-flow.json
    .venv/bin/python benchmarks/distill.py --from-json fewstep-out/distill-digits-edm.json,\
fewstep-out/distill-digits-flow.json --update-docs docs/benchmarks.md
    .venv/bin/python benchmarks/distill.py --grids docs/img                           # the PNG grids

For each model (``--models``) and NFE (``--nfes``), on the same seeds and from the same start sigma (80):

- the students under ``--students`` of that teacher that sample at that NFE (``fewstep.load_model(PATH, nfe=N)``);
- tuned recipes (``--tuned``: ld3, GITS, S3), fitted here on the tuning seeds ``--tune-seeds`` (disjoint from the
  measured ones) with the reduced settings of ``TUNE_OPTIONS`` (this machine's time; ``benchmarks/tuned.py``
  uses larger ones at NFE 4-8); a tuner that cannot run at an NFE is listed with its reason;
- the best untuned solver: every (solver, schedule, AFS) of ``CANDIDATES``, chosen by rmse_ref;
- ``rmse_ref``: RMSE to the teacher's reference ODE solution (``fewstep.evaluation.reference_samples``, adaptive
  float64 at rtol ``--rtol``) on ``--ref-seeds``;
- ``fd``: Frechet distance in the digits classifier's features (``fewstep.metrics.frechet.fd_digits``) to the 359
  held-out digits on ``--fd-seeds``, with its noise: how much the fd of the two halves of the seeds differ. The
  floor is the teacher's own fd with 32 evaluations of DPM-Solver++(3M), whose rmse_ref is given too (its exact
  solutions for 512 seeds would take an hour here; at that rmse_ref the two are the same samples for fd);
- the fine-tuning cost: a student's CPU-minutes from its record (``time.process_time`` of its training), a
  recipe's tuning seconds as measured here (wall time, one thread).

``--json`` stores every row (``--resume`` keeps the (model, NFE) cells already there, but those of the NFEs in
``--redo``, e.g. after a student was retrained); ``--from-docs docs/benchmarks.md --json FILE`` reads the rows of
``--models`` back from the section (on a machine without the earlier JSON), to resume from; ``--from-json`` prints the
table, and with ``--update-docs`` writes it into its section of the file. ``--grids DIR`` writes one PNG per
method and NFE: for each model, a row of the teacher's 32-evaluation samples over a row of the student's, on the
same 16 seeds (``distill_<method>_nfe<N>.png``).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import time
from pathlib import Path

import torch

import fewstep
from fewstep.bench.image import save_grid
from fewstep.bench.report import replace_section
from fewstep.evaluation import reference_samples
from fewstep.metrics.frechet import fd_digits
from fewstep.metrics.paired import rmse
from fewstep.models.digits_data import digits_data
from fewstep.models.student import BUNDLED
from fewstep.seeds import parse_seeds

STUDENTS = BUNDLED
TOP = 80.0
CANDIDATES = list(itertools.product(("euler", "dpmpp_2m", "unipc", "deis", "ipndm"), ("karras", "logsnr"),
                                    (False, True)))
TUNERS = {"ld3": "best", "gits": "ipndm", "s3": "unipc"}  # method -> solver, as benchmarks/tuned.py
TUNE_OPTIONS = {"ld3": {"steps": 20, "patience": 3, "precondition": 8},
                "gits": {},
                "s3": {"batch": 32, "population": 6, "generations": 3, "children": 4}}
START, END = "<!-- distill:start -->", "<!-- distill:end -->"
KIND_ORDER = {"teacher": 0, "untuned": 1, "tuned": 2, "student": 3}  # the rows of one NFE, in this order


def _sample(model, seeds, **kw):
    return fewstep.sample(model, seeds=list(seeds), **kw).double()


def _students(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def fit(teacher, method: str, nfe: int, tune_seeds):
    """A recipe of ``method`` at ``nfe`` with this benchmark's reduced settings (``TUNERS``, ``TUNE_OPTIONS``)."""
    tuner = importlib.import_module(f"fewstep.diffusion.tune.{method}")
    return tuner.tune(teacher, solver=TUNERS[method], nfe=nfe, seeds=tune_seeds, eval_seeds=None, progress=False,
                      **TUNE_OPTIONS[method])


def tune_rows(teacher, name, n, methods, ref, fd_pair, add, tune_seeds, ref_seeds, fd_seeds) -> None:
    """Fit each tuning method at NFE ``n`` and add its row (or the error it gave)."""
    for method in methods:
        t0 = time.perf_counter()
        try:
            recipe = fit(teacher, method, n, tune_seeds)
        except ValueError as exc:
            add(model=name, nfe=n, kind="tuned", label=method, error=str(exc).splitlines()[0][:160])
            continue
        seconds = time.perf_counter() - t0
        add(model=name, nfe=n, kind="tuned", label=f"{method} ({recipe.solver})",
            rmse_ref=rmse(_sample(teacher, ref_seeds, recipe=recipe), ref),
            fd=fd_pair(_sample(teacher, fd_seeds, recipe=recipe)), tune_seconds=round(seconds, 1))


def measure(args) -> list[dict]:
    ref_seeds, fd_seeds, tune_seeds = (parse_seeds(s) for s in (args.ref_seeds, args.fd_seeds, args.tune_seeds))
    held = digits_data("heldout")[0].reshape(-1, 1, 8, 8).double()
    half = len(fd_seeds) // 2
    rows = json.loads(args.json.read_text()) if args.resume and args.json.is_file() else []
    redo, redo_tuned = set(), set()  # NFEs measured again whole; (NFE, method) of one tuned recipe measured again
    redo_students = set()  # NFEs whose student rows are measured again (students added or retrained)
    for item in filter(None, args.redo.split(",")):
        nfe, _, method = item.partition("/")
        if method and method not in (*TUNERS, "students"):
            raise SystemExit(f"distill.py: --redo {item!r}: the method must be one of {', '.join(TUNERS)} or "
                             "students")
        if method == "students":
            redo_students.add(int(nfe))
        else:
            (redo_tuned.add((int(nfe), method)) if method else redo.add(int(nfe)))
    rows = [r for r in rows if r["nfe"] not in redo and not (r["kind"] == "tuned" and any(
        r["nfe"] == n and r["label"].split(" ")[0] == m for n, m in redo_tuned))
        and not (r["kind"] == "student" and r["nfe"] in redo_students)]  # the teacher row (NFE 32) stays
    done = {(r["model"], r["nfe"]) for r in rows}

    def fd_pair(x):
        return round(fd_digits(x, held), 3), round(abs(fd_digits(x[:half], held) - fd_digits(x[half:], held)), 3)

    def add(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1))

    for name in args.models.split(","):
        teacher = fewstep.load_model(name)
        ref, tol = None, None
        for n in (int(v) for v in args.nfes.split(",")):
            methods = args.tuned.split(",") if args.tuned else []
            if (name, n) in done:
                methods = [m for m in methods if (n, m) in redo_tuned]
                if not methods and n not in redo_students:
                    continue
            if ref is None and any(r["model"] == name and r["kind"] == "teacher" for r in rows):
                ref, tol = reference_samples(teacher, ref_seeds, sigma_max=TOP, rtol=args.rtol)
                ref = ref.double()
            if (name, n) in done:
                tune_rows(teacher, name, n, methods, ref, fd_pair, add, tune_seeds, ref_seeds, fd_seeds)
                if n in redo_students:
                    student_rows(args.students, name, n, ref, fd_pair, add, ref_seeds, fd_seeds)
                continue
            if ref is None:
                ref, tol = reference_samples(teacher, ref_seeds, sigma_max=TOP, rtol=args.rtol)
                ref = ref.double()
                floor = dict(solver="dpmpp_3m", nfe=32, schedule="karras", schedule_options={"sigma_max": TOP})
                add(model=name, nfe=32, kind="teacher", label="teacher: dpmpp_3m, karras, NFE 32",
                    rmse_ref=rmse(_sample(teacher, ref_seeds, **floor), ref), fd=fd_pair(_sample(teacher, fd_seeds,
                                                                                                **floor)),
                    ref_tolerance=tol)
            best = None
            for solver, schedule, afs in CANDIDATES:
                kw = dict(solver=solver, nfe=n, schedule=schedule, schedule_options={"sigma_max": TOP}, afs=afs)
                try:
                    err = rmse(_sample(teacher, ref_seeds, **kw), ref)
                except ValueError:  # the solver cannot run at this NFE (with AFS)
                    continue
                if best is None or err < best[0]:
                    best = (err, kw)
            kw = best[1]
            label = f"{kw['solver']}, {kw['schedule']}{', AFS' if kw['afs'] else ''}"
            add(model=name, nfe=n, kind="untuned", label=label, rmse_ref=best[0],
                fd=fd_pair(_sample(teacher, fd_seeds, **kw)))
            tune_rows(teacher, name, n, methods, ref, fd_pair, add, tune_seeds, ref_seeds, fd_seeds)
            student_rows(args.students, name, n, ref, fd_pair, add, ref_seeds, fd_seeds)
    return rows


def student_rows(folder, name, n, ref, fd_pair, add, ref_seeds, fd_seeds) -> None:
    """Add a row for each student of teacher ``name`` under ``folder`` that samples at NFE ``n``."""
    for path in _students(folder):
        student = fewstep.load_model(str(path))
        if student.record.teacher != name or n not in student.record.grids:
            continue
        student = fewstep.load_model(str(path), nfe=n)
        training = student.record.training
        add(model=name, nfe=n, kind="student", label=f"{path.stem} ({student.record.method})",
            method=student.record.method, rmse_ref=rmse(_sample(student, ref_seeds, **student.sampling), ref),
            fd=fd_pair(_sample(student, fd_seeds, **student.sampling)),
            cpu_minutes=round(training.get("cpu_seconds", float("nan")) / 60, 2),
            iterations=training.get("iterations"))


def table(rows: list[dict], command: str) -> str:
    """The markdown section: one table per model, rows grouped by NFE."""
    lines = [f"Made by {command} (one torch thread per model, on the 2 shared cores of the machine that trained "
             "the students; the commands are in [distill.md](distill.md#measured)). rmse_ref: to the teacher's "
             "reference ODE solution on seeds 0-63; fd: to the held-out digits on seeds 0-511, in brackets how much "
             "the two halves' fd differ; the teacher row (NFE 32) is the fd floor. Tuned recipes were fitted with "
             "the reduced settings of `benchmarks/distill.py` (`TUNE_OPTIONS`); cost: a student's fine-tuning "
             "CPU-minutes, a recipe's tuning wall seconds.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"**{model}**", "",
                  "| NFE | sampler | kind | rmse_ref | fd (halves differ by) | cost |", "|---:|---|---|---:|---:|---:|"]
        for r in sorted((r for r in rows if r["model"] == model), key=lambda r: (r["nfe"], KIND_ORDER[r["kind"]])):
            if "error" in r:
                lines.append(f"| {r['nfe']} | {r['label']} | {r['kind']} | n/a: {r['error']} | | |")
                continue
            cost = (f"{r['cpu_minutes']:.1f} CPU-min" if "cpu_minutes" in r
                    else f"{r['tune_seconds']:.0f} s tuning" if "tune_seconds" in r else "")
            lines.append(f"| {r['nfe']} | {r['label']} | {r['kind']} | {r['rmse_ref']:.4f} | "
                         f"{r['fd'][0]:.2f} ({r['fd'][1]:.2f}) | {cost} |")
        tol = next((r["ref_tolerance"] for r in rows if r["model"] == model and "ref_tolerance" in r), None)
        if tol is not None:
            lines += ["", f"Reference tolerance check (rtol vs rtol/2): {tol:.1e}."]
        lines.append("")
    return "\n".join(lines)


def rows_from_docs(page: str) -> list[dict]:
    """The rows of the section this script wrote into ``page`` (``table`` prints exactly these fields), so that a
    later run can ``--resume`` from them and measure again only some cells (``--redo``) on another machine, where
    ``fewstep-out/`` does not exist."""
    try:
        section = page.split(START, 1)[1].split(END, 1)[0]
    except IndexError:
        raise SystemExit(f"no {START} ... {END} section to read") from None
    rows, model = [], None
    for line in section.splitlines():
        if line.startswith("**") and line.endswith("**"):
            model = line.strip("*")
        elif line.startswith("Reference tolerance check"):
            teacher = next(r for r in rows if r["model"] == model and r["kind"] == "teacher")
            teacher["ref_tolerance"] = float(line.rsplit(": ", 1)[1].rstrip("."))
        elif line.startswith("| ") and not line.startswith("| NFE") and model is not None:
            nfe, label, kind, rmse_ref, fd, cost = (c.strip() for c in line.strip("|").split("|"))
            row = {"model": model, "nfe": int(nfe), "kind": kind, "label": label}
            if rmse_ref.startswith("n/a: "):
                row["error"] = rmse_ref[len("n/a: "):]
            else:
                value, halves = fd.rstrip(")").split(" (")
                row.update(rmse_ref=float(rmse_ref), fd=[float(value), float(halves)])
            if cost.endswith(" CPU-min"):
                row.update(method=label.rsplit("(", 1)[1].rstrip(")"), cpu_minutes=float(cost.split()[0]))
            elif cost.endswith(" s tuning"):
                row["tune_seconds"] = float(cost.split()[0])
            rows.append(row)
    return rows


def update_docs(path: Path, text: str) -> None:
    try:
        path.write_text(replace_section(path.read_text(), START, END, f"{START}\n{text}\n{END}", append=False))
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from None


def grids(args) -> None:
    seeds = list(range(16))
    teachers = {}
    pictures: dict[tuple[str, int], list[torch.Tensor]] = {}
    for path in _students(args.students):
        record = fewstep.load_model(str(path)).record
        name = record.teacher
        if name not in args.models.split(","):
            continue
        if name not in teachers:
            teachers[name] = _sample(fewstep.load_model(name), seeds, solver="dpmpp_3m", nfe=32, schedule="karras",
                                     schedule_options={"sigma_max": TOP})
        for n in record.grids:
            if str(n) not in args.nfes.split(","):
                continue
            student = fewstep.load_model(str(path), nfe=n)
            pictures.setdefault((record.method, n), []).extend([teachers[name], _sample(student, seeds,
                                                                                          **student.sampling)])
    for (method, n), rows in sorted(pictures.items()):
        out = save_grid(torch.cat(rows), args.grids / f"distill_{method}_nfe{n}.png", nrow=len(seeds))
        print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=Path, default=STUDENTS)
    p.add_argument("--models", default="digits-edm,digits-flow")
    p.add_argument("--nfes", default="1,2,3,4")
    p.add_argument("--ref-seeds", default="0-63")
    p.add_argument("--fd-seeds", default="0-511")
    p.add_argument("--tune-seeds", default="100000-100063")
    p.add_argument("--tuned", default="ld3,gits,s3", help="tuning methods to fit and measure ('' for none)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--json", type=Path, default=None, help="write the rows here (and read them with --resume)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--redo", default="", help="with --resume: measure the cells of these NFEs again (e.g. 2), or "
                   "one tuned recipe's (e.g. 1/s3), or the students' rows (e.g. 1/students)")
    p.add_argument("--from-json", default=None, help="print the table of the rows in these files (comma-separated), "
                   "measure nothing")
    p.add_argument("--update-docs", type=Path, default=None, help="with --from-json: write the section here")
    p.add_argument("--from-docs", type=Path, default=None, help="read the rows of --models back from the section of "
                   "this file (e.g. docs/benchmarks.md), measure nothing; with --json, write them there for --resume")
    p.add_argument("--grids", type=Path, default=None, help="write the PNG grids to this folder, measure nothing")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.grids is not None:
        grids(args)
        return
    command = "`benchmarks/distill.py`, once per model"
    if args.from_json is not None:
        rows = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
    elif args.from_docs is not None:
        rows = [r for r in rows_from_docs(args.from_docs.read_text()) if r["model"] in args.models.split(",")]
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1))
    else:
        rows = measure(args)
    text = table(rows, command)
    print(text)
    if args.update_docs is not None:
        update_docs(args.update_docs, text)
        print(f"wrote {args.update_docs}")


if __name__ == "__main__":
    main()
