"""Make the bundled distilled students (issue 19): SFD (arXiv 2409.19681), progressive distillation
(arXiv 2202.00512) and consistency distillation (arXiv 2303.01469, with iCT's techniques, arXiv 2310.14189) of
digits-edm and digits-flow, named for NFE 2 (a consistency student also samples at NFE 1, 3 and 4), and SiD's
one-step generators (arXiv 2404.04057), named for NFE 1.

    .venv/bin/python scripts/distill_students.py digits-edm:sfd digits-flow:sfd digits-edm:progressive \
        digits-flow:progressive digits-edm:cd digits-flow:cd digits-edm:sid digits-flow:sid

Each job writes ``<out>/<model>-<method>-nfe<N>.json`` and ``.safetensors`` (default ``--out``: the package's
``models/data/students``) and prints the SHA-256 of both. Deterministic from ``--seed``: one thread, deterministic
algorithms, and every iteration's noise from a generator seeded by (seed, iteration); the same torch build on the
same CPU writes the same weights (the record also holds the CPU time, which differs between runs). Jobs run one
after another in this process; run several processes for several cores.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch

import fewstep
from fewstep.distill import distill
from fewstep.models.student import BUNDLED

OUT = BUNDLED
# The committed settings per method: the iterations fit the time box of the session that made them (SFD 15.0-15.1,
# the budget; progressive 3.4-3.9, CD 2.1-2.2 CPU-minutes per model there; SiD about 11 on a faster machine);
# see docs/distill.md. A method's "nfe" overrides --nfe (SiD's generator is one-step).
SETTINGS = {
    "sfd": {"iterations": 1800, "batch": 64, "lr": 2e-4, "options": {"substeps": 8, "pool": 4096, "refresh": 16}},
    "progressive": {"iterations": 600, "batch": 64, "lr": 1e-4, "options": {"rounds": 3}},
    "cd": {"iterations": 600, "batch": 64, "lr": 2e-4},
    "sid": {"iterations": 3600, "batch": 64, "lr": 1e-4, "nfe": 1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", nargs="+", help="MODEL:METHOD, e.g. digits-edm:sfd")
    p.add_argument("--nfe", type=int, default=2, help="the students' NFE (not for sid, whose is 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--iterations", type=int, default=None, help="override the committed iterations (for a quick run)")
    p.add_argument("--resume", action="store_true", help="continue from the jobs' checkpoints")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for job in args.jobs:
        model, _, method = job.partition(":")
        if method not in SETTINGS:
            raise SystemExit(f"distill_students.py: {job!r}: the method must be one of {', '.join(SETTINGS)}")
        settings = dict(SETTINGS[method])
        if args.iterations is not None:
            settings["iterations"] = args.iterations
        nfe = settings.pop("nfe", args.nfe)
        path = args.out / f"{model}-{method}-nfe{nfe}.json"
        t0 = time.time()
        student = distill(fewstep.load_model(model), method, nfe=nfe, seed=args.seed, out=path,
                          checkpoint_every=100, resume=args.resume, progress=True, **settings)
        path.with_suffix(".ckpt").unlink(missing_ok=True)
        training = student.record.training
        print(f"{path.name}: final loss {training['final_loss']:.5f}, {training['cpu_seconds'] / 60:.1f} CPU-min, "
              f"{(time.time() - t0) / 60:.1f} min wall")
        for f in (path, path.with_suffix(".safetensors")):
            print(f"  sha256 {hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}")


if __name__ == "__main__":
    main()
