"""Fit the `digits-gmm` exact model: a 16-component full-covariance Gaussian mixture on
scikit-learn's 8x8 digits scaled to [-1, 1]. Deterministic (fixed seed); about 5 s on 2 cores.

    .venv/bin/python scripts/fit_digits_gmm.py
"""

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.mixture import GaussianMixture

OUT = Path(__file__).resolve().parents[1] / "src/fewstep/models/data/digits_gmm.safetensors"

t0 = time.time()
x = load_digits().data.astype(np.float64) / 8.0 - 1.0
gmm = GaussianMixture(n_components=16, covariance_type="full", reg_covar=1e-3, random_state=0, max_iter=500)
gmm.fit(x)
tensors = {
    "weights": torch.from_numpy(gmm.weights_).float(),
    "means": torch.from_numpy(gmm.means_).float(),
    "covariances": torch.from_numpy(gmm.covariances_).float(),
}
save_file(tensors, str(OUT))
print(f"wrote {OUT} (avg log-likelihood {gmm.score(x):.2f}) in {time.time() - t0:.1f} s")
