"""``rosa compare``: placeholder being written this session."""

from __future__ import annotations

import argparse


def add_parser(commands, name: str) -> None:
    commands.add_parser(name, help="(in progress)")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
