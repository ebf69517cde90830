"""Evaluation: cached high-accuracy reference solutions and the quality scores computed against them.

- ``reference_samples``, ``rmse_ref``: adaptive float64 solutions of a model's ODE from the seeds' noise,
  cached on disk (``fewstep.evaluation.references``).
- ``DataReference``, ``compute_metrics``: held-out data and every metric ``fewstep bench`` reports
  (``fewstep.evaluation.quality``).

It sits above the diffusion driver and the model zoo and below tuning and the benchmark, which both score
samples with it.
"""

from fewstep.evaluation.quality import METRICS, DataReference, compute_metrics
from fewstep.evaluation.references import cache_dir, reference_path, reference_samples, rmse_ref

__all__ = ["METRICS", "DataReference", "cache_dir", "compute_metrics", "reference_path", "reference_samples",
           "rmse_ref"]
