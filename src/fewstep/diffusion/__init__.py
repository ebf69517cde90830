"""Diffusion and flow sampling: the denoiser contract, adapters, schedules, solvers and the driver.

``from_diffusers`` reads a diffusers model and scheduler config as plain objects; importing this package never
imports diffusers.
"""

from fewstep.diffusion.from_diffusers import from_diffusers

__all__ = ["from_diffusers"]
