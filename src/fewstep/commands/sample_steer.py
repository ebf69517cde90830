"""``fewstep sample --reward NAME[:options] --steer METHOD --particles K``: steering on the command line.

A thin shell over ``fewstep.steer`` (docs/steering.md): the options, their checks before any model evaluation, one
chunk of seeds through the chosen method, and the reward statistics of the written samples. Nothing here imports
torch at module level, so a malformed command line is refused before any heavy import.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fewstep.commands.args import float_in, int_in, name

# The command line's limits; MAX_PARTICLES equals the library's (tests/commands/test_sample_steer.py checks it).
MAX_PARTICLES = 4096
MAX_TEMPERATURE = 1e6
STEER_METHODS = ("best_of_n", "noise_search", "path_search", "fk", "svdd")  # checked against fewstep.steer.METHODS
TEMPERATURE_METHODS = ("fk", "svdd")


def add_arguments(p) -> None:
    """The steering options of ``fewstep sample``."""
    p.add_argument("--reward", type=name, default=None, metavar="NAME[:OPTIONS]",
                   help="steer towards a reward (with --steer): digit:3 (the classifier's log p(3 | x)), confidence, "
                        "stroke, linear:A1,A2,... or component:K (a Gaussian-mixture model's component)")
    p.add_argument("--steer", type=name, default=None, metavar="METHOD",
                   help=f"steering method (with --reward): {', '.join(STEER_METHODS)}")
    p.add_argument("--particles", type=int_in(1, MAX_PARTICLES), default=None,
                   help=f"particles (fk, svdd), samples (best_of_n), neighbours per round (noise_search) or kept paths "
                        f"(path_search) per sample, 1..{MAX_PARTICLES:,}; the cost is about that many times the "
                        "base sampler's (default: 4)")
    p.add_argument("--temperature", type=float_in(0, MAX_TEMPERATURE), default=None,
                   help=f"temperature of the tilt p(x) exp(r(x) / T) for fk (> 0, default 1) and svdd (0 = argmax, "
                        f"the default), at most {MAX_TEMPERATURE:g}")


@dataclass
class Steering:
    """The checked steering options of one ``fewstep sample`` run."""

    method: str
    spec: str
    particles: int
    temperature: float | None
    reward: Any = None  # a fewstep.steer.Reward, made by bind()
    stats: tuple[float, ...] = ()  # mean, std, min, max reward and evaluations per sample, made by record()

    def bind(self, model) -> None:
        """Build the reward for ``model`` (the loaded model, before any wrapper) and try it on one zero sample, so
        that a reward that does not fit the model is refused before sampling."""
        import torch

        from fewstep.steer import RewardError, make_reward

        what = f"--reward {self.spec} does not fit --model {getattr(model, 'name', model)}"
        try:
            self.reward = make_reward(self.spec, model)
        except TypeError as exc:  # a component reward for a model that is not a Gaussian mixture
            raise ValueError(f"{what}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"--reward {self.spec}: {exc}") from None
        try:
            self.reward(torch.zeros(1, *model.shape), "a trial sample of the model's shape")
        except RewardError as exc:
            raise ValueError(f"{what}: {exc}") from None

    def run(self, denoiser, seeds: list[int], cond, plan_kw: dict[str, Any]):
        """One chunk of seeds through the method; its samples ``[len(seeds), *shape]``."""
        from fewstep.steer import METHODS

        fn, info = METHODS[self.method]
        kw = {info["size"]: self.particles}
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        return fn(denoiser, self.reward, seeds=seeds, cond=cond, solver=plan_kw["solver"], nfe=plan_kw["nfe"],
                  schedule=plan_kw["schedule"], **kw).samples

    def record(self, samples, evaluations: float) -> dict[str, Any]:
        """What the ``.npz`` holds beside the samples: each sample's reward, the method, its size and the
        evaluations per sample; keeps the reward statistics for ``report``."""
        import numpy as np
        import torch

        x = torch.from_numpy(samples)
        rewards = torch.cat([self.reward(x[i:i + 4096], "the written samples")  # in chunks: memory stays bounded
                             for i in range(0, x.shape[0], 4096)]).numpy()
        self.stats = (float(rewards.mean()), float(rewards.std()), float(rewards.min()), float(rewards.max()),
                      float(evaluations))
        return {"rewards": rewards, "reward": self.spec, "steer": self.method, "particles": self.particles,
                "temperature": np.nan if self.temperature is None else self.temperature, "evaluations": evaluations}

    def report(self, n: int, model: str, solver: str, calls: int, nfe: int, seconds: float) -> str:
        """The summary line of a steered run: method, cost and the reward statistics of the written samples."""
        mean, std, lo, hi, evaluations = self.stats
        return (f"steered {n} x {model} towards {self.spec} with {self.describe(solver)}: {calls} model calls per "
                f"batch (NFE budget {nfe} per particle), {evaluations:g} evaluations per sample, in {seconds:.2f} s\n"
                f"reward {self.spec}: mean {mean:.4g}, std {std:.4g}, min {lo:.4g}, max {hi:.4g} over {n} samples")

    def describe(self, solver: str) -> str:
        size = {"best_of_n": "samples", "noise_search": "neighbours per round", "path_search": "paths kept"}
        temp = "" if self.temperature is None else f", temperature {self.temperature:g}"
        return f"{self.method} ({self.particles} {size.get(self.method, 'particles')}{temp}), base sampler {solver}"


def check(args, default: str) -> Steering | None:
    """The steering options, checked against each other and the rest of the command line (no model is loaded);
    fills in the method's default solver (``default``: the command's, for methods that have none). ``None`` when
    the run does not steer."""
    if args.steer is None and args.reward is None:
        given = [flag for flag, v in (("--particles", args.particles), ("--temperature", args.temperature))
                 if v is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} --steer METHOD and "
                             "--reward NAME[:options]")
        return None
    if args.steer is None:
        raise ValueError(f"--reward needs --steer METHOD: one of {', '.join(STEER_METHODS)}")
    if args.steer not in STEER_METHODS:
        raise ValueError(f"unknown --steer {args.steer!r}; choose one of {', '.join(STEER_METHODS)}")
    if args.reward is None:
        raise ValueError("--steer needs --reward NAME[:options]: digit:3, confidence, stroke, linear:A1,A2,... or "
                         "component:K")
    if args.temperature is not None and args.steer not in TEMPERATURE_METHODS:
        raise ValueError(f"--temperature applies to {' and '.join(TEMPERATURE_METHODS)}; {args.steer} keeps the best "
                         "candidates by reward and has none")
    if args.temperature == 0 and args.steer == "fk":
        raise ValueError("--temperature must be > 0 for fk (the tilt exp(r(x) / T)); 0 (argmax) is for svdd")
    for flag, value, why in (("--recipe", args.recipe, "a recipe fixes its own sigmas"),
                             ("--cads", args.cads or None, "CADS keys its noise by seed, not by particle")):
        if value is not None:
            raise ValueError(f"--steer cannot be combined with {flag} ({why}); leave it out")
    if args.model is not None and args.model.endswith(".json"):
        raise ValueError("--steer cannot be combined with a distilled student (--model PATH.json): it samples with "
                         "the grid it was trained for; steer a bundled model")
    if args.solver is None:
        args.solver = default_solver(args.steer) or default
    return Steering(args.steer, args.reward, 4 if args.particles is None else args.particles, args.temperature)


def default_solver(method: str) -> str | None:
    """The method's own default solver (``None``: the model's default, as ``fewstep sample``), read from its
    signature so that the library keeps the one default."""
    from fewstep.steer import METHODS

    return inspect.signature(METHODS[method][0]).parameters["solver"].default
