"""Argument parsing shared by the subcommands: the command line's own limits, typed options, name and integer lists,
and file paths (seed ranges: ``fewstep.seeds.parse_seeds``; the library's limits: ``fewstep.limits``).

Nothing here imports torch, so a malformed command line is refused before any heavy import.
"""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Iterable
from pathlib import Path

from fewstep.limits import MAX_NFE, MAX_SEEDS  # noqa: F401  (the subcommands read the library's limits through here)
from fewstep.seeds import parse_seeds  # noqa: F401  (the subcommands read seeds through here)

# Limits of the command line alone (the library's are in fewstep.limits); each option's help names its limit.
MAX_BATCH = 65_536  # samples evaluated together (sample and bench --batch)
MAX_GRID = 1024  # samples drawn in the PNG grid of `fewstep sample` (the .npz holds every sample)
MAX_SAMPLES = 256  # generate --samples
MAX_NEW_TOKENS = 2048  # generate and bench-lm --max-new-tokens
MAX_PROMPT_TOKENS = 2048  # generate --prompt, counted in tokens
MAX_GAMMA = 64  # draft tokens per verification round (generate and bench-lm --gamma)
MAX_DRAFTS = 16  # generate --num-drafts
MAX_THREADS = 256  # bench-lm --threads (torch crashes on absurd thread counts)
MAX_REPEATS = 100  # bench-lm --repeats
MAX_SEED = 2**63 - 1  # generate --seed, counting the seeds of all samples
MAX_CFG = 1000.0  # sample --cfg


class HelpFormatter(argparse.HelpFormatter):
    """Plain help: each option's text once, with its default appended when the text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default is not None and default is not False
                and default is not argparse.SUPPRESS and default != []):
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def subcommand(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser with the shared help layout."""
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                          formatter_class=HelpFormatter)


def int_in(low: int, high: int):
    """An argparse ``type``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low:,}..{high:,}; got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float):
    """An argparse ``type``: a finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number in {low:g}..{high:g}; got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def name(text: str) -> str:
    """An argparse ``type``: a non-empty name (an empty one must not silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


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
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeat in {text!r}")
    return names


def parse_ints(text: str, what: str, minimum: int = 1, maximum: int = MAX_NFE) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad {what} {text!r}: give comma-separated integers like 3,4,5") from None
    if not vals or any(not minimum <= v <= maximum for v in vals):
        raise ValueError(f"{what} must be integers in {minimum}..{maximum:,}; got {text!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{what} repeat in {text!r}")
    return vals


def output_path(text: str, flag: str) -> Path:
    """The path of an output file as given on the command line (a trailing ``/`` names a folder: refused)."""
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise ValueError(f"{flag} {text!r} names a folder; give a file name")
    return Path(text)


def input_file(text: str, flag: str) -> Path:
    """An existing regular file to read."""
    path = Path(text)
    try:
        if not path.is_file():
            what = ("is a folder, not a file" if path.is_dir() else "is not a regular file" if os.path.lexists(path)
                    else "does not exist")
            raise ValueError(f"{flag}: {text!r} {what}")
    except OSError as exc:
        raise ValueError(f"{flag} {text!r}: {exc.strerror or exc}") from None
    return path

