"""Recipes: a tuned sampler saved as versioned JSON and reused.

A recipe ties a sigma grid, a solver with its (fitted) options, and the method that made it to
one model (a hash of its identity) and one NFE budget. ``fewstep.sample(model, recipe=...)`` and
``fewstep sample --recipe`` use it; a recipe made for another model or NFE is refused unless
forced, and then used with a warning.
"""

from __future__ import annotations

import errno
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fewstep.cache import atomic_write_bytes, is_blob_ref
from fewstep.diffusion.denoiser import model_hash
from fewstep.diffusion.solvers import get_solver
from fewstep.limits import MAX_JSON_DEPTH, MAX_NFE, MAX_RECIPE_BYTES, check_count

RECIPE_VERSION = 1
METHODS = ("ays", "gits", "dc", "s3", "iia", "ems", "ld3", "manual")


@dataclass(frozen=True)
class Recipe:
    """A tuned sampler. ``sigmas`` has ``n_steps + 1`` entries; ``solver_options`` holds the fitted
    coefficients; ``quality`` the metrics measured when it was made (with what they compare to)."""

    model: str
    model_hash: str
    solver: str
    nfe: int
    sigmas: tuple[float, ...]
    method: str
    solver_options: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    version: int = RECIPE_VERSION

    def __post_init__(self):
        _check_schema(self)
        if self.version != RECIPE_VERSION:
            raise ValueError(f"recipe version {self.version} is not supported; this fewstep reads version "
                             f"{RECIPE_VERSION}")
        if self.method not in METHODS:
            raise ValueError(f"unknown recipe method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_count("recipe nfe", self.nfe, 1, MAX_NFE)
        s = [float(v) for v in self.sigmas]
        if len(s) < 2 or any(math.isnan(v) for v in s) or any(b >= a for a, b in zip(s, s[1:])) or s[-1] < 0:
            raise ValueError(f"recipe sigmas must be a strictly decreasing list ending at >= 0; got {s}")
        object.__setattr__(self, "sigmas", tuple(s))

        get_solver(self.solver)

    def to_json(self) -> str:
        d = asdict(self)
        d["sigmas"] = [v if math.isfinite(v) else "inf" for v in self.sigmas]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        if len(text) > MAX_RECIPE_BYTES:
            raise ValueError(f"a recipe is at most {MAX_RECIPE_BYTES:,} bytes; this one has {len(text):,}")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a recipe must be JSON: {exc}") from None
        except RecursionError:
            raise ValueError(f"the recipe's JSON is nested too deeply (the limit is {MAX_JSON_DEPTH})") from None
        _check_depth(d)
        if not isinstance(d, dict):
            raise ValueError("a recipe must be a JSON object")
        known = set(cls.__dataclass_fields__)
        missing = {"model", "model_hash", "solver", "nfe", "sigmas", "method"} - set(d)
        if missing:
            raise ValueError(f"the recipe lacks the field(s) {sorted(missing)}")
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        if isinstance(d["sigmas"], list):
            d["sigmas"] = [math.inf if v == "inf" else v for v in d["sigmas"]]
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        """Write the recipe to ``path`` through a temporary file in the same folder and a rename, so an interrupted
        save leaves the old file (or none), never a partial one."""
        path = Path(path)
        try:
            return atomic_write_bytes(path, (self.to_json() + "\n").encode())
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise ValueError(f"cannot save the recipe to {_shown(path)}: {_too_long(path)}") from None

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        try:
            if not p.is_file():
                raise ValueError(f"no recipe file at {_shown(p)}")
            size = p.stat().st_size
            if size > MAX_RECIPE_BYTES:
                raise ValueError(f"{_shown(p)} is not a recipe: it has {size:,} bytes (the limit is "
                                 f"{MAX_RECIPE_BYTES:,})")
            text = p.read_text()
        except UnicodeDecodeError as exc:
            raise ValueError(f"cannot read the recipe {_shown(p)}: it is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:  # a path the system refuses to look at: too long, a loop of links, no permission
            why = _too_long(p) if exc.errno == errno.ENAMETOOLONG else exc.strerror or exc
            raise ValueError(f"cannot read the recipe {_shown(p)}: {why}") from None
        return cls.from_json(text)

    @property
    def n_steps(self) -> int:
        return len(self.sigmas) - 1

    def check(self, model, nfe: int | None = None, force: bool = False) -> None:
        """Refuse a recipe made for another model or NFE (or warn, with ``force``)."""
        problems = []
        if self.model_hash != model_hash(model):
            problems.append(f"it was made for model {self.model!r} (hash {self.model_hash}), not this one "
                            f"({getattr(model, 'name', '?')!r}, hash {model_hash(model)})")
        if nfe is not None and nfe != self.nfe:
            problems.append(f"it was made for NFE {self.nfe}, not {nfe}")
        if problems:
            msg = "recipe mismatch: " + "; ".join(problems)
            if not force:
                raise ValueError(msg + " (pass force=True to use it anyway)")
            warnings.warn(msg, stacklevel=3)


_TYPES = {"model": str, "model_hash": str, "solver": str, "method": str, "solver_options": dict, "quality": dict,
          "info": dict, "version": int}


def _check_schema(recipe: Recipe) -> None:
    """Every field of the right type (a recipe file is user input), before any value is used."""
    for name, kind in _TYPES.items():
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"recipe field {name!r} must be a {'JSON object' if kind is dict else kind.__name__}; "
                             f"got {type(value).__name__} {_short(value)}")
    sigmas = recipe.sigmas
    if not isinstance(sigmas, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                    for v in sigmas):
        raise ValueError(f"recipe sigmas must be a list of numbers (or \"inf\"); got {_short(sigmas)}")
    for name in ("solver_options", "quality", "info"):
        bad = [k for k in getattr(recipe, name) if not isinstance(k, str)]
        if bad:
            raise ValueError(f"recipe {name} keys must be strings; got {bad[:3]}")
    if isinstance(recipe.solver_options.get("ems"), str) and not is_blob_ref(recipe.solver_options["ems"]):
        raise ValueError("a recipe embeds its EMS statistics (a JSON object with lambda, l, s, b); it may not name a "
                         "file, since loading a recipe must not open files it names. Rebuild it with "
                         "`fewstep tune --method ems` (which stores them inline or as a cache reference sha256:<hex>)")


def _check_depth(value, limit: int = MAX_JSON_DEPTH) -> None:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"the recipe's JSON is nested too deeply (the limit is {limit})")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_recipe(recipe: Recipe | str | Path | dict) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_json(json.dumps(recipe))
    return Recipe.load(recipe)


def _shown(path: Path) -> str:
    """A path for a one-line message: at most 80 characters."""
    text = str(path)
    return text if len(text) <= 80 else text[:60] + "..." + text[-17:]


def _too_long(path: Path) -> str:
    """What is wrong with a path the system calls too long, and what it allows."""
    folder = path.parent
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        limit = int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        limit = 255
    longest = max(path.parts, key=lambda part: len(os.fsencode(part)))
    size = len(os.fsencode(longest))
    if size > limit:
        return f"the name {longest[:24]}... has {size} bytes; this file system allows {limit} per name"
    return f"the path is too long for this system ({len(os.fsencode(str(path)))} bytes)"
