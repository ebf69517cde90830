"""Peers' own samplers (diffusers, k-diffusion) on the same wrapped model, noise and grid as fewstep.

Each peer sampler runs on the grid its fewstep equivalent (or nearest solver) would use for the
same NFE budget; the NFE it actually used is counted, not assumed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch


def peer_rows(spec, progress: bool = True) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from fewstep.bench.distributed import is_main
    from fewstep.bench.harness import SIGMA_CAP, DataReference, compute_metrics, device_name, versions
    from fewstep.diffusion.denoiser import CountingDenoiser
    from fewstep.diffusion.sampling import plan_steps, seeded_noise
    from fewstep.diffusion.schedules import get_sigmas
    from fewstep.integrations.peers import PEERS, run_peer
    from fewstep.metrics.reference import reference_samples
    from fewstep.models import load_model

    if not is_main():
        return []
    rows: list[dict[str, Any]] = []
    todo = [(m, p, s, sc, n) for m in spec.models for p in spec.peers for s in PEERS[p]
            for sc in spec.schedules for n in spec.nfes]
    common = {"device": device_name(), "versions": versions(), "seeds": len(spec.seeds)}
    loaded: dict[str, tuple] = {}
    for model_name, peer, sampler, schedule, nfe in tqdm(todo, disable=not progress, desc="peers", unit="cfg"):
        if model_name not in loaded:
            m = CountingDenoiser(load_model(model_name))
            loaded[model_name] = (m, DataReference(m.inner), {})
        model, data, refs = loaded[model_name]
        info = PEERS[peer][sampler]
        label = f"{peer}:{sampler}"
        row = {"model": model_name, "solver": label, "label": label, "schedule": schedule, "nfe_budget": nfe,
               "source": peer, "fewstep_equivalent": info.fewstep, **common}
        top = model.sigma_max if math.isfinite(model.sigma_max) else SIGMA_CAP
        try:
            n = plan_steps(info.fewstep or info.nearest, nfe)
            sigmas = get_sigmas(schedule, n, model, sigma_max=top if top != model.sigma_max else None)
            x_T = float(sigmas[0]) * seeded_noise(spec.seeds, model.shape, dtype=torch.float64)
            with torch.no_grad():
                run_peer(peer, sampler, model, x_T[:2], sigmas)  # warm-up pass (imports, caches)
            model.reset()
            t0 = time.perf_counter()
            with torch.no_grad():
                x = run_peer(peer, sampler, model, x_T, sigmas)
            row["wall_s"] = time.perf_counter() - t0
            row["nfe"] = model.calls
        except Exception as exc:  # a peer that cannot run this configuration is reported, not hidden
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        if "rmse_ref" in spec.metrics and top not in refs:
            refs[top] = reference_samples(model.inner, spec.seeds, sigma_max=top, rtol=spec.extra.get("rtol", 1e-6))[0]
        row.update(compute_metrics(spec.metrics, x.to(torch.float64), refs.get(top), data))
        rows.append(row)
    return rows
