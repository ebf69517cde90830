"""The peers of benchmarks/mcmc.py sample the same densities: each target's JAX log-density, written from the
fewstep target's parameters, equals fewstep's at random points (and its gradient equals autograd's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep.mcmc as mcmc

pytest.importorskip("jax")
BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "mcmc.py"


def _bench():
    spec = importlib.util.spec_from_file_location("benchmarks_mcmc", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,options", [("gaussian", {"dim": 10, "condition": 100.0}),
                                          ("mixture", {"dim": 16, "modes": 4}), ("funnel", {"dim": 10}),
                                          ("banana", {"dim": 3}), ("student_t", {"dim": 10, "df": 3.0}),
                                          ("logistic", {})])
def test_jax_log_density_equals_fewstep(name, options):
    if name == "logistic":
        pytest.importorskip("sklearn")
    bench = _bench()
    import jax

    target = mcmc.make_target(name, **options)
    x = 1.5 * torch.randn(64, target.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if target.has_exact:  # typical points too, not only a ball around 0
        x = torch.cat([x, target.sample(64, torch.Generator().manual_seed(1))])
    f = bench.jax_log_prob(target)
    lp_jax = np.asarray(jax.vmap(f)(jax.numpy.asarray(x.numpy())))
    g_jax = np.asarray(jax.vmap(jax.grad(f))(jax.numpy.asarray(x.numpy())))
    xg = x.clone().requires_grad_(True)
    lp = target.log_prob(xg)
    (g,) = torch.autograd.grad(lp.sum(), xg)
    np.testing.assert_allclose(lp_jax, lp.detach().numpy(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(g_jax, g.numpy(), rtol=1e-8, atol=1e-8)


def test_fewstep_does_not_import_the_peers():
    import subprocess
    import sys

    code = ("import sys, fewstep, fewstep.mcmc; "
            "print(sorted(m for m in ('jax', 'blackjax', 'numpyro', 'emcee') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
