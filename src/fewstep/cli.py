"""The ``fewstep`` command line: a thin shell over the library.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``; this file only wires them, so ``fewstep --help`` imports nothing heavy.

Exit codes: 0 done; 2 bad input (one line on stderr: the option, what was given and what is allowed);
1 a failure while working, such as a full disk, no memory or a model that returned NaN (one line);
130 interrupted by Ctrl-C and 143 by SIGTERM (one line, no partial output file left).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

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
    "mcmc": "fewstep.commands.mcmc",
    "distill": "fewstep.commands.distill",
}


class UsageError(ValueError):
    """A command line that argparse refuses; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line (``UsageError``) rather than usage text and an exit."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds (and cleans up) like Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    from fewstep._version import __version__

    parser = Parser(prog="fewstep", description="Sample generative models with as few model evaluations as possible.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not an error
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc} (see {exc.prog} --help)", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[args.command])
    prog = f"fewstep {args.command}"
    try:
        with _one_line_warnings(prog), _sigterm_raises():
            return int(module.run(args) or 0)
    except (ValueError, ChecksumError) as exc:  # bad input or a damaged bundled file: one clear line, no traceback
        _close_progress_bars()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        print(f"{prog}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except (OSError, MemoryError, ArithmeticError) as exc:  # a full disk, no memory, NaN from the model: one line
        _close_progress_bars()
        print(f"{prog}: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """Warnings as one line each, ``fewstep CMD: warning: ...``, instead of a file, line and source."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"{prog}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread while the command runs (then the old handler is back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _close_progress_bars() -> None:
    """Close the bars an error or an interrupt left open, so that its message starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


if __name__ == "__main__":
    raise SystemExit(main())
