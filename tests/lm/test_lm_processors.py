"""Known answers, edge cases and cross-checks against transformers for fewstep.lm.processors."""

import math

import pytest
import torch

from fewstep.lm import processors as P
from fewstep.lm.processors import Sampler

INF = math.inf
# probabilities 1/2, 1/4, 1/8, 1/8: entropy 1.75 ln 2; a tie at the bottom
DYADIC = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()


def kept(x: torch.Tensor) -> list[int]:
    assert x.shape[0] == 1
    return torch.isfinite(x[0]).nonzero().flatten().tolist()


@pytest.mark.parametrize("fn, value, expected", [
    (P.top_k, 1, [0]), (P.top_k, 3, [0, 1, 2, 3]),  # k=3 cuts inside the tie, so the tie is kept
    (P.top_p, 0.5, [0]), (P.top_p, 0.6, [0, 1]), (P.top_p, 0.75, [0, 1]), (P.top_p, 0.8, [0, 1, 2, 3]),
    (P.typical, 0.2, [1]), (P.typical, 0.3, [0, 1]), (P.typical, 0.8, [0, 1, 2, 3]),
    (P.min_p, 0.25, [0, 1, 2, 3]), (P.min_p, 0.3, [0, 1]), (P.min_p, 1.0, [0]),
    (P.epsilon, 0.2, [0, 1]), (P.epsilon, 0.6, [0]), (P.epsilon, 0.125, [0, 1, 2, 3]),
    # eta: threshold min(eps, sqrt(eps) * exp(-1.75 ln 2)) = 0.1334 for eps=0.2, 0.0940 for eps=0.1
    (P.eta, 0.2, [0, 1]), (P.eta, 0.1, [0, 1, 2, 3]), (P.eta, 0.9, [0]),
])
def test_known_answers(fn, value, expected):
    out = fn(DYADIC, value)
    assert kept(out) == expected
    torch.testing.assert_close(out[torch.isfinite(out)], DYADIC[torch.isfinite(out)])  # survivors unchanged


def test_eta_threshold_is_the_papers_formula():
    entropy = 1.75 * math.log(2)
    for eps in (0.05, 0.1, 0.13, 0.14, 0.3):
        threshold = min(eps, math.sqrt(eps) * math.exp(-entropy))
        assert kept(P.eta(DYADIC, eps)) == [i for i, p in enumerate([0.5, 0.25, 0.125, 0.125]) if p >= threshold]


def test_temperature_scales_and_zero_is_first_argmax():
    x = torch.tensor([[1.0, 3.0, 3.0, -INF]])
    torch.testing.assert_close(P.temperature(x, 2.0), torch.tensor([[0.5, 1.5, 1.5, -INF]]))
    assert kept(P.temperature(x, 0)) == [1]
    assert Sampler.parse("greedy").steps == (("temperature", 0.0),)


def test_ties_at_the_top_k_cutoff_are_kept_and_order_free():
    x = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0]])
    assert kept(P.top_k(x, 1)) == [1, 3]
    assert kept(P.top_k(x, 3)) == [1, 2, 3, 4]
    perm = torch.tensor([4, 2, 0, 3, 1])
    for fn, v in [(P.top_k, 3), (P.top_p, 0.7), (P.typical, 0.5), (P.min_p, 0.4), (P.epsilon, 0.1), (P.eta, 0.1)]:
        torch.testing.assert_close(fn(x, v)[:, perm], fn(x[:, perm], v))


ALL = [(P.temperature, 0.7), (P.top_k, 2), (P.top_p, 0.9), (P.typical, 0.9), (P.min_p, 0.1), (P.epsilon, 0.01),
       (P.eta, 0.01)]


@pytest.mark.parametrize("fn, value", ALL)
def test_all_mass_on_one_token(fn, value):
    for x in (torch.tensor([[0.0, -INF, -INF, -INF]]), torch.tensor([[200.0, 0.0, 0.0, 0.0]])):
        probs = fn(x, value).softmax(-1)
        torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("fn, value", ALL)
def test_minus_inf_stays_removed_and_no_nan(fn, value):
    x = torch.tensor([[2.0, -INF, 1.0, -INF, 0.5], [-INF, -INF, -INF, 0.0, 0.0]])
    out = fn(x, value)
    assert not out.isnan().any()
    assert torch.isneginf(out[torch.isneginf(x)]).all()
    assert torch.isfinite(out).any(-1).all()


@pytest.mark.parametrize("fn, value", ALL)
def test_fp16_input_is_promoted_and_agrees_with_fp32(fn, value):
    x16 = (torch.randn(8, 50, generator=torch.Generator().manual_seed(1)) * 3).half()
    out16, out32 = fn(x16, value), fn(x16.float(), value)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32)


@pytest.mark.parametrize("fn, value", ALL)
def test_pure_never_in_place(fn, value):
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    fn(x, value)
    assert torch.equal(x, before)


def test_matches_transformers_warpers_on_random_logits():
    lp = pytest.importorskip("transformers.generation.logits_process")
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(3)) * 2
    pairs = [(P.top_k(x, 20), lp.TopKLogitsWarper(20)), (P.top_p(x, 0.8), lp.TopPLogitsWarper(0.8)),
             (P.typical(x, 0.7), lp.TypicalLogitsWarper(0.7)), (P.min_p(x, 0.05), lp.MinPLogitsWarper(0.05)),
             (P.epsilon(x, 3e-3), lp.EpsilonLogitsWarper(3e-3)), (P.eta(x, 3e-3), lp.EtaLogitsWarper(3e-3)),
             (P.temperature(x, 0.7), lp.TemperatureLogitsWarper(0.7))]
    for ours, warper in pairs:
        theirs = warper(None, x.clone())
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs)), type(warper).__name__
        torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1))


def test_chain_order_is_explicit_and_matters():
    # temperature 3 flattens the distribution, so min_p after it keeps more tokens than before it
    hf = Sampler.parse("min_p=0.3,temperature=3", order="hf")
    llama = Sampler.parse("temperature=3,min_p=0.3", order="llama.cpp")
    assert hf.steps == (("temperature", 3.0), ("min_p", 0.3)) and str(llama) == "min_p=0.3,temperature=3"
    assert Sampler.parse([("min_p", 0.3), ("temperature", 3)]).steps == (("min_p", 0.3), ("temperature", 3))
    assert kept(hf(DYADIC)) == [0, 1, 2, 3] and kept(llama(DYADIC)) == [0, 1]
    torch.testing.assert_close(hf.probs(DYADIC).sum(-1), torch.ones(1))
    assert hf.to_hf() == {"do_sample": True, "temperature": 3.0, "top_k": 0, "top_p": 1.0, "min_p": 0.3}
    with pytest.raises(ValueError, match="transformers applies"):
        llama.to_hf()


@pytest.mark.parametrize("spec, message", [
    ("top_k=0", r"top_k must be in \[1, inf\), got 0"), ("top_p=1.5", r"top_p must be in \(0, 1\]"),
    ("top_k=2.5", "top_k must be an integer"), ("foo=1", "name=value' with name in temperature"),
    ("temperature", "'name=value'"), ("temperature=abc", "'abc' is not a number"),
    ("temperature=-1", "temperature must be in"), ("min_p=nan", "min_p must be finite"),
])
def test_bad_specs_say_what_is_allowed(spec, message):
    with pytest.raises(ValueError, match=message):
        Sampler.parse(spec)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="order must be one of"):
        Sampler.parse("top_k=2", order="vllm")
    with pytest.raises(TypeError, match="floating-point"):
        P.top_k(torch.tensor([[1, 2, 3]]), 1)
    with pytest.raises(TypeError, match="must be a number"):
        P.top_p(DYADIC, "0.5")
    with pytest.raises(ValueError, match="at least one finite value"):
        Sampler().probs(torch.full((1, 3), -INF))
