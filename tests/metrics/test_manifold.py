"""k-NN precision and recall: identical, disjoint and partly overlapping sets, and a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.metrics import PrecisionRecall, precision_recall


def _oracle(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019) by brute force with scipy's cdist."""
    from scipy.spatial.distance import cdist

    def radii(x):
        return np.sort(cdist(x, x), axis=1)[:, k]  # column 0 is the point itself

    precision = (cdist(fake, real) <= radii(real)[None]).any(axis=1).mean()
    recall = (cdist(real, fake) <= radii(fake)[None]).any(axis=1).mean()
    return float(precision), float(recall)


def _cluster(n: int, center: float, dim: int, gen: torch.Generator) -> torch.Tensor:
    return center + torch.rand(n, dim, generator=gen, dtype=torch.float64)


def test_identical_sets_give_one():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == PrecisionRecall(1.0, 1.0)


def test_far_apart_sets_give_zero():
    gen = torch.Generator().manual_seed(1)
    assert precision_recall(_cluster(50, 0.0, 3, gen), _cluster(70, 1e3, 3, gen)) == (0.0, 0.0)


def test_partial_overlap_gives_the_known_fractions():
    # real = A (30) + B (70), fake = copies of A (30) + C (20); A, B, C are unit cubes 1000 apart,
    # so balls (radius <= sqrt(3)) never reach another cluster. Each copy of A sits at the centre of
    # a real ball and vice versa: precision = 30 / 50, recall = 30 / 100.
    gen = torch.Generator().manual_seed(2)
    a, b, c = _cluster(30, 0.0, 3, gen), _cluster(70, 1e3, 3, gen), _cluster(20, -1e3, 3, gen)
    real = torch.cat([a, b])[torch.randperm(100, generator=gen)]
    fake = torch.cat([c, a.clone()])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(30 / 50, abs=1e-12)
    assert recall == pytest.approx(30 / 100, abs=1e-12)


@pytest.mark.parametrize(("k", "chunk_size"), [(1, None), (3, 7), (5, 1), (3, 1000)])
def test_matches_brute_force_oracle(k, chunk_size):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(120, 4))
    fake = rng.normal(size=(90, 4)) * 1.3 + 0.4
    expected = _oracle(real, fake, k)
    assert expected[0] not in (0.0, 1.0) and expected[1] not in (0.0, 1.0)
    got = precision_recall(torch.from_numpy(real), fake, k=k, chunk_size=chunk_size)
    assert got == pytest.approx(expected, abs=1e-12)


def test_translation_far_from_origin_keeps_the_answer():
    # Centring before |a|^2 + |b|^2 - 2ab keeps distances exact enough for data far from 0.
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(80, 3)), rng.normal(size=(60, 3)) + 0.5
    expected = _oracle(real, fake, 3)
    assert precision_recall(real + 1e6, fake + 1e6) == pytest.approx(expected, abs=1e-12)


def test_recall_grows_when_the_fake_set_covers_more_of_the_real_one():
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(400, 2, generator=gen)
    narrow = 0.3 * torch.randn(400, 2, generator=gen)
    full = torch.randn(400, 2, generator=gen)
    p_narrow, r_narrow = precision_recall(real, narrow)
    p_full, r_full = precision_recall(real, full)
    assert p_narrow > 0.9 and r_narrow < 0.5 < r_full


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 3, "real": torch.zeros(3, 2)}, "k must be smaller than the number of real samples"),
        ({"k": 5, "fake": torch.zeros(5, 2)}, r"got k=5 with 5 fake samples"),
        ({"k": 0}, "k must be an int >= 1, got 0"),
        ({"k": 2.0}, "k must be an int >= 1"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1 or None, got 0"),
        ({"fake": torch.zeros(10, 3)}, "same feature dimension"),
        ({"real": torch.zeros(10, 2, 1)}, r"\[N\] or \[N, D\]"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"real": torch.randn(10, 2), "fake": torch.randn(10, 2), "k": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        precision_recall(**args)
