"""Numerical identity across refactors: every registered solver reproduces saved float64 outputs.

``tests/data/solver_identity.npz`` was written by ``python tests/diffusion/test_identity.py --write`` at commit
5b69ad3, before the package was re-layered (issue 16), with one torch thread: the mixture model's matrix
products round differently with two threads (up to 1e-11 after Restart's 13 evaluations), so the test runs on
one thread too. Each case is a model, a solver, its options, an NFE
and seeds; the file stores the case list as JSON beside the samples, so the test replays exactly what
was saved. Tuned solvers get non-trivial options (IIA coefficients, DC ratios, USF plans, a learned
form, synthetic EMS), so their fitted paths are covered and not just their base solvers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep

DATA = Path(__file__).resolve().parents[1] / "data" / "solver_identity.npz"
SEEDS = list(range(4))
MODELS = {"gauss": {"dim": 4, "mean": 0.5, "std": 0.7}, "digits-gmm": {}}
NFES = (4, 6, 10)
BROWNIAN = ("euler_ancestral", "dpmpp_2m_sde", "sa_solver", "heun_churn")
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name):
    return fewstep.load_model(name, **MODELS[name])


def _sigmas(model, solver, nfe, options):
    from fewstep.diffusion.sampling import plan_steps
    from fewstep.diffusion.schedules import as_list, get_sigmas

    return as_list(get_sigmas("karras", plan_steps(solver, nfe, options=options), model))


def _fitted_options(model, solver, nfe):
    """Non-trivial options for the tuned solvers (made once, when the snapshot is written)."""
    if not (solver.startswith(("iia_", "usf")) or solver.endswith("_dc") or solver in ("learned", "dpm_solver_v3")):
        return None
    n = len(_sigmas(model, solver, nfe, {})) - 1
    if solver.startswith("iia_"):
        heun = solver == "iia_heun"
        rows = []
        for i in range(n):
            c0 = (i < n - 1) if heun else i >= 1
            c1 = i >= 1 if heun else i >= 2
            rows.append([0.02 * c0 * (1 + 0.1 * i), -0.01 * c1])
        return {"coefficients": rows}
    if solver.endswith("_dc"):
        return {"dc_ratios": [1.0, 1.0] + [1.0 + 0.05 * (-1) ** i for i in range(n - 2)]}
    if solver == "usf":
        return {"orders": [1 + i % 3 for i in range(n)],
                "predictions": ["data", "noise"] * (n // 2) + ["data"] * (n % 2),
                "correctors": [i % 2 == 0 for i in range(n)], "relax": [0.1 * ((-1) ** i) for i in range(n)]}
    if solver == "learned":
        from fewstep.diffusion.solvers.learned import linear_form

        form = linear_form("dpmpp_2m", _sigmas(model, "dpmpp_2m", nfe, {}))
        form["x_coefs"] = [v * (1 + 0.01 * i) for i, v in enumerate(form["x_coefs"])]
        form["eval_sigmas"] = [s * 0.97 for s in form["eval_sigmas"]]
        return form
    if solver == "dpm_solver_v3":
        lam = np.linspace(-5.0, 8.0, 27)
        return {"ems": {"lambda": lam.tolist(), "l": (1 + 0.1 * np.sin(lam)).reshape(-1, 1).tolist(),
                        "s": (0.05 * np.cos(lam)).reshape(-1, 1).tolist(), "b": np.full((27, 1), 0.01).tolist()}}
    return None


def cases():
    """Every registered solver with default options, plus the extra cases above, on both models."""
    out = []
    for model_name in MODELS:
        model = _model(model_name)
        for solver, info in sorted(fewstep.list_solvers().items()):
            for nfe in NFES if solver != "restart" else (13, 16):
                variants = [({}, "gaussian")]
                fitted = _fitted_options(model, solver, nfe)
                if fitted is not None:
                    variants.append((fitted, "gaussian"))
                if solver == "usf":
                    variants.append(({"first_x0": [0.1] * math.prod(model.shape)}, "gaussian"))
                if solver in BROWNIAN:
                    variants.append(({}, "brownian"))
                for options, noise_type in variants:
                    out.append({"model": model_name, "solver": solver, "nfe": nfe, "options": options,
                                "noise_type": noise_type, "stochastic": info["stochastic"]})
    return out


def run(case):
    model = _model(case["model"])
    return fewstep.sample(model, solver=case["solver"], nfe=case["nfe"], schedule="karras", seeds=SEEDS,
                          solver_options=case["options"], noise_type=case["noise_type"], dtype=torch.float64)


def _load():
    blob = np.load(DATA)
    return json.loads(str(blob["cases"])), blob


def _ids():
    if not DATA.exists():
        return []
    saved, _ = _load()
    return [f"{c['model']}-{c['solver']}-{c['nfe']}-{k}" for k, c in enumerate(saved)]


@pytest.mark.parametrize("k", range(len(_ids())), ids=_ids())
def test_solver_reproduces_the_saved_output(k):
    saved, blob = _load()
    case = saved[k]
    expected = blob[f"x{k}"]
    if expected.dtype.kind == "U":  # the solver refused this NFE when the snapshot was written
        with pytest.raises(ValueError):
            run(case)
        return
    got = run(case).numpy()
    # float64 sums round differently on different CPUs (vector width): the digits-gmm cases moved by up to
    # 1.2e-11 on a second machine; a change to any solver's update moves them by many orders more
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_every_registered_solver_is_in_the_snapshot():
    saved, _ = _load()
    assert set(fewstep.list_solvers()) <= {c["solver"] for c in saved}


def write():
    arrays = {}
    all_cases = cases()
    for k, case in enumerate(all_cases):
        try:
            arrays[f"x{k}"] = run(case).numpy()
        except ValueError as exc:
            arrays[f"x{k}"] = np.array(str(exc))
    np.savez_compressed(DATA, cases=np.array(json.dumps(all_cases)), **arrays)
    print(f"wrote {len(all_cases)} cases to {DATA}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/diffusion/test_identity.py --write")
    torch.set_num_threads(1)
    write()
