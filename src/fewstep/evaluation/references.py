"""``rmse_ref``: distance to a high-accuracy reference solution of the same ODE from the same noise.

References come from the adaptive float64 solver in ``fewstep.diffusion.reference``, integrated
from the start sigma down to the model's ``sigma_min`` and closed by ``x = D(x, sigma_min)``: the
same final step every grid ending in 0 takes, so ``rmse_ref`` measures the discretisation error
on the model's own range (a trained net is never asked about sigmas below what it learned). Each is
computed twice, at ``rtol`` and ``rtol / 2``; the difference (the tolerance check) is stored with
it. Tuning, which only needs references far more accurate than the few-step errors it compares, asks
for a looser ``rtol`` and re-solves only the first ``check`` seeds for the tolerance check. They are
cached on disk, keyed by the model's identity, the seeds, the sigma range and the tolerances, under
``$FEWSTEP_CACHE`` (default ``~/.cache/fewstep``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from fewstep.cache import atomic_write_bytes, cache_dir
from fewstep.diffusion.denoiser import model_hash
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.reference import reference_solution
from fewstep.metrics.paired import rmse


def reference_path(model, seeds: Sequence[int], *, sigma_max: float | None = None, rtol: float = 1e-6,
                   check: int | None = None) -> Path:
    """Where ``reference_samples`` caches the references of these arguments (the file may not exist yet)."""
    if check is not None and (isinstance(check, bool) or not isinstance(check, int) or check < 1):
        raise ValueError(f"check must be None (every seed) or a positive number of seeds; got {check!r}")
    top = float(model.sigma_max if sigma_max is None else sigma_max)
    parts = [model_hash(model), [int(s) for s in seeds], top, float(model.sigma_min), rtol]
    key = hashlib.sha256(json.dumps(parts + ([] if check is None else [check])).encode()).hexdigest()[:24]
    return cache_dir() / "reference" / f"{key}.pt"


def reference_samples(model, seeds: Sequence[int], *, sigma_max: float | None = None, rtol: float = 1e-6,
                      use_cache: bool = True, check: int | None = None,
                      progress: bool = False) -> tuple[torch.Tensor, float]:
    """The reference ODE solutions for ``seeds`` (noise as ``fewstep.sample`` draws it) and the
    tolerance check: the RMS difference between solutions at ``rtol`` and ``rtol / 2``.

    ``check=None`` solves every seed at both tolerances and returns the ``rtol / 2`` solutions;
    ``check=k`` solves all seeds at ``rtol`` (returned) and only the first ``k`` again at ``rtol / 2``
    for the check (about half the cost). ``progress`` shows a bar (with the time left) while they are
    computed."""
    top = float(model.sigma_max if sigma_max is None else sigma_max)
    seeds = [int(s) for s in seeds]
    path = reference_path(model, seeds, sigma_max=top, rtol=rtol, check=check)
    key = _entry_key(model, seeds, top, rtol, check)
    if use_cache and path.exists():
        cached = _read_entry(path, key, (len(seeds), *model.shape))
        if cached is not None:
            return cached
    noise = seeded_noise(seeds, model.shape, dtype=torch.float64)
    x_T = noise if math.isinf(top) else top * noise
    end = float(model.sigma_min)
    k = len(seeds) if check is None else min(check, len(seeds))
    with _bar(progress, f"references of {len(seeds)} seeds (rtol {rtol:g})", [len(seeds), k]) as phase:
        ref = reference_solution(model, x_T, top, rtol=rtol, atol=rtol * 1e-2, sigma_end=end, progress=phase(0))
        half = reference_solution(model, x_T[:k], top, rtol=rtol / 2, atol=rtol * 5e-3, sigma_end=end,
                                  progress=phase(1))
    tol_check = float((ref[:k] - half).pow(2).mean().sqrt())
    out = half if check is None else ref
    if use_cache:
        buffer = io.BytesIO()
        torch.save({"x": out, "tol_check": tol_check, "key": key, "digest": _digest(out, tol_check)}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return out, tol_check


def _entry_key(model, seeds: list[int], top: float, rtol: float, check: int | None) -> str:
    """What a cache entry must have been computed for (stored inside it and compared on every read)."""
    return json.dumps([model_hash(model), seeds, top, float(model.sigma_min), rtol, check])


def _digest(x: torch.Tensor, tol_check: float) -> str:
    return hashlib.sha256(x.detach().cpu().double().contiguous().numpy().tobytes() + repr(tol_check).encode()
                          ).hexdigest()


def _read_entry(path: Path, key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, float] | None:
    """The cached references if the entry is intact and for these arguments; else ``None``, with a warning
    (the caller recomputes and overwrites it)."""
    try:
        blob = torch.load(path, weights_only=True)
        x, tol_check = blob["x"], float(blob["tol_check"])
        problem = ("it was computed for other arguments" if blob.get("key") != key else
                   "its values do not match their checksum" if blob.get("digest") != _digest(x, tol_check) else
                   f"it holds shape {tuple(x.shape)}, not {shape}" if tuple(x.shape) != shape else None)
    except Exception as exc:  # truncated, empty or not a torch file: any reading error means recompute
        problem = f"it cannot be read ({type(exc).__name__})"
    if problem is None:
        return x, tol_check
    warnings.warn(f"the cached reference {path} is not usable ({problem}); recomputing it", stacklevel=3)
    return None


@contextlib.contextmanager
def _bar(enabled: bool, desc: str, weights: list[int]):
    """A tqdm bar over consecutive solves, each weighted by its batch size; yields ``phase(i)``, the
    progress callback of solve ``i`` (``None`` when disabled)."""
    if not enabled:
        yield lambda i: None
        return
    total = sum(weights)
    with tqdm(total=1000, desc=desc, leave=False, bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]") as bar:
        def phase(i: int):
            start, width = sum(weights[:i]) / total, weights[i] / total

            def update(frac: float) -> None:
                bar.update(max(0, round(1000 * (start + width * frac)) - bar.n))
            return update
        yield phase


def rmse_ref(model, samples: torch.Tensor, seeds: Sequence[int], *, sigma_max: float | None = None,
             rtol: float = 1e-6) -> float:
    """RMSE between ``samples`` (drawn from ``seeds``) and the reference solutions for those seeds."""
    ref, _ = reference_samples(model, seeds, sigma_max=sigma_max, rtol=rtol)
    return rmse(samples, ref.to(samples.device))
