"""Distilled students as first-class models: a safetensors file of weights beside a small JSON record.

A student is a copy of its teacher's network, fine-tuned so that a few-step sampler on its own grid lands where the
teacher's ODE does (``fewstep.distill``: SFD, Zhou et al., arXiv 2409.19681; progressive distillation, Salimans &
Ho, arXiv 2202.00512; consistency distillation and training, Song et al., arXiv 2303.01469 and Song & Dhariwal,
arXiv 2310.14189; ReFlow, Liu et al., arXiv 2209.03003). The record says what it is: the teacher and the SHA-256 of
the teacher's weights, the method, the NFE (or, for a step-conditioned student, every NFE it was trained for) with
the sigma grid of each, the sampler, the training seed and options, and the SHA-256 of the student's weights, which
is checked before they are read (``fewstep._verify``).

``load_student(path)`` (also ``fewstep.load_model(path)``) returns a ``Student``: a ``Denoiser`` that samples
through the usual driver at its own NFE and grid: ``fewstep.sample(student)`` runs ``student.sampling``.

The network is rebuilt from the record: a bundled teacher's architecture (``fewstep.models.trained``), with a
step-count embedding for SFD-v (``StepDigitsUNet``), or a diffusers ``UNet2DModel`` from the config stored in the
record with the noise process from its scheduler config (``fewstep.diffusion.from_diffusers``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from fewstep._verify import ChecksumError, read_verified_bytes
from fewstep.cache import atomic_write_bytes
from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.from_diffusers import from_diffusers
from fewstep.models import trained
from fewstep.models._registry import register_model
from fewstep.models.nets import DigitsUNet, SinusoidalEmbedding, UNetConfig

__all__ = ["STUDENT_FORMAT", "METHODS", "StudentRecord", "Student", "StepDigitsUNet", "weights_digest",
           "teacher_digest", "save_student", "load_student", "is_student_path", "build_network", "check_teacher",
           "consistency_function"]

Tensor = torch.Tensor

STUDENT_FORMAT = "fewstep-student"
STUDENT_VERSION = 1
METHODS = ("sfd", "sfd-v", "progressive", "cd", "ct", "reflow", "shortcut", "sid")
# The student's sampler, as the methods train it, and the ``fewstep.sample`` keywords that run it: Euler in sigma
# (= DDIM); a consistency model's multistep sampler (Song et al., arXiv 2303.01469, Algorithm 1) jumps to the data,
# x = f(x, s), then noises it afresh to the next sigma, x + s' z: ancestral Euler with all of the step's noise fresh
# (eta = inf gives s_down = 0, s_up = s').
SOLVERS = {"euler": ("euler", {}), "consistency": ("euler_ancestral", {"eta": math.inf})}
MAX_RECORD_BYTES = 4 * 2**20  # a record is a few kB; the diffusers configs make it larger, never megabytes
DIFFUSERS = "diffusers"  # the teacher field of a student of a user's diffusers UNet2DModel


def consistency_function(d: Tensor, x: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float) -> Tensor:
    """The consistency model's boundary-condition parameterisation (Song et al., arXiv 2303.01469, Eq. 5 and
    Appendix C): ``f(x, s) = c_skip(s) x + c_out(s) F(x, s)`` with ``c_skip = sd^2 / ((s - eps)^2 + sd^2)`` and
    ``c_out = sd (s - eps) / sqrt(sd^2 + s^2)``, so that ``f(x, eps) = x`` exactly (``eps = sigma_min``).

    ``F`` is the raw output of EDM's preconditioning that the denoiser ``d = D(x, s)`` implies,
    ``F = (d - sd^2/(s^2 + sd^2) x) / (s sd / sqrt(s^2 + sd^2))`` (for an ``EDMPrecond`` network it is the network's
    output), so ``c_out F = ((s - eps)/s) (d - sd^2/(s^2 + sd^2) x)``: any denoiser becomes a consistency function,
    and at large ``s`` it is nearly the denoiser itself."""
    s = bcast(sigma, x)
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_skip_edm = sigma_data**2 / (s**2 + sigma_data**2)
    return c_skip * x + (s - sigma_min) / s * (d - c_skip_edm * x)


class StepDigitsUNet(DigitsUNet):
    """``DigitsUNet`` with a step-count condition for SFD-v (Zhou et al., arXiv 2409.19681, Sec. 4.3).

    The count ``steps`` (the NFE the sampler runs at) is embedded like time, by a sinusoidal embedding and a
    2-layer MLP, and added to the time embedding; the MLP's last layer starts at zero, so a fresh student computes
    exactly its teacher. (The paper's networks modulate every block with a second scale and shift from the step
    embedding; adding it to the time embedding, as ``fewstep.models.cond`` adds the class, reuses the blocks'
    own modulation.)
    """

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        e = config.emb_dim
        self.step = SinusoidalEmbedding(e, 100.0)  # counts 1..10 span about 100..1000, like the time input
        self.step_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        nn.init.zeros_(self.step_mlp[2].weight)
        nn.init.zeros_(self.step_mlp[2].bias)

    def forward(self, x: Tensor, t: Tensor, steps: int | None = None) -> Tensor:
        t = self.check_inputs(x, t)
        if steps is None:
            raise ValueError("a step-conditioned student needs the step count: cond={'steps': NFE}")
        n = torch.full((x.shape[0],), float(steps), dtype=x.dtype, device=x.device)
        emb = self.embed_time(t) + self.step_mlp(self.step(n).to(self.conv_in.weight.dtype))
        return self.trunk(x, emb)


@dataclass(frozen=True)
class StudentRecord:
    """What a student is (its JSON file). ``grids`` maps each NFE it samples at to its sigma grid (ending in 0);
    ``nfe`` is the default among them; ``diffusers`` holds ``{"unet": config, "scheduler": config}`` for a student
    of a user's diffusers model (``teacher == "diffusers"``); ``consistency`` holds ``{"sigma_min", "sigma_data"}``
    of a consistency model, whose network output goes through ``consistency_function``."""

    teacher: str
    teacher_sha256: str
    method: str
    nfe: int
    grids: dict[int, tuple[float, ...]]
    afs: bool
    seed: int
    weights: str
    weights_sha256: str
    solver: str = "euler"
    step_condition: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    diffusers: dict[str, Any] | None = None
    consistency: dict[str, float] | None = None
    format: str = STUDENT_FORMAT
    version: int = STUDENT_VERSION

    def __post_init__(self):
        if self.format != STUDENT_FORMAT or self.version != STUDENT_VERSION:
            raise ValueError(f"not a fewstep student record of version {STUDENT_VERSION}: format "
                             f"{self.format!r}, version {self.version!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown distillation method {self.method!r}; known: {', '.join(METHODS)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown student sampler {self.solver!r}; known: {', '.join(SOLVERS)}")
        if (self.method in ("cd", "ct")) != (self.consistency is not None):
            raise ValueError("a consistency model (method cd or ct) stores its 'consistency' parameters "
                             "{sigma_min, sigma_data}, and only it does")
        if self.consistency is not None:
            if set(self.consistency) != {"sigma_min", "sigma_data"} or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.consistency.values()):
                raise ValueError("the record's 'consistency' must be {\"sigma_min\": > 0, \"sigma_data\": > 0}; got "
                                 f"{self.consistency!r}")
        for key in ("teacher", "teacher_sha256", "weights", "weights_sha256"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"the student record's {key!r} must be a non-empty string")
        if Path(self.weights).name != self.weights:
            raise ValueError(f"the student's weights must be a file name beside its record; got {self.weights!r}")
        grids = {}
        for n, sigmas in dict(self.grids).items():
            n = int(n)
            s = tuple(float(v) for v in sigmas)
            steps = len(s) - 1
            if not (steps >= 1 and all(a > b for a, b in zip(s, s[1:])) and s[-1] == 0 and math.isfinite(s[0])):
                raise ValueError(f"the grid for NFE {n} must be finite sigmas decreasing to 0; got {list(s)}")
            if n != steps - int(self.afs):
                raise ValueError(f"the grid for NFE {n} has {steps} steps; with afs={self.afs} it needs "
                                 f"{n + int(self.afs)}")
            grids[n] = s
        if self.nfe not in grids:
            raise ValueError(f"the default NFE {self.nfe} has no grid; the record has {sorted(grids)}")
        if len(grids) > 1 and not (self.step_condition or self.method in ("cd", "ct", "reflow")):
            raise ValueError("only a step-conditioned, consistency or ReFlow student may hold grids for several NFEs")
        if (self.teacher == DIFFUSERS) != (self.diffusers is not None):
            raise ValueError("a student of a diffusers model stores its configs under 'diffusers', and only it does")
        object.__setattr__(self, "grids", dict(sorted(grids.items())))

    def to_json(self) -> str:
        d = asdict(self)
        d["grids"] = {str(k): list(v) for k, v in self.grids.items()}
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "the student record") -> StudentRecord:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != STUDENT_FORMAT:
            raise ValueError(f"{where} is not a fewstep student (its JSON has no \"format\": \"{STUDENT_FORMAT}\")")
        fields = cls.__dataclass_fields__
        required = {k for k, f in fields.items() if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = set(d) - set(fields), required - set(d)
        if unknown or missing:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}, missing field(s) {sorted(missing)}")
        return cls(**d)


def weights_digest(net: nn.Module) -> str:
    """The SHA-256 of ``net``'s float32 state dict as safetensors bytes (how a teacher without a weights file is
    identified)."""
    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    return hashlib.sha256(save_safetensors(state)).hexdigest()


def teacher_digest(teacher: Denoiser, net: nn.Module) -> str:
    """The teacher's weights SHA-256: its loader's (a bundled model's file digest), else ``weights_digest``."""
    return teacher.weights_sha256 or weights_digest(net)


def is_student_path(name: Any) -> bool:
    return isinstance(name, (str, Path)) and str(name).endswith(".json")


def build_network(record_or_teacher: StudentRecord | str, step_condition: bool = False,
                  diffusers: Mapping[str, Any] | None = None) -> tuple[nn.Module, Denoiser]:
    """A fresh network with the architecture of the student's teacher and the ``Denoiser`` around it."""
    if isinstance(record_or_teacher, StudentRecord):
        teacher, step_condition, diffusers = (record_or_teacher.teacher, record_or_teacher.step_condition,
                                              record_or_teacher.diffusers)
    else:
        teacher = record_or_teacher
    if teacher == DIFFUSERS:
        if step_condition:
            raise ValueError("SFD-v's step condition needs a bundled digits network; a diffusers UNet2DModel has "
                             "no step input (use method 'sfd')")
        from diffusers import UNet2DModel  # optional and heavy: only for students of a user's diffusers model

        net = UNet2DModel.from_config(dict(diffusers["unet"]))
        return net, from_diffusers(net, dict(diffusers["scheduler"]))
    if teacher not in trained.SPECS:
        raise ValueError(f"a student's teacher must be a bundled trained model ({', '.join(trained.SPECS)}) or "
                         f"'{DIFFUSERS}'; got {teacher!r}")
    config = trained.SPECS[teacher].config
    net = StepDigitsUNet(config) if step_condition else DigitsUNet(config)
    return net, trained.wrap(teacher, net)


class Student(Denoiser):
    """A distilled network in the denoiser contract, bound to one NFE of its record.

    ``sampling`` holds the keywords of ``fewstep.sample`` that run it as it was trained: Euler (= DDIM) on its
    grid, with the analytic first step when the record says so. A step-conditioned student passes
    ``steps = nfe`` to its network on every call.
    """

    def __init__(self, inner: Denoiser, net: nn.Module, record: StudentRecord, nfe: int | None = None):
        super().__init__(inner.process)
        nfe = record.nfe if nfe is None else nfe
        if nfe not in record.grids:
            raise ValueError(f"this {record.method} student samples at NFE {', '.join(map(str, record.grids))}; "
                             f"got {nfe!r}")
        self.inner, self.net, self.record, self.nfe = inner, net, record, nfe
        self.shape, self.prediction = inner.shape, inner.prediction
        self.name = f"{record.teacher}-{record.method}-nfe{nfe}"
        self.weights_sha256 = record.weights_sha256

    @property
    def sigmas(self) -> tuple[float, ...]:
        return self.record.grids[self.nfe]

    @property
    def sampling(self) -> dict[str, Any]:
        """``fewstep.sample(student, **student.sampling, seeds=...)`` samples as the student was trained."""
        solver, options = SOLVERS[self.record.solver]
        return {"solver": solver, "nfe": self.nfe, "schedule": "explicit", "solver_options": dict(options),
                "schedule_options": {"sigmas": list(self.sigmas)}, "afs": self.record.afs}

    def denoise(self, x, sigma, cond):
        if self.record.step_condition:
            cond = {**(cond or {}), "steps": self.nfe}
        d = self.inner.denoise(x, sigma, cond)
        if self.record.consistency is not None:
            return consistency_function(d, x, sigma, **self.record.consistency)
        return d

    def identity(self) -> dict[str, Any]:
        d = self.inner.identity()
        d.update(name=self.name, weights_sha256=self.weights_sha256, method=self.record.method, nfe=self.nfe,
                 teacher_sha256=self.record.teacher_sha256)
        return d


def save_student(path: str | Path, net: nn.Module, record: StudentRecord) -> Path:
    """Write ``net``'s weights (float32 safetensors) beside ``path`` and then the record, each through a temporary
    file and a rename; the record's ``weights`` and ``weights_sha256`` are filled in here. Returns the record's
    path."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"a student is saved as NAME.json (its weights go to NAME.safetensors); got {path}")
    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    blob = save_safetensors(state, metadata={"fewstep": json.dumps({"method": record.method,
                                                                    "teacher": record.teacher})})
    weights = path.with_suffix(".safetensors")
    record = StudentRecord(**{**asdict(record), "weights": weights.name,
                              "weights_sha256": hashlib.sha256(blob).hexdigest()})
    atomic_write_bytes(weights, blob)
    atomic_write_bytes(path, (record.to_json() + "\n").encode())
    return path


def read_record(path: str | Path) -> StudentRecord:
    """The record of the student at ``path`` (a ``.json`` file), checked field by field."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no student record at {path}")
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise ValueError(f"{path} is not a student record: it has {size:,} bytes (the limit is "
                         f"{MAX_RECORD_BYTES:,})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a student record: it is not UTF-8 text") from None
    return StudentRecord.from_json(text, where=str(path))


def check_teacher(record: StudentRecord, teacher: Denoiser, net: nn.Module | None = None) -> None:
    """Refuse a student made for another teacher (other weights)."""
    digest = teacher.weights_sha256 if net is None else teacher_digest(teacher, net)
    if digest != record.teacher_sha256:
        raise ValueError(f"this student was distilled from {record.teacher!r} with weights SHA-256 "
                         f"{record.teacher_sha256[:16]}..., not from this teacher "
                         f"({getattr(teacher, 'name', '?')!r}, {str(digest)[:16]}...)")


def load_student(path: str | Path, nfe: int | None = None, device: str | torch.device = "cpu") -> Student:
    """Load the student whose record is ``path``: float32, frozen, eval mode, bound to ``nfe`` (default: the
    record's).

    Raises:
        ValueError: the record is malformed, or a bundled teacher's weights are not the ones it was distilled from.
        ChecksumError: the weights file does not match the record's SHA-256.
    """
    path = Path(path)
    record = read_record(path)
    blob = read_verified_bytes(path.parent / record.weights, record.weights_sha256,
                               restore=f"re-run the distillation that wrote {path.name}")
    if record.teacher in trained.SPECS:
        bundled = trained.SHA256[trained.SPECS[record.teacher].file]
        if bundled != record.teacher_sha256:
            raise ValueError(f"{path.name} was distilled from other {record.teacher} weights (SHA-256 "
                             f"{record.teacher_sha256[:16]}...; the bundled ones are {bundled[:16]}...); "
                             "distill it again from this teacher")
    net, inner = build_network(record)
    try:
        net.load_state_dict({k: v.float() for k, v in load_safetensors(blob).items()}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights of {path.name} do not fit the {record.teacher} architecture: "
                         f"{str(exc).splitlines()[0]}") from None
    net.to(device).eval().requires_grad_(False)
    return Student(inner, net, record, nfe)


BUNDLED = Path(__file__).resolve().parent / "data" / "students"


def _register_bundled() -> None:
    """Each bundled student (``models/data/students/NAME.json``) loads by ``NAME`` too, e.g.
    ``load_model("digits-edm-sfd-nfe2")``; only the small records are read here, the weights when it loads."""
    for path in sorted(BUNDLED.glob("*.json")):
        info = json.loads(path.read_text())
        nfes = ", ".join(sorted(info["grids"], key=int))
        register_model(path.stem, "student",
                       f"{info['method']} student of {info['teacher']} (fewstep.distill); samples at NFE {nfes}, "
                       f"default {info['nfe']}",
                       lambda nfe=None, device="cpu", _path=path: load_student(_path, nfe=nfe, device=device))


_register_bundled()

__all__ += ["BUNDLED", "ChecksumError", "read_record"]
