"""fewstep.diffusion.scheduler_config reads a diffusers scheduler config as a plain mapping (no diffusers needed):
each sampler's fewstep solver, its class defaults completing the config, and every key honoured or named.
The same reading behind FewstepScheduler.from_config: tests/integrations/test_scheduler_config.py."""

import importlib
import subprocess
import sys

from fewstep.diffusion import scheduler_config
from fewstep.diffusion.scheduler_config import is_flow_config, read_scheduler_config, source_solver

# DPMSolverMultistepScheduler.__init__'s defaults for the keys used here (diffusers 0.42)
DPM_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "solver_order": 2,
                "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True,
                "use_karras_sigmas": False, "timestep_spacing": "linspace", "steps_offset": 0}


def test_dpm_solver_config_maps_to_its_solver_with_its_class_defaults():
    cfg = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear", "use_karras_sigmas": True}
    read = read_scheduler_config(cfg, DPM_DEFAULTS)
    assert (read.solver, read.options) == ("dpmpp_2m", {"solver_type": "midpoint", "lower_order_final": True})
    assert read.notes == {}  # "DPM++ 2M Karras": every key honoured, the grid by the source's own set_timesteps
    assert read.source["use_karras_sigmas"] is True and read.source["timestep_spacing"] == "linspace"
    assert read.model["beta_schedule"] == "scaled_linear" and read.model["timestep_spacing"] == "linspace"


def test_keys_that_cannot_be_honoured_are_named_with_the_reason():
    cfg = {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "solver_order": 3,
           "use_karras_sigmas": True, "my_key": 1}
    read = read_scheduler_config(cfg, DPM_DEFAULTS, schedule="karras")
    assert read.solver == "dpmpp_3m_sde"
    assert set(read.notes) == {"solver_order", "use_karras_sigmas", "my_key"}
    assert "opposite sign" in read.notes["solver_order"] and "not a key fewstep knows" in read.notes["my_key"]
    other = read_scheduler_config(cfg, DPM_DEFAULTS, solver="unipc")
    assert other.solver == "unipc" and {"algorithm_type", "solver_order"} <= set(other.notes)


def test_samplers_without_a_fewstep_equivalent_and_flow_configs():
    assert source_solver("PNDMScheduler", {}).solver is None
    read = read_scheduler_config({"_class_name": "PNDMScheduler"}, {"skip_prk_steps": False}, fallback="dpmpp_2m")
    assert "solver 'dpmpp_2m' runs" in read.notes["_class_name"]
    assert source_solver("DDPMScheduler", {"variance_type": "learned"}).refused.keys() == {"variance_type"}
    assert is_flow_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}) and is_flow_config({"shift": 3.0})
    assert not is_flow_config({"shift": 3.0, "beta_schedule": "linear"})


def test_from_diffusers_re_exports_the_config_reading_and_nothing_imports_diffusers():
    # the module: fewstep.diffusion's attribute of that name is the function
    from_diffusers_module = importlib.import_module("fewstep.diffusion.from_diffusers")
    for name in scheduler_config.__all__:
        assert getattr(from_diffusers_module, name) is getattr(scheduler_config, name)
    code = "import sys, fewstep.diffusion.scheduler_config; raise SystemExit('diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
