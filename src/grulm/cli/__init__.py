"""The ``grulm`` command: one subcommand per module in this package.

Each subcommand module provides ``add_parser(subparsers)``, which registers its parser and sets
``func`` to a ``run(args) -> int``. Bad input (:class:`grulm.errors.GrulmError`) becomes one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from grulm import __version__
from grulm.errors import GrulmError

# Subcommand modules, in the order `grulm --help` lists them.
SUBCOMMANDS = ["train", "eval", "generate", "info", "bench"]


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GrulmError as error:
        print(f"grulm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grulm {args.command}: interrupted", file=sys.stderr)
        return 130

