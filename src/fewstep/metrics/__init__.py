"""Sample-quality metrics: pure functions over samples or features; feature extractors kept apart.

- ``fd``, ``fd_pixels``, ``fd_digits``: Fréchet distance of Gaussian fits (FID, arXiv 1706.08500).
- ``sw``: sliced Wasserstein-2 distance (Bonneel et al. 2015).
- ``precision_recall``: k-NN manifold precision and recall (arXiv 1904.06991).
- ``rmse``: root-mean-square error between paired samples.
- ``digits_classifier``, ``digits_features``, ``digits_predict``: the bundled 8x8 digits classifier
  (``fewstep.metrics.features``), whose penultimate layer is the feature space of ``fd_digits``.

Every metric takes torch tensors or numpy arrays and computes in float64. Nothing here knows about diffusion:
``rmse_ref``, which needs a model's reference ODE solutions, is in ``fewstep.evaluation``.
"""

from __future__ import annotations

from fewstep.metrics.features import digits_classifier, digits_features, digits_predict
from fewstep.metrics.frechet import fd, fd_digits, fd_pixels
from fewstep.metrics.manifold import PrecisionRecall, precision_recall
from fewstep.metrics.paired import rmse
from fewstep.metrics.sliced import sw

__all__ = [
    "fd",
    "fd_pixels",
    "fd_digits",
    "sw",
    "precision_recall",
    "PrecisionRecall",
    "rmse",
    "digits_classifier",
    "digits_features",
    "digits_predict",
]
