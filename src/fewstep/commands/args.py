"""Argument parsing shared by the subcommands: name lists, integer lists, output paths (seed ranges:
``fewstep.seeds.parse_seeds``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fewstep.seeds import parse_seeds  # noqa: F401  (the subcommands read seeds through here)


def parse_names(text: str, valid: Iterable[str], what: str) -> list[str]:
    """A comma-separated list of names, each checked against ``valid``."""
    valid = list(valid)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no {what} given; choose from {', '.join(valid)}")
    for n in names:
        if n not in valid:
            kind = what[:-1] if what.endswith("s") else what
            raise ValueError(f"unknown {kind} {n!r}; choose from {', '.join(valid)}")
    return names


def parse_ints(text: str, what: str, minimum: int = 1) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad {what} {text!r}: give comma-separated integers like 3,4,5") from None
    if not vals or any(v < minimum for v in vals):
        raise ValueError(f"{what} must be integers >= {minimum}; got {text!r}")
    return vals


def claim_outputs(paths: Iterable[Path], force: bool) -> None:
    """Refuse to overwrite existing files unless ``force``; create parent folders."""
    paths = list(paths)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ValueError(f"refusing to overwrite {', '.join(existing)}; pass --force or choose another --out")
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
