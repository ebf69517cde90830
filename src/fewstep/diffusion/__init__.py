"""Diffusion and flow sampling: the denoiser contract, adapters, schedules, solvers and the driver.

``from_diffusers`` is re-exported lazily, so importing this package never imports diffusers.
"""


def __getattr__(name: str):
    if name == "from_diffusers":
        from fewstep.diffusion.from_diffusers import from_diffusers

        return from_diffusers
    raise AttributeError(f"module 'fewstep.diffusion' has no attribute {name!r}")
