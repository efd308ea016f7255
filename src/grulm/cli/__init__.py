"""The ``grulm`` command: one subcommand per module in this package.

Each subcommand module provides ``add_parser(subparsers)``, which registers its parser and sets
``func`` to a ``run(args) -> int``. Bad input (:class:`grulm.errors.GrulmError`) becomes one
line on stderr and exit status 2, never a traceback. Ctrl-C at any moment, even while PyTorch
is still being imported, becomes the line ``grulm: interrupted`` (``grulm <command>:
interrupted`` once the command is known) and exit status 130: this module imports nothing
heavy, and :func:`main` imports the subcommands (and PyTorch) inside its handling, holding an
interrupt until the imports are through (:func:`interrupts_held`). A warning, from grulm or a
library, becomes one line ``grulm <command>: warning: …`` (:func:`warnings_as_lines`).

Under ``torchrun`` rank 0 speaks for the run: the other ranks show no warnings, and an error
that every rank raised alike (marked ``quiet`` on those ranks) is printed by rank 0 alone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from grulm import __version__
from grulm.errors import GrulmError

# Subcommand modules, in the order `grulm --help` lists them.
SUBCOMMANDS = ["train", "eval", "generate", "info", "inspect", "bench", "compare"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grulm",
        description="Prepare text, train, evaluate, inspect and sample GRU language models "
        "(the GRU of d2l §9.1, with fast fused backends).",
    )
    parser.add_argument("--version", action="version", version=f"grulm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"grulm.cli.{name}").add_parser(subparsers)
    return parser


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) inside the block and raise it as ``KeyboardInterrupt`` after.

    An interrupt in the middle of an import can leave a C extension half initialised, and
    libraries catch it there: NumPy, cut short inside PyTorch's import, then fails with
    ``ImportError: cannot load module more than once per process`` instead. So while the
    subcommands import, a Ctrl-C is only recorded; the import (1–2 s) finishes first. Only the
    main thread can set signal handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """Show each warning raised inside at once, as one ``<prog>: warning: …`` line on stderr
    (Python's default adds the file, line number and source line of the call)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    prog = "grulm"
    try:
        with interrupts_held():
            parser = build_parser()
        args = parser.parse_args(argv)
        prog = f"grulm {args.command}"
        with warnings_as_lines(prog):
            if os.environ.get("RANK", "0") != "0":
                warnings.simplefilter("ignore")  # rank 0 shows them
            return args.func(args)
    except GrulmError as error:
        if not error.quiet:
            print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

