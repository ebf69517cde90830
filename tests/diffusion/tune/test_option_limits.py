"""Every tuning method bounds its integer options before it evaluates the model (issue 18: ``gits`` with a huge
``fine_steps`` hung building its fine grid and cost matrix), with one message naming the option and its range."""

from __future__ import annotations

import pytest

from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.tune import ays, ems, gits, iia, ld3, s3
from fewstep.models import load_model

HUGE = 10**9
TUNE = range(100_000, 100_008)


@pytest.fixture(scope="module")
def model():
    return CountingDenoiser(load_model("gmm2d"))


@pytest.mark.parametrize("method, options, message", [
    (gits, {"fine_steps": HUGE}, "fine_steps must be an integer in 5..500"),
    (gits, {"fine_steps": 501}, "fine_steps must be an integer in 5..500"),
    (gits, {"fine_steps": 3}, "fine_steps must be an integer in 5..500"),  # fewer points than the steps to choose
    (gits, {"fine_steps": 60.0}, "fine_steps must be an integer in 5..500"),
    (iia, {"fine_steps": HUGE}, "fine_steps must be an integer in 2..1,000"),
    (ays, {"mc_samples": HUGE}, "mc_samples must be an integer in 8..65,536"),
    (ays, {"max_sweeps": HUGE}, "max_sweeps must be a positive integer up to 1,000"),
    (ays, {"candidates": HUGE}, "candidates must be an integer in 2..1,000"),
    (ays, {"ref_steps": HUGE}, "ref_steps must be an integer in 2..1,000"),
    (s3, {"generations": HUGE}, "generations must be an integer in 0..1,000"),
    (s3, {"population": HUGE}, "population must be a positive integer up to 1,000"),
    (s3, {"children": HUGE}, "children must be a positive integer up to 1,000"),
    (s3, {"refine_sweeps": HUGE}, "refine_sweeps must be an integer in 0..1,000"),
    (ld3, {"steps": HUGE}, "steps must be a positive integer up to 100,000"),
    (ld3, {"patience": HUGE}, "patience must be a positive integer up to 100,000"),
    (ems, {"n_samples": HUGE}, "n_samples must be an integer in 2..65,536"),
    (ems, {"n_grid": HUGE}, "n_grid must be an integer in 2..1,000"),
])
def test_a_huge_option_is_refused_before_any_model_evaluation(model, method, options, message):
    solver = {iia: "iia_dpmpp_2m", ems: "dpm_solver_v3", ld3: "ddim", s3: "unipc"}.get(method, "ddim")
    model.calls = 0
    with pytest.raises(ValueError, match=f"^{message}; got "):
        method.tune(model, solver=solver, nfe=5, seeds=TUNE, eval_seeds=None, progress=False, **options)
    assert model.calls == 0


def test_gits_refuses_more_steps_than_its_largest_fine_grid(model):
    with pytest.raises(ValueError, match="gits chooses at most 500 steps of its fine grid; nfe=600"):
        gits.tune(model, solver="ddim", nfe=600, seeds=TUNE, eval_seeds=None, progress=False)
