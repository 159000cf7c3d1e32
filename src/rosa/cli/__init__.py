"""The ``rosa`` command line: one module per command, each adding its parser and its ``run``.

Errors raised on purpose (bad config, missing data, foreign adapter, ...) print one message that
names the problem and the fix, and exit with status 2; nothing is written before inputs are checked.
"""

from __future__ import annotations

import argparse
import sys

from rosa.cli import analyze, compare, data, evaluate, info, sweep, train
from rosa.version import __version__

COMMANDS = {
    "train": train,
    "eval": evaluate,
    "compare": compare,
    "sweep": sweep,
    "analyze": analyze,
    "data": data,
    "info": info,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosa", description="RoSA: RoPE-aware Selective Adaptation.")
    parser.add_argument("--version", action="version", version=f"rosa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(commands, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from rosa.errors import RoSAError

    try:
        return COMMANDS[args.command].run(args)
    except (RoSAError, OSError, ValueError) as err:
        print(f"rosa {args.command}: error: {err}", file=sys.stderr)
        return 2
