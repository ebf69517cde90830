import math

import pytest
import torch

from fewstep.metrics import digits_classifier
from fewstep.models import load_model
from fewstep.steer import (
    RewardError,
    as_reward,
    best_of_n,
    component_logpost,
    digit_confidence,
    digit_logprob,
    fk_steer,
    linear,
    make_reward,
    stroke_mass,
)
from fewstep.steer.rewards import gmm_log_joint


def test_digit_rewards_read_the_bundled_classifier():
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    logits = digits_classifier()(x)
    assert torch.allclose(digit_logprob(3)(x), torch.log_softmax(logits, 1)[:, 3].double(), atol=1e-6)
    assert torch.allclose(digit_confidence()(x), torch.softmax(logits, 1).amax(1).double(), atol=1e-6)
    assert digit_logprob(3).differentiable and digit_confidence().differentiable


def test_stroke_mass_is_mean_brightness_in_unit_range():
    x = torch.stack([-torch.ones(1, 8, 8), torch.ones(1, 8, 8), torch.zeros(1, 8, 8)])
    assert stroke_mass()(x).tolist() == [0.0, 1.0, 0.5]


def test_linear_and_user_callables():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert linear([2.0, 1.0])(x).tolist() == [4.0, 5.0]
    user = as_reward(lambda v: v.sum(1))
    assert user(x).tolist() == [3.0, 2.0] and not user.differentiable


def test_component_log_posteriors_normalise_and_match_bayes():
    g = load_model("gmm2d")
    x = g.sample_data(50, torch.Generator().manual_seed(0))
    logpost = torch.stack([component_logpost(g, k)(x) for k in range(8)], 1)
    assert torch.allclose(torch.logsumexp(logpost, 1), torch.zeros(50, dtype=torch.float64), atol=1e-10)
    # log N(x; mu, s^2 I) in 2-D, by hand
    lj = gmm_log_joint(g, x)
    by_hand = (math.log(1 / 8) - ((x[:, None] - g.means[None]) ** 2).sum(-1) / (2 * 0.01)
               - math.log(2 * math.pi * 0.01))
    assert torch.allclose(lj, by_hand, atol=1e-8)


def test_make_reward_parses_names_and_refuses_bad_ones():
    assert make_reward("digit:3").name == "digit:3" and make_reward("stroke").name == "stroke"
    assert make_reward("linear:1,0")(torch.tensor([[2.0, 5.0]])).tolist() == [2.0]
    assert make_reward("component:2", load_model("gmm2d")).name == "component:2"
    for spec, msg in [("nope", "choose one of"), ("digit", "needs a digit"), ("digit:11", "0..9"),
                      ("stroke:2", "takes no options"), ("linear:a,b", "numbers"), ("digit:1.5", "one integer")]:
        with pytest.raises(ValueError, match=msg):
            make_reward(spec)
    with pytest.raises(TypeError, match="GMM"):
        make_reward("component:1", load_model("gauss"))


def test_nan_reward_is_one_error_naming_the_step():
    g = load_model("gmm2d")
    with pytest.raises(RewardError, match=r"NaN or Inf for 4 of 4 samples at step 0 \(sigma = 80"):
        fk_steer(g, lambda x: x[:, 0] * math.nan, particles=2, nfe=6, seeds=[0, 1])
    late = as_reward(lambda x: torch.where(x.norm(dim=1) > 1.0, math.nan, 0.0) + x[:, 0], "late")  # D starts near 0
    with pytest.raises(RewardError, match=r"reward 'late' returned NaN or Inf .* at step [1-9]"):
        fk_steer(g, late, particles=2, nfe=12, seeds=[0, 1])
    with pytest.raises(RewardError, match="at the final samples"):
        best_of_n(g, lambda x: x[:, 0] / 0.0 * 0.0, n=2, nfe=4, seeds=[0])


def test_wrong_shape_or_type_is_refused_with_what_is_allowed():
    g = load_model("gmm2d")
    with pytest.raises(RewardError, match=r"returned shape \(4, 2\) at step 0 .* must return shape \[4\]"):
        fk_steer(g, lambda x: x, particles=2, nfe=6, seeds=[0, 1])
    with pytest.raises(RewardError, match="returned list"):
        best_of_n(g, lambda x: [0.0] * x.shape[0], n=2, nfe=4, seeds=[0])
    with pytest.raises(TypeError, match="Reward or a callable"):
        best_of_n(g, 3.0, n=2, nfe=4, seeds=[0])
