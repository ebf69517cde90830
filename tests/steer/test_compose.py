"""Compositional sampling with MCMC correctors (Du et al., arXiv 2302.11552) against closed-form products.

Two Gaussians N(m1, S1) and N(m2, S2) have the product N(m, S), S = (S1^-1 + S2^-1)^-1, m = S (S1^-1 m1 + S2^-1 m2).
The reverse process that follows the summed score ends far from it (its variance is too small, at any number of
steps), while ULA, MALA and HMC correctors at each noise level bring the samples close; a MALA corrector whose
accept test uses one factor's energy instead of the product's (a negative control) ends farther away than no
corrector at all."""

import math

import pytest
import torch

from fewstep.diffusion.sampling import sample
from fewstep.models import load_model
from fewstep.models.exact import GMM, Gauss, ring_gmm
from fewstep.steer.compose import Product, compose_sample, exact_log_density
from fewstep.steer.exact import product

pytestmark = pytest.mark.usefixtures("one_thread")
N = 1000


@pytest.fixture(scope="module")
def pair():
    g1 = Gauss(2, mean=torch.tensor([1.0, 0.0]), std=1.0, chunk=1 << 16)
    g2 = Gauss(2, mean=torch.tensor([-1.0, 1.0]), std=torch.tensor([1.0, 0.5]), chunk=1 << 16)
    var = 1 / (1 / g1.std**2 + 1 / g2.std**2)
    return g1, g2, var * (g1.mean / g1.std**2 + g2.mean / g2.std**2), var


def error(x, mean, var):
    """Distance of the sample mean and the per-coordinate sample variance to the exact product's."""
    return float((x.mean(0) - mean).norm() + (x.var(0) - var).norm())


def test_correctors_bring_the_summed_score_sampler_to_the_exact_product(pair):
    g1, g2, mean, var = pair
    model = Product([g1, g2])
    seeds = range(N)
    errs, evals = {}, {}
    for corrector, kw in (("ula", dict(step_size=1.0)), ("mala", dict(step_size=1.0)),
                          ("hmc", dict(step_size=0.5, leapfrog=2))):
        res = compose_sample(model, corrector=corrector, corrector_steps=4, nfe=20, seeds=seeds, **kw)
        errs[corrector], evals[corrector] = error(res.samples, mean, var), res.evaluations
        if corrector != "ula":
            assert 0.3 < res.info["accept"] <= 1
    plain = compose_sample(model, corrector=None, nfe=int(max(evals.values())), seeds=seeds)
    assert plain.evaluations >= max(evals.values()) - 2  # compute-matched: the uncorrected run gets as many
    base = error(plain.samples, mean, var)
    assert base > 0.2 and float(plain.samples.var(0)[0]) < 0.8 * float(var[0])  # too narrow
    for corrector, e in errs.items():
        assert e < 0.6 * base, (corrector, e, base)
    wrong = compose_sample(model, corrector="mala", corrector_steps=4, step_size=1.0, nfe=20, seeds=seeds,
                           log_density=exact_log_density(g1))
    assert error(wrong.samples, mean, var) > base  # the negative control: the accept test decides the target


def test_no_corrector_is_the_base_sampler_and_runs_are_seeded(pair):
    g1, g2, _, _ = pair
    model = Product([g1, g2])
    res = compose_sample(model, corrector=None, solver="euler_ancestral", nfe=10, seeds=[3, 4, 5])
    assert torch.equal(res.samples, sample(model, solver="euler_ancestral", nfe=10, seeds=[3, 4, 5],
                                           dtype=torch.float64))
    a = compose_sample(model, corrector="mala", nfe=10, seeds=[3, 4, 5])
    b = compose_sample(model, corrector="mala", nfe=10, seeds=[5])
    assert torch.equal(a.samples[2:], b.samples) and not torch.equal(a.samples[0], a.samples[1])


def test_the_energy_is_the_products_score(pair):
    """grad sum_i log p_{i,sigma} equals the Product's score (D - x) / sigma^2: MALA and HMC's energy matches ULA's
    drift; and for mixtures the closed-form product equals importance weighting of exact draws."""
    g1, g2, _, _ = pair
    ring = ring_gmm(chunk=1 << 16)
    for model in (Product([g1, g2]), Product([ring, g1], weights=[1.0, 0.5])):
        x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        for sigma in (0.05, 0.7, 5.0):
            (grad,) = torch.autograd.grad(exact_log_density(model)(x, sigma).sum(), x)
            score = (model(x.detach(), sigma) - x.detach()) / sigma**2
            assert torch.allclose(grad, score, rtol=1e-6, atol=1e-8), sigma
    blob = GMM(torch.ones(1), torch.tensor([[1.5, 0.5]]), (0.36 * torch.eye(2))[None])
    exact = product(ring, blob)
    data = ring.sample_data(200_000, torch.Generator().manual_seed(1))
    w = torch.softmax(exact_log_density(blob)(data, 0.0), 0)
    comp = ((data[:, None] - ring.means[None]) ** 2).sum(-1).argmin(1)
    weighted = torch.zeros(8, dtype=torch.float64).index_add_(0, comp, w)
    assert torch.allclose(weighted, exact.log_w.exp(), atol=0.01)
    assert torch.allclose(w @ data, exact.log_w.exp() @ exact.means, atol=0.01)


def test_conditionals_of_digits_cond_compose():
    """A product of two classes of digits-cond, sampled with ULA (the trained net has no energy)."""
    cond = load_model("digits-cond")
    model = Product([(cond, {"class_labels": 3}), (cond, {"class_labels": 8})])
    res = compose_sample(model, corrector="ula", corrector_steps=1, nfe=6, seeds=[0, 1], dtype=None)
    assert res.samples.shape == (2, 1, 8, 8) and torch.isfinite(res.samples).all()
    assert res.info["corrector_evaluations"] > 0 and res.evaluations > 6
    with pytest.raises(ValueError, match="no closed-form log-density: MALA and HMC need one"):
        compose_sample(model, corrector="mala", nfe=6, seeds=[0])


def test_bad_options_are_refused(pair):
    g1, g2, _, _ = pair
    model = Product([g1, g2])
    for call, msg in [
        (lambda: compose_sample(model, corrector="gibbs", seeds=[0]), "choose one of ula, mala, hmc or None"),
        (lambda: compose_sample(model, corrector_steps=0, seeds=[0]), "corrector_steps must be an integer in 1..1000"),
        (lambda: compose_sample(model, step_size=-1, seeds=[0]), "step_size must be a positive number"),
        (lambda: Product([g1, load_model("digits-gmm")]), "share one noise process and data shape"),
        (lambda: Product([g1, g2], weights=[1.0]), "weights must be 2 finite numbers"),
        (lambda: model(torch.zeros(1, 2), 1.0, {"class_labels": torch.zeros(1)}), "cond=None"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(TypeError, match="factors must be"):
        Product(["gauss"])
    assert math.isfinite(float(exact_log_density(model)(torch.zeros(1, 2), 0.0)))
