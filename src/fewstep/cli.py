"""The ``fewstep`` command line: a thin shell over the library.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``; this file only wires them, so ``fewstep --help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fewstep._verify import ChecksumError

# subcommand name -> module that implements it (imported only when that subcommand runs,
# except for its tiny argument definitions).
SUBCOMMANDS: dict[str, str] = {
    "sample": "fewstep.commands.sample",
    "bench": "fewstep.commands.bench",
    "tune": "fewstep.commands.tune",
    "list": "fewstep.commands.listing",
    "generate": "fewstep.commands.generate",
    "bench-lm": "fewstep.commands.bench_lm",
}


def build_parser() -> argparse.ArgumentParser:
    from fewstep._version import __version__

    parser = argparse.ArgumentParser(
        prog="fewstep",
        description="Sample generative models with as few model evaluations as possible.",
    )
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except (ValueError, ChecksumError) as exc:  # bad input or a damaged bundled file: one clear line, no traceback
        print(f"fewstep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
