"""fewstep.evaluation.quality: which held-out data each kind of model is scored against, and every metric's
contract (names and order kept, NaN where there is nothing to compare with, a clear error for an unknown name)."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.processes import VE
from fewstep.evaluation import METRICS, DataReference, compute_metrics
from fewstep.metrics import digits_features, fd
from fewstep.models import load_model
from fewstep.models.digits_data import digits_data

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

DISTRIBUTION = [m for m in METRICS if m != "rmse_ref"]


class Other(Denoiser):
    """A model that is neither exact nor on digits: there is no held-out data to compare with."""

    shape = (3,)

    def denoise(self, x, sigma, cond):
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def ring():
    return DataReference(load_model("gmm2d"))


@pytest.fixture(scope="module")
def digits():
    return DataReference(load_model("digits-gmm"))


def test_data_reference_per_kind_of_model():
    held = digits_data("heldout")[0].double().reshape(-1, 1, 8, 8)
    for name in ("digits-gmm", "digits-edm"):  # an exact and a trained model on digits: the held-out split
        ref = DataReference(load_model(name))
        assert ref.is_digits and ref.data.dtype == torch.float64
        torch.testing.assert_close(ref.data, held, rtol=0, atol=0)
    g = load_model("gmm2d")  # an exact model: its own samples, the same every time
    a, b = DataReference(g), DataReference(g, n=300)
    assert not a.is_digits and a.data.shape == (2000, 2) and b.data.shape == (300, 2)
    torch.testing.assert_close(DataReference(g).data, a.data, rtol=0, atol=0)
    assert float(a.data.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.05)  # the ring of radius 2
    assert DataReference(Other(VE(0.002, 80.0))).data is None  # anything else: no data


def test_digits_features_are_computed_once(digits):
    f = digits.features()
    assert f is digits.features() and f.dtype == torch.float64 and f.shape[0] == digits.data.shape[0]


def test_names_and_order_are_kept(ring):
    names = ["recall", "sw", "rmse_ref", "precision", "fd"]
    x = ring.data[:50]
    assert list(compute_metrics(names, x, x, ring)) == names
    assert list(compute_metrics(["precision"], x, x, ring)) == ["precision"]  # recall computed but not returned


def test_the_data_against_itself_scores_perfectly(ring, digits):
    for ref in (ring, digits):
        out = compute_metrics(list(METRICS), ref.data, None, ref)
        assert math.isnan(out["rmse_ref"])  # no reference solutions given
        assert out["fd"] == pytest.approx(0, abs=1e-6) and out["fd_pixels"] == pytest.approx(0, abs=1e-6)
        assert out["sw"] == pytest.approx(0, abs=1e-12) and out["precision"] == out["recall"] == 1.0


def test_a_shift_costs_its_squared_length_in_fd_and_its_length_over_sqrt_d_in_sw(ring):
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |c| = 0.5
    out = compute_metrics(["fd", "fd_pixels", "sw"], ring.data + c, None, ring)
    assert out["fd"] == out["fd_pixels"] == pytest.approx(0.25, rel=1e-6)  # same covariance: |c|^2
    assert out["sw"] == pytest.approx(0.5 / math.sqrt(2), rel=0.1)  # E[(theta . c)^2] = |c|^2 / D
    assert compute_metrics(["sw"], ring.data + c, None, ring) == {"sw": out["sw"]}  # fixed directions


def test_rmse_ref_is_the_rms_distance_to_the_reference(ring):
    ref = ring.data[:40]
    out = compute_metrics(["rmse_ref"], ref + 0.2, ref, ring)
    assert out["rmse_ref"] == pytest.approx(0.2, rel=1e-9)
    none = DataReference(Other(VE(0.002, 80.0)))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert compute_metrics(["rmse_ref"], x, x, none) == {"rmse_ref": 0.0}  # needs no data reference


def test_no_data_reference_gives_nan_for_distribution_metrics():
    none = DataReference(Other(VE(0.002, 80.0)))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = compute_metrics(list(METRICS), x, x + 0.1, none)
    assert out["rmse_ref"] == pytest.approx(0.1, rel=1e-9)
    assert all(math.isnan(out[m]) for m in DISTRIBUTION)


def test_digits_fd_is_in_feature_space_and_fd_pixels_in_pixel_space(digits):
    x = digits.data[:120]
    out = compute_metrics(["fd", "fd_pixels"], x, None, digits)
    assert out["fd"] == pytest.approx(float(fd(digits_features(x.float()).double(), digits.features())), rel=1e-9)
    assert out["fd_pixels"] == pytest.approx(float(fd(x.reshape(120, -1), digits.data.reshape(-1, 64))), rel=1e-9)
    assert out["fd"] != pytest.approx(out["fd_pixels"], rel=1e-3)


def test_unknown_metric_is_refused(ring):
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['fid'\]; choose from rmse_ref, fd"):
        compute_metrics(["fd", "fid"], ring.data[:10], None, ring)
    no_data = DataReference.__new__(DataReference)  # a model without held-out data: still refused, not NaN
    no_data.data, no_data.is_digits, no_data._features = None, False, None
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["fid"], ring.data[:10], None, no_data)
