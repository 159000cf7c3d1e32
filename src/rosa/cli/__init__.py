"""The ``rosa`` command line: one module per command, each adding its parser and its ``run``.

Errors raised on purpose (bad config, missing data, foreign adapter, ...) print one message that
names the problem and the fix, and exit with status 2; nothing is written before inputs are checked.

Ctrl-C exits with status 130 and one line saying what was kept and the command that continues. A
command module says what it keeps with ``interrupted(args, phase) -> str``, the rest of the line after
"interrupted" ("while ...", "; kept ..."); ``phase`` names the marked phase the interrupt cut (see
``rosa.interrupt``). Without one, the line says to rerun the command.
"""

from __future__ import annotations

import argparse
import sys
import warnings

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

    _silence_warnings_about_other_libraries()
    try:
        return COMMANDS[args.command].run(args)
    except (RoSAError, OSError, ValueError) as err:
        print(f"rosa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        _close_progress_bars()
        hint = interrupted(args, interrupt)
        print(f"rosa {args.command}: interrupted{'' if hint.startswith(';') else ' '}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _silence_warnings_about_other_libraries() -> None:
    """Two warnings every run printed that neither rosa nor its user can act on: peft reads transformers'
    deprecated ``is_gradient_checkpointing``, and peft cannot find a ``config.json`` beside a GGUF base
    when it checks, on every save, whether the vocabulary was resized (neither RoSA nor LoRA resizes it)."""
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Could not find a config file in .*\.gguf - will assume", category=UserWarning)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def interrupted(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """What the interrupted command kept and how to continue, from its own ``interrupted`` hint."""
    from rosa.interrupt import LOADING_MODEL, interrupted_phase

    phase = interrupted_phase(interrupt)
    hint = getattr(COMMANDS[args.command], "interrupted", None)
    try:
        if hint is not None:
            return hint(args, phase)
    except (Exception, KeyboardInterrupt):  # a hint must never turn the exit into a traceback
        pass
    if phase == LOADING_MODEL:
        return "while loading the model; nothing was written. Rerun the same command."
    return "before it finished. Rerun the same command."


def _close_progress_bars() -> None:
    """Finish the progress bars the interrupt left open (the Trainer's, the evaluation's): the line
    then starts on a line of its own, and no bar is redrawn after it when the interpreter exits."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:
            pass
