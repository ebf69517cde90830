"""Minority guidance (Um et al., arXiv 2301.12334) on an exact mixture with unequal weights: gmm2d's ring with one
mode at a quarter of the others' weight (3.4 %). The minority score is higher on the minor mode; guiding towards the
highest minority level raises its share far above its weight, guidance strength 0 is the base sampler (bitwise,
and the share stays at the weight: the negative control), and the lowest level lowers the share."""

import math

import pytest
import torch

from fewstep.diffusion.sampling import sample
from fewstep.models.exact import GMM, ring_gmm
from fewstep.steer.minority import MinorityGuidance, fit_minority_classifier, minority_score

pytestmark = pytest.mark.usefixtures("one_thread")
N = 2000  # samples per run: the binomial sd of a 3.4 % share is 0.004


@pytest.fixture(scope="module")
def unequal():
    ring = ring_gmm()
    w = torch.ones(8)
    w[0] = 0.25
    return GMM(w, ring.means, (0.01 * torch.eye(2)).expand(8, 2, 2), name="gmm2d-unequal", chunk=1 << 16)


@pytest.fixture(scope="module")
def classifier(unequal):
    with torch.random.fork_rng():
        return fit_minority_classifier(unequal, unequal.sample_data(8000, torch.Generator().manual_seed(0)),
                                       levels=10, steps=400, batch=256, hidden=64)


def minor_share(g, x):
    return float((((x[:, None, :].double() - g.means[None]) ** 2).sum(-1).argmin(1) == 0).double().mean())


def test_the_minority_score_is_higher_on_the_minor_mode(unequal):
    x = unequal.sample_data(20_000, torch.Generator().manual_seed(1))
    score = minority_score(unequal, x, sigma=1.0)
    minor = ((x - unequal.means[0]) ** 2).sum(1) < 0.25
    assert float(score[minor].mean()) > 1.3 * float(score[~minor].mean())
    assert torch.equal(score, minority_score(unequal, x, sigma=1.0))  # seeded


def test_guidance_raises_the_minor_share_and_strength_zero_keeps_the_weight(unequal, classifier):
    weight = float(unequal.log_w.exp()[0])
    sd = math.sqrt(weight * (1 - weight) / N)
    kw = dict(solver="dpmpp_2m", nfe=20, seeds=range(N))
    base = sample(unequal, **kw)
    off = sample(MinorityGuidance(unequal, classifier, 0.0), **kw)
    assert torch.equal(off, base)
    assert abs(minor_share(unequal, off) - weight) < 4 * sd
    x = sample(MinorityGuidance(unequal, classifier, 2.0), **kw)
    guided = minor_share(unequal, x)
    assert guided > 4 * weight, guided
    alone = sample(MinorityGuidance(unequal, classifier, 2.0), solver="dpmpp_2m", nfe=20, seeds=[17])
    assert torch.equal(x[17:18], alone)  # a seed's sample does not depend on the batch
    majority = minor_share(unequal, sample(MinorityGuidance(unequal, classifier, 2.0, level=0), **kw))
    assert majority < weight - 4 * sd, majority


def test_bad_options_are_refused(unequal, classifier):
    x = unequal.sample_data(40, torch.Generator().manual_seed(2))
    for call, msg in [
        (lambda: MinorityGuidance(unequal, classifier, -1.0), "scale must be a finite number >= 0"),
        (lambda: MinorityGuidance(unequal, classifier, 1.0, level=10), "level must be an integer 0..9"),
        (lambda: minority_score(unequal, x, sigma=0.0), "sigma must be a finite number > 0"),
        (lambda: minority_score(unequal, x, sigma=1.0, draws=0), "draws must be an integer in 1..1024"),
        (lambda: fit_minority_classifier(unequal, x, levels=1), "levels must be an integer in 2..1000"),
        (lambda: fit_minority_classifier(unequal, x, levels=30), "N >= 2 x levels = 60"),
        (lambda: fit_minority_classifier(unequal, x[:, :1], levels=2), "the model's are \\(2,\\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(TypeError, match="classifier must be a callable"):
        MinorityGuidance(unequal, "clf", 1.0)
