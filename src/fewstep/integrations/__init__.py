"""Interop with diffusers pipelines and k-diffusion-style callers, and runs of their own samplers.

- ``fewstep.integrations.diffusers.FewstepScheduler``: fewstep solvers behind diffusers' scheduler protocol.
- ``fewstep.integrations.kdiffusion``: ``sample_<solver>(model, x, sigmas, extra_args, callback, disable)``.

Running diffusers' and k-diffusion's own samplers on a fewstep model (for cross-checks and ``fewstep bench
--peers``) is the benchmark's job: ``fewstep.bench.peers``.

Submodules are imported on use; nothing here imports diffusers.
"""
