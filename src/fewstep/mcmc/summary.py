"""One run's numbers as a JSON-ready dict: ESS, R-hat, acceptance, evaluation counts, distances to the truth."""

from __future__ import annotations

import math

import numpy as np
import torch

from fewstep.mcmc.diagnostics import ess_bulk, ess_tail, rhat
from fewstep.mcmc.distances import mmd2, mode_weight_error, mode_weights, sliced_wasserstein


def _stats(v: np.ndarray) -> dict:
    return {"min": float(np.min(v)), "median": float(np.median(v)), "max": float(np.max(v))}


def summarize(result, target, reference: torch.Tensor | None = None) -> dict:
    """ESS (bulk and tail, per coordinate: min/median/max), R-hat, acceptance, evaluations per chain, and with
    ``reference`` (exact samples) the MMD^2, sliced W2 and, for a mixture, the recovered mode weights."""
    n = result.n_recorded
    draws = result.draws[:, :n]
    out = {
        "sampler": result.sampler,
        "target": target.info(),
        "chains": int(draws.shape[0]),
        "draws": n,
        "warmup": result.warmup,
        "seeds": result.seeds,
        "accept_rate": float(result.accept_rate.mean()) if n else math.nan,
        "n_density": int(result.n_density.sum()),
        "n_grad": int(result.n_grad.sum()),
        "n_density_sampling": int((result.n_density - result.n_density_warmup).sum()),
        "n_grad_sampling": int((result.n_grad - result.n_grad_warmup).sum()),
    }
    for key in ("step_size", "evals_per_draw", "window"):
        if key in result.stats:
            out[key] = [float(v) for v in result.stats[key]]
    if "divergent" in result.stats:
        out["divergences"] = int(result.stats["divergent"][:, :n].sum())
        out["mean_tree_depth"] = float(result.stats["tree_depth"][:, :n].double().mean())
    if n >= 4:
        bulk, tail, r = ess_bulk(draws), ess_tail(draws), rhat(draws)
        out["ess_bulk"], out["ess_tail"], out["rhat"] = _stats(bulk), _stats(tail), _stats(r)
        cost = out["n_grad_sampling"] or out["n_density_sampling"]
        out["min_ess_bulk_per_evaluation"] = float(np.min(bulk)) / cost if cost else None
    if reference is not None and n >= 2:
        out["mmd2"] = mmd2(draws, reference)
        out["sliced_w2"] = sliced_wasserstein(draws, reference)
        if hasattr(target, "assign"):
            out["mode_weights"] = [float(w) for w in mode_weights(target, draws)]
            out["true_mode_weights"] = [float(w) for w in target.weights]
            out["mode_weight_error"] = mode_weight_error(target, draws)
    return out
