"""ld3 variants at one NFE on one model: the numbers in docs/design.md ("Learned samplers").

    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 256 optimizer=adam patience=null   # full form, 256 seeds
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 256 optimizer=adam patience=null coefficients=false
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 optimizer=adam patience=null   # 512 seeds
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 optimizer=adam patience=null batch=256 steps=300
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 steps=300 optimizer=adam patience=null
    # L-BFGS on the raw parameters
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 optimizer=lbfgs patience=null precondition=null
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 steps=200 optimizer=lbfgs patience=null precondition=null
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 4 512 steps=100 optimizer=lbfgs patience=null precondition=null
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 4 512 steps=100 optimizer=lbfgs patience=null precondition=null
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 steps=200 optimizer=lbfgs patience=null precondition=null threads=2
    # preconditioned L-BFGS (the default), all 200 iterations, and as the benchmark runs it on both cores
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 patience=null precondition=32
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 patience=null precondition=32
    .venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 steps=100 threads=2
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 threads=2
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 256 steps=100   # and digits-vp-eps: 256 seeds overfit
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 256 steps=100 ridge=0.01   # and ridge=0.001, 0.1
    .venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 ridge=0.01

Tuning seeds 100000+ (their references are computed once and cached: 1.4-3.7 min per 128 seeds on a
trained model here), 200 iterations unless given (ld3's defaults otherwise: preconditioned L-BFGS, patience 4),
started as in benchmarks/tuned.py (offered the model's S3 recipe from fewstep-out/tuned/ when it
exists). Prints the held-out rmse_ref (seeds 0-255) and the objective; writes the recipe to
fewstep-out/ld3-variants/ (one thread, as the tuned benchmark, unless `threads=N` is given).
"""

import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    from fewstep.diffusion.tune import ld3
    from fewstep.models import load_model

    name, nfe, n = argv[0], int(argv[1]), int(argv[2])
    kw = {"steps": 200}
    for a in argv[3:]:
        k, v = a.split("=", 1)
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:  # a bare string, e.g. optimizer=lbfgs
            kw[k] = v
    torch.set_num_threads(kw.pop("threads", 1))
    s3 = Path("fewstep-out/tuned") / name / f"s3-usf-nfe{nfe}.json"
    t = time.perf_counter()
    r = ld3.tune(load_model(name), nfe=nfe, seeds=range(100_000, 100_000 + n), progress=True,
                 starts=[str(s3)] if s3.exists() else [], **kw)
    o = r.info["objective"]
    print(f"{name} NFE {nfe}, {n} tuning seeds, {kw}: {time.perf_counter() - t:.0f} s; held-out rmse_ref "
          f"{r.quality['rmse_ref']:.4g} (untuned start {r.quality['untuned']['rmse_ref']:.4g}); tuning seeds "
          f"{o['initial']:.4g} -> {o['final']:.4g}, held back {o['held_back_initial']:.4g} -> "
          f"{o['held_back_final']:.4g}")
    out = Path("fewstep-out/ld3-variants")
    out.mkdir(parents=True, exist_ok=True)
    tags = [a.replace("=", "").replace('"', "") for a in argv[3:]]
    r.save(out / ("-".join([name, str(nfe), str(n)] + tags) + ".json"))


if __name__ == "__main__":
    main(sys.argv[1:])
