"""Quality scoring of samples as the benchmark and the tuners measure it: distribution metrics against held-out
data (the digits held-out split, or samples of an exact model) and ``rmse_ref`` against cached references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fewstep import metrics as M
from fewstep.models.digits_data import digits_data
from fewstep.models.exact import ExactDenoiser

__all__ = ["METRICS", "DataReference", "compute_metrics"]

METRICS = ("rmse_ref", "fd", "fd_pixels", "sw", "precision", "recall")


class DataReference:
    """Held-out data for distribution metrics: the digits held-out split, or exact-model samples."""

    def __init__(self, model, n: int = 2000):
        self.is_digits = model.shape == (1, 8, 8)
        if self.is_digits:
            self.data = digits_data("heldout")[0].double().reshape(-1, 1, 8, 8)
        elif isinstance(model, ExactDenoiser):
            self.data = model.sample_data(n, torch.Generator().manual_seed(10**6))
        else:
            self.data = None
        self._features = None

    def features(self):
        if self._features is None:
            self._features = M.digits_features(self.data.float()).double()
        return self._features


def compute_metrics(names: Sequence[str], samples: torch.Tensor, ref_x: torch.Tensor | None,
                    data: DataReference) -> dict[str, float]:
    """The metrics ``names`` of ``samples``; ``ref_x`` are their reference solutions (for ``rmse_ref``)."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    out: dict[str, float] = {}
    flat = samples.double().reshape(samples.shape[0], -1)
    for name in names:
        if name == "rmse_ref":
            out[name] = M.rmse(samples, ref_x) if ref_x is not None else math.nan
        elif data.data is None:
            out[name] = math.nan
        elif name == "fd":
            out[name] = (float(M.fd(M.digits_features(samples.float()).double(), data.features())) if data.is_digits
                         else float(M.fd(flat, data.data.reshape(data.data.shape[0], -1))))
        elif name == "fd_pixels":
            out[name] = float(M.fd(flat, data.data.reshape(data.data.shape[0], -1)))
        elif name == "sw":
            out[name] = float(M.sw(flat, data.data.reshape(data.data.shape[0], -1),
                                   generator=torch.Generator().manual_seed(0)))
        elif name in ("precision", "recall"):
            if "precision" not in out:
                p, r = M.precision_recall(data.data.reshape(data.data.shape[0], -1), flat, k=3)
                out["precision"], out["recall"] = float(p), float(r)
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return {k: out[k] for k in names}
